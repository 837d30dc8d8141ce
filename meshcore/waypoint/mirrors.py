"""Copies of requests for the mirrors a route names (Gateway API RequestMirror, Istio's
mirror/mirrors): fire and forget, the answer read and dropped, never delaying or
changing the response the client gets.

As Envoy shadows a request: the Host / :authority gets `-shadow` appended to its host
part, to an endpoint of the mirror service over HBONE with the waypoint's identity.
Copies start as the request goes upstream. A body is streamed to them as it streams to
the primary, whatever its size (Envoy's streaming shadow): each chunk the primary
takes is also queued for each copy (MirrorBody), which sends it at its own pace. The
primary never waits for a copy: a copy that falls more than MIRROR_BUFFER_LIMIT bytes
behind is abandoned (its stream reset, its connection closed), counted in
`Mirrors.abandoned` and in `meshcore_waypoint_mirror_abandoned_total` (by mirror service
and reason), and logged; so is every copy of a body that did not end whole.
A copy goes in HTTP/1.1, or HTTP/2 where the mirror's port declares it. Each copy is
bounded by MIRROR_TIMEOUT and owned here (drain() ends what is left); a copy of a
request whose client left before its answer is cancelled with it.
"""
from __future__ import annotations

import asyncio
import collections
import logging

from prometheus_client import Counter

from meshcore.aio.request import send_request
from meshcore.errors import HttpError, MeshcoreError
from meshcore.node.routing import HBONE
from meshcore.waypoint.headers import h2_fields
from meshcore.waypoint.tunnels import upstream_http
from meshcore.waypoint.upstreams import Http1Upstreams, Http2Upstreams

log = logging.getLogger("meshcore.waypoint")

MIRROR_TIMEOUT = 10.0            # seconds a copy may take, answer included
MAX_MIRRORS_IN_FLIGHT = 1024     # copies under way at once; more are dropped
MIRROR_BUFFER_LIMIT = 1 << 20    # bytes a copy may lag behind its primary (Envoy's default buffer limit)
MIRROR_BUFFER_TOTAL = 64 << 20   # bytes every copy together may hold, so that many lagging ones stay bounded


class _CopyAbandoned(Exception):
    """The body of a copy will not come whole."""


class _CopyBody:
    """One copy's share of a streamed body: the chunks it has yet to send, at most
    `limit` bytes of them."""
    __slots__ = ("source", "chunks", "size", "ended", "failed", "waiter", "task", "target", "service")

    def __init__(self, source: "MirrorBody"):
        self.source = source
        self.chunks: collections.deque = collections.deque()
        self.size = 0
        self.ended = self.failed = False
        self.waiter: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.target = ""
        self.service = ""                     # the mirror service's hostname, what its metric names

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def put(self, chunk: bytes) -> bool:
        """False when the copy fell too far behind (and is abandoned)."""
        if self.failed:
            return False
        mirrors = self.source.mirrors
        if self.size + len(chunk) > self.source.limit:
            self.abandon(f"it fell more than {self.source.limit} bytes behind its primary", "behind")
            return False
        if mirrors.buffered + len(chunk) > MIRROR_BUFFER_TOTAL:
            self.abandon(f"the copies under way hold {mirrors.buffered} bytes already", "buffers_full")
            return False
        self.chunks.append(chunk)
        self.size += len(chunk)
        mirrors.buffered += len(chunk)
        self._wake()
        return True

    def end(self) -> None:
        self.ended = True
        self._wake()

    def close(self) -> None:
        """Its copy ended, however: what it still held is let go, and it takes no more."""
        self.task = None
        self.failed = True
        self.chunks.clear()
        self.source.mirrors.buffered -= self.size
        self.size = 0

    def abandon(self, why: str, reason: str) -> None:
        if self.failed:
            return
        self.failed = True
        self.chunks.clear()
        self.source.mirrors.buffered -= self.size
        self.size = 0
        self._wake()
        if self.task is not None and not self.task.done():
            self.task.cancel()                # resets its stream, closes its connection
            self.source.mirrors.count_abandoned(self.service, reason)
            log.info("mirror copy to %s abandoned: %s", self.target, why)

    async def __aiter__(self):
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.size -= len(chunk)
                self.source.mirrors.buffered -= len(chunk)
                yield chunk
            elif self.failed:
                raise _CopyAbandoned("the body was not streamed whole")
            elif self.ended:
                return
            else:
                self.waiter = asyncio.get_running_loop().create_future()
                try:
                    await self.waiter
                finally:
                    self.waiter = None


class MirrorBody:
    """A request's body as it streams to the primary, passed on to the request's copies
    without ever making the primary wait: feed() each chunk (or wrap the body in
    feeding()), finish() at its end; request_ended() abandons the copies of a body that
    never ended whole."""
    __slots__ = ("mirrors", "limit", "copies", "finished", "trailers")

    def __init__(self, mirrors: "Mirrors", limit: int = MIRROR_BUFFER_LIMIT):
        self.mirrors, self.limit = mirrors, limit
        self.copies: list[_CopyBody] = []
        self.finished = False
        self.trailers: list[tuple[str, str]] = []

    def copy(self) -> _CopyBody:
        body = _CopyBody(self)
        self.copies.append(body)
        return body

    def feed(self, chunk) -> None:
        if not chunk or not self.copies:
            return
        if isinstance(chunk, memoryview):
            chunk = bytes(chunk)              # a view would pin the connection's whole read buffer
        self.copies = [c for c in self.copies if c.put(chunk)]

    def finish(self, trailers=None) -> None:
        self.finished = True
        self.trailers = list(trailers or ())
        for c in self.copies:
            c.end()

    def request_ended(self) -> None:
        if not self.finished:
            for c in self.copies:
                c.abandon("its request's body did not end whole", "request_incomplete")
            self.copies = []

    async def feeding(self, body, trailers=None):
        """`body` (an async iterator), each chunk fed on its way; its end finishes this
        with the `trailers()` then known."""
        async for chunk in body:
            self.feed(chunk)
            yield chunk
        self.finish(trailers() if trailers is not None else None)


def shadow_authority(authority: str) -> str:
    """Envoy's shadow host: `-shadow` after the host, before any port."""
    if authority.startswith("["):
        end = authority.find("]")
        return f"{authority[:end + 1]}-shadow{authority[end + 1:]}" if end >= 0 else f"{authority}-shadow"
    host, sep, port = authority.rpartition(":")
    return f"{host}-shadow:{port}" if sep and port.isdigit() else f"{authority}-shadow"


class Mirrors:
    def __init__(self, tunnels, http1: Http1Upstreams, http2: Http2Upstreams, registry=None):
        self.tunnels, self.http1, self.http2 = tunnels, http1, http2
        self.tasks: set[asyncio.Task] = set()
        self.dropped = 0                 # copies not started (no address, too many under way)
        self.abandoned = 0               # copies given up because their body could not follow
        self.buffered = 0                # bytes of bodies queued for copies, all together
        # a copy given up is otherwise silent to the client and its backend: the metric is
        # how an operator sees a mirror too slow for the bodies it is sent
        self.abandoned_metric = None if registry is None else Counter(
            "meshcore_waypoint_mirror_abandoned", "Mirror copies abandoned before their body was sent whole",
            ("destination_service", "reason"), registry=registry)

    def count_abandoned(self, service: str, reason: str) -> None:
        self.abandoned += 1
        if self.abandoned_metric is not None:
            self.abandoned_metric.labels(service, reason).inc()

    def send(self, state, me, targets, method: str, target: str, authority: str,
             headers: list[tuple[str, str]], body: "bytes | MirrorBody | None" = None) -> list[asyncio.Task]:
        """Start a copy of a request to each (service key, port) target, with its
        `body`: whole bytes, or a MirrorBody the caller feeds as the body streams; the
        tasks, for the caller to cancel if its client leaves."""
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
            copy_body = body.copy() if isinstance(body, MirrorBody) else body
            task = asyncio.get_running_loop().create_task(
                self._copy(chosen, me, http2, method, target, shadow_authority(authority), headers, copy_body))
            if isinstance(copy_body, _CopyBody):
                copy_body.task, copy_body.target, copy_body.service = task, chosen.target, service.hostname
                task.add_done_callback(lambda _, b=copy_body: b.close())
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
        except (TimeoutError, OSError, MeshcoreError, HttpError, asyncio.IncompleteReadError,
                _CopyAbandoned) as exc:
            log.debug("mirror to %s failed: %s: %s", chosen.target, type(exc).__name__, exc)

    async def _copy_http1(self, chosen, me, method, target, authority, headers, body) -> None:
        client, _ = await self.http1.take(chosen, me)
        fields = [("host", authority)] + [(n, v) for n, v in headers if n != "host"]
        trailers = (lambda: body.source.trailers) if isinstance(body, _CopyBody) else None
        try:
            response = await client.request(method, target, fields, body, trailers=trailers)
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
            if isinstance(body, _CopyBody):
                async for chunk in body:
                    await up.write(chunk)
                await up.end(h2_fields(body.source.trailers) or None)
            elif body is not None:
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
