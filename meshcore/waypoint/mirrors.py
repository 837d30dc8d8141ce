"""Copies of requests for the mirrors a route names (Gateway API RequestMirror, Istio's
mirror/mirrors): fire and forget, the answer read and dropped, never delaying or
changing the response the client gets.

As Envoy shadows a request: the Host / :authority gets `-shadow` appended to its host
part, to an endpoint of the mirror service over HBONE with the waypoint's identity.
A request without a body is copied as it goes upstream; one with a body once it was
read whole within the bound kept for retries (64 KiB), after its answer's head came:
a larger body is not copied. A copy goes in HTTP/1.1, or HTTP/2 where the mirror's port
declares it. Each
copy is bounded by MIRROR_TIMEOUT and owned here (drain() ends what is left); a copy
of a request whose client left before its answer is cancelled with it.
"""
from __future__ import annotations

import asyncio
import logging

from meshcore.aio.request import send_request
from meshcore.errors import HttpError, MeshcoreError
from meshcore.node.routing import HBONE
from meshcore.waypoint.headers import h2_fields
from meshcore.waypoint.tunnels import upstream_http
from meshcore.waypoint.upstreams import Http1Upstreams, Http2Upstreams

log = logging.getLogger("meshcore.waypoint")

MIRROR_TIMEOUT = 10.0            # seconds a copy may take, answer included
MAX_MIRRORS_IN_FLIGHT = 1024     # copies under way at once; more are dropped


def shadow_authority(authority: str) -> str:
    """Envoy's shadow host: `-shadow` after the host, before any port."""
    if authority.startswith("["):
        end = authority.find("]")
        return f"{authority[:end + 1]}-shadow{authority[end + 1:]}" if end >= 0 else f"{authority}-shadow"
    host, sep, port = authority.rpartition(":")
    return f"{host}-shadow:{port}" if sep and port.isdigit() else f"{authority}-shadow"


class Mirrors:
    def __init__(self, tunnels, http1: Http1Upstreams, http2: Http2Upstreams):
        self.tunnels, self.http1, self.http2 = tunnels, http1, http2
        self.tasks: set[asyncio.Task] = set()
        self.dropped = 0

    def send(self, state, me, targets, method: str, target: str, authority: str,
             headers: list[tuple[str, str]], body: bytes | None = None) -> list[asyncio.Task]:
        """Start a copy of a request (with its whole `body`, if it has one) to each
        (service key, port) target; the tasks, for the caller to cancel if its client
        leaves."""
        started = []
        for service_key, port in targets:
            service = state.by_service_key.get(service_key)
            vip = next((ip for network, ip in service.vips if network == me.network), None) if service else None
            if vip is None or len(self.tasks) >= MAX_MIRRORS_IN_FLIGHT:
                self.dropped += 1
                continue
            chosen = self.tunnels.upstream(state, me, str(vip), port)
            if chosen.kind is not HBONE:
                self.dropped += 1
                continue
            http2 = upstream_http(service.app_protocol(port), "1.1") == "2"
            task = asyncio.get_running_loop().create_task(
                self._copy(chosen, me, http2, method, target, shadow_authority(authority), headers, body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            started.append(task)
        return started

    async def _copy(self, chosen, me, http2: bool, method, target, authority, headers, body) -> None:
        try:
            async with asyncio.timeout(MIRROR_TIMEOUT):
                if http2:
                    await self._copy_http2(chosen, me, method, target, authority, headers, body)
                else:
                    await self._copy_http1(chosen, me, method, target, authority, headers, body)
        except (TimeoutError, OSError, MeshcoreError, HttpError, asyncio.IncompleteReadError) as exc:
            log.debug("mirror to %s failed: %s: %s", chosen.target, type(exc).__name__, exc)

    async def _copy_http1(self, chosen, me, method, target, authority, headers, body) -> None:
        client, _ = await self.http1.take(chosen, me)
        fields = [("host", authority)] + [(n, v) for n, v in headers if n != "host"]
        try:
            response = await client.request(method, target, fields, body)
            async for _ in response.body():
                pass
        except BaseException:
            self.http1.discard(client)
            raise
        self.http1.give_back(chosen, me, client)

    async def _copy_http2(self, chosen, me, method, target, authority, headers, body) -> None:
        connection = await self.http2.get(chosen, me)
        up = send_request(connection, method, target, authority=authority, scheme="http",
                          headers=h2_fields(headers), end_stream=body is None)
        try:
            if body is not None:
                if body:
                    await up.write(body)
                await up.end()
            await up.response()
            while await up.read():
                pass
        finally:
            up.close()

    async def drain(self, deadline: float) -> None:
        """Let copies under way finish until the deadline, then cancel the rest."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
