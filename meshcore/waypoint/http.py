"""HTTP/1.1 through the waypoint: each request of a tunnel, in order.

    request ─► the waypoint's policies (targetRefs: this Gateway, the service, the class)
            │    denied ─► 403 "RBAC: access denied" (gRPC: grpc-status 7), next request
            ─► an endpoint of the service (round robin, healthy), over HBONE with the
               waypoint's identity; one kept-alive upstream connection per endpoint
            ─► the response streamed back; a 101 turns both sides into a byte stream

Headers as a mesh proxy sets them: hop-by-hop ones removed, `x-request-id` added when
absent, W3C `traceparent` continued with a new span id (started when absent),
`x-forwarded-proto: http`. Bodies stream in both directions; nothing is buffered whole.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid

from meshcore.errors import HttpError, MeshcoreError
from meshcore.l7.http1 import Http1ClientConnection, Http1ServerConnection, strip_hop_by_hop
from meshcore.node.context import ProxyContext
from meshcore.node.routing import HBONE
from meshcore.policy.waypoint import denied_response, evaluate_request
from meshcore.waypoint.telemetry import RequestMetrics, RequestRecord
from meshcore.waypoint.tunnels import Tunnel, WaypointTunnels

log = logging.getLogger("meshcore.waypoint")

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
COPY_CHUNK = 1 << 16


def continued_traceparent(value: str | None) -> str:
    """The trace a request carries, continued with a new span id for this hop (W3C trace
    context); a new trace when it carries none or a malformed one."""
    m = _TRACEPARENT.match(value.strip().lower()) if value else None
    if m is None or m.group(1) == "ff" or set(m.group(2)) == {"0"}:
        return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00"
    return f"{m.group(1)}-{m.group(2)}-{os.urandom(8).hex()}-{m.group(4)}"


def forwarded_headers(headers: list[tuple[str, str]], *, upgrade: bool) -> tuple[list[tuple[str, str]], str]:
    """The request headers sent upstream, and its request id."""
    out = strip_hop_by_hop(headers, upgrade=upgrade)
    request_id = next((v for n, v in out if n == "x-request-id"), None)
    if request_id is None:
        request_id = str(uuid.uuid4())
        out.append(("x-request-id", request_id))
    trace = continued_traceparent(next((v for n, v in out if n == "traceparent"), None))
    out = [(n, v) for n, v in out if n not in ("traceparent", "x-forwarded-proto")]
    out += [("traceparent", trace), ("x-forwarded-proto", "http")]
    return out, request_id


def _has_body(headers: list[tuple[str, str]]) -> bool:
    return any(n in ("content-length", "transfer-encoding") for n, _ in headers)


class _Counted:
    """An async body iterator that counts what went through; `on_error` runs when the
    body fails (a request body cut short or malformed: the upstream request it feeds
    can never complete and is abandoned)."""
    __slots__ = ("body", "count", "on_error", "error")

    def __init__(self, body, on_error=None):
        self.body, self.count, self.on_error, self.error = body, 0, on_error, None

    async def __aiter__(self):
        try:
            async for chunk in self.body:
                self.count += len(chunk)
                yield chunk
        except (HttpError, OSError, MeshcoreError) as exc:
            self.error = exc
            if self.on_error is not None:
                self.on_error()
            raise


class Http1Handler:
    def __init__(self, ctx: ProxyContext, tunnels: WaypointTunnels, metrics: RequestMetrics,
                 waypoint: tuple[str, str]):
        self.ctx, self.tunnels, self.metrics = ctx, tunnels, metrics
        self.waypoint = waypoint                   # (namespace, name) of the Gateway

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tunnel: Tunnel) -> None:
        conn = Http1ServerConnection(reader, writer)
        upstreams: dict[tuple, Http1ClientConnection] = {}
        tunnel.record.finish()                     # the tunnel itself is not a metric; its requests are
        try:
            while True:
                try:
                    request = await conn.next_request()
                except HttpError as exc:           # answered with its status, connection closed
                    self._report(RequestRecord(tunnel.record).finish(exc.status, error=str(exc)))
                    return
                if request is None:
                    return
                if not await self._one(conn, request, tunnel, upstreams):
                    return
        except asyncio.CancelledError:
            for client in upstreams.values():
                client.close()                 # the tunnel was reset or the waypoint stops: at once
            raise
        finally:
            # the client left: end the kept-alive upstream tunnels as a client ends them
            await asyncio.gather(*(client.aclose() for client in upstreams.values()), return_exceptions=True)

    async def _one(self, conn: Http1ServerConnection, request, tunnel: Tunnel, upstreams: dict) -> bool:
        """One request; False when the connection cannot carry another."""
        ctx, req = self.ctx, tunnel.request
        record = RequestRecord(tunnel.record, method=request.method, path=request.target,
                               authority=request.host or req.authority)
        state = ctx.store.view
        service = tunnel.service
        policies = state.waypoint_policy_set(self.waypoint, (service.namespace, service.name) if service else None)
        decision = evaluate_request(policies, peer=req.peer_identity, source_ip=req.peer_address[0],
                                    destination_ip=req.host, port=req.port, method=request.method,
                                    path=request.target, host=request.host, headers=dict(request.headers))
        if not decision:
            denied = denied_response(request.headers)
            await conn.respond(denied.status, list(denied.headers), denied.body, close=self.tunnels.draining)
            record.grpc_status = next((v for n, v in denied.headers if n == "grpc-status"), "")
            self._report(record.finish(denied.status, flag="-", error=f"denied: {decision.reason}"))
            return not conn.closed
        me = tunnel.waypoint
        chosen = self.tunnels.upstream(state, me, req.host, req.port)
        if chosen.kind is not HBONE:
            await conn.respond(503, [("content-type", "text/plain")], b"no healthy upstream")
            self._report(record.finish(503, flag="UH", error=chosen.reason or "no endpoint"))
            return not conn.closed
        record.upstream, record.upstream_identity = chosen.workload, chosen.expected[0].uri
        upgrade = request.upgrade is not None
        headers, record.request_id = forwarded_headers(request.headers, upgrade=upgrade)
        key = (chosen.dial, chosen.authority, chosen.expected)
        client = upstreams.pop(key, None)
        if client is None or not client.reusable:
            if client is not None:
                client.close()
            try:
                up_reader, up_writer = await self.tunnels.open_upstream(chosen, me)
            except (OSError, MeshcoreError, asyncio.TimeoutError) as exc:
                await conn.respond(503, [("content-type", "text/plain")], b"upstream connect error")
                self._report(record.finish(503, flag="UF", error=f"{type(exc).__name__}: {exc}"))
                return not conn.closed
            client = Http1ClientConnection(up_reader, up_writer)
        body = _Counted(request.body(), on_error=client.close) if _has_body(request.headers) else None
        try:
            response = await client.request(request.method, request.target, headers, body)
        except (HttpError, OSError, MeshcoreError, asyncio.IncompleteReadError) as exc:
            client.close()
            if body is not None and body.error is not None:
                # the client's body failed: the codec answered it (400, 408) and closed
                failure = body.error
                self._report(record.finish(getattr(failure, "status", 0), flag="DC", error=str(failure)))
                return False
            if conn.closed:
                self._report(record.finish(0, flag="DC", error=str(exc)))
                return False
            await conn.respond(503, [("content-type", "text/plain")], b"upstream connect error or disconnect")
            self._report(record.finish(503, flag="UC", error=f"{type(exc).__name__}: {exc}"))
            return not conn.closed
        record.request_bytes = body.count if body is not None else 0
        if response.status == 101 and upgrade:
            await conn.respond(101, strip_hop_by_hop(response.headers, upgrade=True), b"")
            self._report(record.finish(101))
            await _splice(conn.take_over(), client.take_over())
            return False
        answer = _Counted(response.body())
        try:
            await conn.respond(response.status, strip_hop_by_hop(response.headers), answer,
                               trailers=lambda: response.trailers, reason=response.reason,
                               close=self.tunnels.draining)
        except (HttpError, OSError, MeshcoreError) as exc:
            client.close()
            record.response_bytes = answer.count
            self._report(record.finish(response.status, flag="UPE", error=f"{type(exc).__name__}: {exc}"))
            return False
        record.response_bytes = answer.count
        if body is not None:
            record.request_bytes = body.count
        self._report(record.finish(response.status))
        if client.reusable:
            upstreams[key] = client
        else:
            client.close()
        return not conn.closed

    def _report(self, record: RequestRecord) -> None:
        self.metrics.report(record)


async def _splice(down, up) -> None:
    """After a 101: bytes both ways until both sides end."""
    (d_reader, d_writer, d_ahead), (u_reader, u_writer, u_ahead) = down, up
    if u_ahead:
        d_writer.write(u_ahead)
    if d_ahead:
        u_writer.write(d_ahead)

    async def copy(reader, writer):
        try:
            while chunk := await reader.read(COPY_CHUNK):
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()
    await asyncio.gather(copy(d_reader, u_writer), copy(u_reader, d_writer))
    for w in (d_writer, u_writer):
        if not w.transport.is_closing():
            w.close()

