"""HTTP/2 through the waypoint: a client that opens its tunnel with the HTTP/2 preface
(prior knowledge, as h2c and gRPC clients speak inside the mesh) gets meshcore's own
HTTP/2 connection (meshcore.aio.connection over the compiled core) on the tunnel, and
each request is an exchange (meshcore.aio.request) answered as an HTTP/1.1 one is:

    request ─► the waypoint's policies (targetRefs: this Gateway, the service, the class)
            │    denied ─► 403 "RBAC: access denied" (gRPC: Trailers-Only grpc-status 7)
            ─► an endpoint of the service ─► a stream on the one HTTP/2 connection the
               waypoint keeps to that endpoint (an HBONE tunnel with its identity)
            ─► the response's headers, body and trailers streamed back

The backend speaks what its service port declares (appProtocol http: HTTP/1.1, on a
kept-alive connection of the waypoint's; http2, grpc: HTTP/2), else HTTP/2 like its
client. Headers as the HTTP/1.1 handler sets them (x-request-id,
traceparent continued, x-forwarded-proto); connection-specific ones never cross.

Flow control holds end to end: a chunk is taken from one side, which gives its window
back, only once the other side's window took the chunk before it, so a slow reader
stalls its sender instead of filling the waypoint. A reset on one side resets the
other.
"""
from __future__ import annotations

import asyncio
import logging

from meshcore.aio.connection import HboneConnection
from meshcore.aio.request import ClientExchange, ServerExchange, request_dispatcher, send_request
from meshcore.errors import ErrorCode, HttpError, MeshcoreError, StreamResetError
from meshcore.l7.http1 import strip_hop_by_hop
from meshcore.node.context import ProxyContext
from meshcore.policy.paths import request_path
from meshcore.policy.waypoint import denied_response, evaluate_request, is_grpc
from meshcore.state.model import Workload
from meshcore.traffic.decide import NO_EDITS, HeaderEdits, LocalReply, RequestView
from meshcore.traffic.grpc import http_to_grpc_status
from meshcore.waypoint.endpoints import EndpointPicker
from meshcore.waypoint.bodies import KeptBody, replay
from meshcore.waypoint.destination import (ATTEMPT_COUNT, IDEMPOTENT, Deadlines, Destination, InFlight,
                                           after_route, destination, failure_answer, failure_flag, retry_destination,
                                           with_flag, with_rate_headers)
from meshcore.waypoint.mirrors import MirrorBody, Mirrors
from meshcore.waypoint.ratelimits import Limited, RequestLimits
from meshcore.waypoint.headers import forwarded_headers, grpc_status, h2_fields, policy_headers, text_fields
from meshcore.waypoint.telemetry import RequestMetrics, RequestRecord
from meshcore.waypoint.tunnels import Tunnel, WaypointTunnels
from meshcore.waypoint.upstreams import Http1Upstreams, Http2Upstreams

log = logging.getLogger("meshcore.waypoint")

class _Outcome:
    """How one request went, for its record: set as it goes, reported once."""
    __slots__ = ("status", "flag", "error")

    def __init__(self):
        self.status, self.flag, self.error = 0, "-", ""


class Http2Handler:
    """Serves the HTTP/2 tunnels of a waypoint (WaypointTunnels(http2=...))."""

    # as the HTTP/1.1 handler's: Envoy's stream idle timeout
    RESPONSE_TIMEOUT = 300.0
    BODY_IDLE_TIMEOUT = 300.0

    def __init__(self, ctx: ProxyContext, tunnels: WaypointTunnels, metrics: RequestMetrics,
                 waypoint: tuple[str, str], *, http2_upstreams: Http2Upstreams | None = None,
                 http1_upstreams: Http1Upstreams | None = None, endpoints: EndpointPicker | None = None,
                 rate_limits: RequestLimits | None = None, mirrors: Mirrors | None = None):
        self.ctx, self.tunnels, self.metrics = ctx, tunnels, metrics
        self.waypoint = waypoint                   # (namespace, name) of the Gateway
        self.endpoints = endpoints or EndpointPicker()
        self.rate_limits = rate_limits
        self.mirrors = mirrors
        self.upstreams = http2_upstreams or Http2Upstreams(tunnels)
        # backends declared to speak HTTP/1.1 (appProtocol http) are reached on these
        self.http1_upstreams = http1_upstreams or Http1Upstreams(
            tunnels, response_timeout=self.RESPONSE_TIMEOUT, body_timeout=self.BODY_IDLE_TIMEOUT)
        self.downstream: set[HboneConnection] = set()

    async def __call__(self, transport, received: bytes, tunnel: Tunnel) -> None:
        conn = HboneConnection(client=False, on_request=request_dispatcher(
            lambda ex: self._one(ex, tunnel), tunnels=lambda c, event: self._refuse_connect(c, event, tunnel)))
        transport.set_protocol(conn)
        conn.connection_made(transport)
        tunnel.record.finish()                     # the tunnel itself is not a metric; its requests are
        self.downstream.add(conn)
        try:
            conn.data_received(received)
            transport.resume_reading()             # the sniffing reader may have paused it
            await conn.closed
        finally:
            self.downstream.discard(conn)

    async def drain(self, deadline: float) -> None:
        """GOAWAY to every client (requests in flight finish), then to every backend."""
        await asyncio.gather(*(c.drain(deadline) for c in list(self.downstream)), return_exceptions=True)
        await asyncio.gather(self.upstreams.drain(deadline), self.http1_upstreams.drain(deadline))

    def _refuse_connect(self, connection, event, tunnel: Tunnel) -> None:
        """A CONNECT inside the tunnel: refused 403, as Envoy refuses a CONNECT it is not
        configured for, and reported as any answer of the waypoint's own."""
        connection.refuse_stream(event.stream_id, 403)
        record = RequestRecord(tunnel.record, method="CONNECT", authority=getattr(event, "authority", "") or "")
        self.metrics.report(record.finish(403, error="CONNECT is not proxied by the waypoint"))

    # -- one request -------------------------------------------------------------------
    async def _one(self, exchange: ServerExchange, tunnel: Tunnel) -> None:
        req = tunnel.request
        headers = text_fields(exchange.headers)
        authority = exchange.authority or req.authority
        record = RequestRecord(tunnel.record, method=exchange.method, path=exchange.path, authority=authority,
                               protocol="grpc" if is_grpc(headers) else "http")
        outcome = _Outcome()
        pending = InFlight()                       # its attempts and mirror copies
        lost = exchange.stream_error
        if lost is not None:
            # reset before the waypoint had it (malformed as the HTTP/2 core read it, or the
            # client's own reset): counted as any reset request is, nothing goes upstream
            if isinstance(lost, StreamResetError) and (lost.remote or lost.error_code != ErrorCode.CANCEL):
                _downstream_reset(lost, None, outcome)
            else:
                outcome.flag, outcome.error = "DC", f"the client left before its request was read: {lost}"
            self.metrics.report(record.finish(outcome.status, flag=outcome.flag, error=outcome.error))
            return
        try:
            await self._answer(exchange, tunnel, headers, authority, record, outcome, pending)
        except asyncio.CancelledError:
            # the client reset the stream (or left) before the answer
            if outcome.flag not in CLIENT_RESET:
                outcome.flag, outcome.error = "DC", outcome.error or "downstream reset before the response"
            raise
        except (MeshcoreError, ConnectionError) as exc:
            # an answer of the waypoint's own to a client that is gone
            if outcome.flag not in CLIENT_RESET:
                outcome.flag = "DC"
            outcome.error = f"{outcome.error}; the client left: {type(exc).__name__}: {exc}".lstrip("; ")
        finally:
            pending.end(client_left=outcome.flag == "DC" or outcome.flag in CLIENT_RESET)
            self.metrics.report(record.finish(outcome.status, flag=outcome.flag, error=outcome.error))

    async def _answer(self, exchange: ServerExchange, tunnel: Tunnel, headers, authority: str,
                      record: RequestRecord, outcome: _Outcome, pending: InFlight) -> None:
        state = self.ctx.store.view
        req, service, me = tunnel.request, tunnel.service, tunnel.waypoint
        try:
            path, query = request_path(exchange.path or "", method=exchange.method)
        except ValueError as exc:
            outcome.status, outcome.error = 400, f"request-target: {exc}"
            await _respond(exchange, 400, [("content-type", "text/plain")], b"bad request-target\n")
            return
        # the policy decides on the normalized path and that is the path the backend gets
        target = f"{path}?{query}" if query else path
        policies = state.waypoint_policy_set(self.waypoint, (service.namespace, service.name) if service else None)
        seen = policy_headers(headers)
        decision = evaluate_request(policies, peer=req.peer_identity, source_ip=req.peer_address[0],
                                    destination_ip=req.host, port=req.port, method=exchange.method,
                                    path=target, host=authority, headers=seen)
        if not decision:
            denied = denied_response(headers)
            record.grpc_status = grpc_status(denied.headers)
            outcome.error = f"denied: {decision.reason}"
            outcome.status = denied.status
            await _respond(exchange, denied.status, list(denied.headers), denied.body, trailers_only=denied.trailers_only)
            return
        grpc = record.protocol == "grpc"
        where = destination(self.tunnels, state, tunnel,
                            RequestView(exchange.method, path, query, authority, seen, grpc=grpc,
                                        scheme=exchange.scheme or "http"),
                            target, waypoint_namespace=self.waypoint[0], picker=self.endpoints)
        limit = await after_route(where, state, tunnel, record, pending, self.rate_limits, self.waypoint, grpc)
        if isinstance(limit, Limited):
            record.route, record.grpc_status = where.route, limit.grpc_status
            outcome.flag, outcome.error, outcome.status = limit.flag, limit.reason, limit.status
            await _respond(exchange, limit.status, where.response_headers.apply(list(limit.headers)), limit.body,
                           trailers_only=limit.trailers_only)
            return
        where = with_rate_headers(where, limit.response)
        if isinstance(where, LocalReply):
            record.route = where.route
            outcome.flag, outcome.error, outcome.status = where.flag, where.reason, where.status
            edits = where.response_headers
            if grpc and (where.grpc_status is not None or where.status >= 400):
                # a gRPC client reads its call's status, not the HTTP one: an injected
                # one, else Envoy's mapping of the HTTP status
                code = str(where.grpc_status if where.grpc_status is not None else http_to_grpc_status(where.status))
                record.grpc_status = code
                await _respond(exchange, 200, edits.apply([("content-type", "application/grpc"), ("grpc-status", code),
                                                           ("grpc-message", where.reason)]), b"", trailers_only=True)
            else:
                await _respond(exchange, where.status, edits.apply([*where.headers, *where.content_headers()]),
                               where.body)
            return
        target, authority, record.route = where.target, where.authority, where.route
        record.upstream, record.upstream_identity = where.chosen.workload, where.chosen.expected[0].uri
        forwarded, record.request_id = forwarded_headers(headers, upgrade=False)
        forwarded = limit.to_request(where.request_headers.apply(forwarded))
        tee = None                                 # the body on its way to the mirrors, as the primary takes it
        if where.mirrors and self.mirrors is not None:
            if not exchange.body_ended:
                tee = pending.mirror_body = MirrorBody(self.mirrors)
            pending.mirrored += self.mirrors.send(state, me, where.mirrors, exchange.method, target, authority,
                                                  forwarded, body=tee)
        if where.upstream_http("2") == "1.1":
            await self._forward_http1(exchange, where, me, forwarded, record, outcome, tee)
            return
        no_body = exchange.body_ended
        loop = asyncio.get_running_loop()
        clock = Deadlines(where.timeout, where.retry)
        forwarded = [(n, v) for n, v in forwarded if n != ATTEMPT_COUNT]
        kept = KeptBody()        # what a retry sends again, if the body stays within it
        retries, up, sending, body_started = 0, None, None, False

        def replayable() -> bool:
            # nothing of the body taken yet, or all of it within what is kept
            return no_body or not body_started or (
                sending is not None and sending.done() and exchange.body_ended and kept.whole is not None
                and not exchange.trailers)

        async def attempt():
            """One attempt: (response, None, None), or (None, failure, error)."""
            nonlocal up, sending, body_started
            try:
                connection = await self.upstreams.get(where.chosen, me, where.connection_limits)
                up = send_request(connection, exchange.method, target, authority=authority,
                                  scheme=exchange.scheme or "http",
                                  headers=[*h2_fields(forwarded), (ATTEMPT_COUNT, str(retries + 1))],
                                  end_stream=no_body)
            except (OSError, MeshcoreError) as exc:
                return None, "connect-failure", exc
            up.on_informational = lambda r: _inform(exchange, r)
            # a client's reset reaches the backend at once, whatever the relay waits on
            exchange.on_reset = lambda exc: _downstream_reset(exc, up, outcome)
            if not no_body:
                if body_started:                   # the body again, from memory
                    sending = loop.create_task(_send_kept(up, kept.whole))
                else:
                    sending, body_started = loop.create_task(_send_body(exchange, up, record, kept, tee)), True
            try:
                return await up.response(), None, None
            except StreamResetError as exc:
                # REFUSED_STREAM: the backend did nothing with it (RFC 9113 8.7)
                refused = exc.remote and exc.error_code == ErrorCode.REFUSED_STREAM
                return None, "refused-stream" if refused else "reset", exc
            except (ConnectionError, OSError, MeshcoreError) as exc:
                return None, "reset", exc

        def drop() -> None:
            nonlocal up, sending
            if sending is not None and not sending.done():
                sending.cancel()
            if up is not None:
                up.close()                         # reset if unfinished
            up, sending = None, None

        async def give_up() -> None:
            drop()

        try:
            while True:
                record.attempts = retries + 1
                deadline = clock.attempt()
                try:
                    async with asyncio.timeout_at(deadline):
                        response, failure, error = await attempt()
                except TimeoutError:
                    response, failure, error = None, "per-try-timeout", None
                if outcome.flag in CLIENT_RESET:
                    return                         # the client's reset, passed on already
                if failure == "per-try-timeout":
                    if not clock.expired() and (again := await retry_destination(
                            self.tunnels, where, retries, state, me, failure=failure, replayable=replayable(),
                            before=give_up, before_deadline=clock.route)):
                        where, retries = again, retries + 1
                        continue
                    where.attempted(failure="timeout")
                    await self._fail(exchange, record, outcome, 504, failure_flag("UT", where),
                                     b"upstream request timeout",
                                     f"route {where.route}: no response in time ({clock})", where.response_headers)
                    return
                if failure is not None:
                    if again := await retry_destination(self.tunnels, where, retries, state, me, failure=failure,
                                                        replayable=replayable(), before=give_up,
                                                        before_deadline=clock.route):
                        where, retries = again, retries + 1
                        continue
                    flag, body = failure_answer(failure, where)
                    await self._fail(exchange, record, outcome, 503, flag, body, f"{type(error).__name__}: {error}",
                                     where.response_headers)
                    return
                code = grpc_status(text_fields(response.headers)) if up.body_ended else ""
                if again := await retry_destination(self.tunnels, where, retries, state, me, status=response.status,
                                                    replayable=replayable(), before=give_up,
                                                    grpc_status=int(code) if code.isdigit() else None,
                                                    before_deadline=clock.route):
                    where, retries = again, retries + 1
                    continue
                break
            record.upstream, record.upstream_identity = where.chosen.workload, where.chosen.expected[0].uri
            outcome.flag = with_flag(outcome.flag, where.retry_flag)
            await _relay_response(exchange, up, response, record, outcome, where.response_headers)
        finally:
            exchange.on_reset = None
            drop()

    async def _fail(self, exchange: ServerExchange, record: RequestRecord, outcome: _Outcome, status: int,
                    flag: str, body: bytes, error: str, edits: HeaderEdits = NO_EDITS) -> None:
        """The waypoint's answer when the upstream failed: plain text, or for a gRPC
        call Envoy's gRPC local reply (Trailers-Only, the status mapped); either with the
        route's response `edits`."""
        outcome.status, outcome.flag, outcome.error = status, flag, error
        if record.protocol == "grpc":
            record.grpc_status = str(http_to_grpc_status(status))
            await _respond(exchange, 200, edits.apply([("content-type", "application/grpc"),
                                                       ("grpc-status", record.grpc_status),
                                                       ("grpc-message", body.decode("latin-1"))]),
                           b"", trailers_only=True)
        else:
            await _respond(exchange, status, edits.apply([("content-type", "text/plain")]), body)

    async def _forward_http1(self, exchange: ServerExchange, where: Destination, me: Workload, forwarded,
                             record: RequestRecord, outcome: _Outcome, tee: MirrorBody | None = None) -> None:
        """The request to a backend that speaks HTTP/1.1: a kept-alive connection of its
        own for the exchange (host from :authority; a body of unannounced length goes
        chunked, with the trailers after it), the response back on the stream."""
        pool, target = self.http1_upstreams, where.target
        fields = http1_fields(where.authority, forwarded)
        kept = KeptBody()        # what a retry sends again, if the body stays within it
        body = None if exchange.body_ended else _request_body(exchange, record, kept, tee)
        has_body = body is not None
        state = self.ctx.store.view
        clock = Deadlines(where.timeout, where.retry)
        retries, stale_retried = 0, False

        def replayable() -> bool:
            # no body, or all of it taken within what is kept (and no trailers, not kept)
            return not has_body or (exchange.body_ended and kept.whole is not None and not exchange.trailers)

        def again_body():
            return replay(kept.whole) if has_body else None
        while True:
            record.attempts = retries + 1
            attempt_deadline, client, unreached = clock.attempt(), None, None
            try:
                async with asyncio.timeout_at(attempt_deadline):
                    try:
                        client, reused = await pool.take(where.chosen, me, where.connection_limits)
                    except (OSError, MeshcoreError) as exc:
                        if clock.passed(attempt_deadline):
                            raise TimeoutError from exc    # the attempt's time (or the route's) is up
                        unreached = exc
                    if client is not None:
                        # a client's reset reaches the backend at once: the connection is closed
                        exchange.on_reset = lambda exc: _downstream_reset(exc, client, outcome)
                        sent = [*fields, (ATTEMPT_COUNT, str(retries + 1))]
                        response = await client.request(exchange.method, target, sent, body,
                                                        trailers=lambda: text_fields(exchange.trailers or ()))
                if unreached is not None:
                    # nothing of the request was taken: it may go to another endpoint
                    if again := await retry_destination(self.tunnels, where, retries, state, me,
                                                        failure="connect-failure", before_deadline=clock.route):
                        where, retries = again, retries + 1
                        continue
                    await self._fail(exchange, record, outcome, 503,
                                     failure_flag("UF", where), b"upstream connect error",
                                     f"{type(unreached).__name__}: {unreached}",
                                     where.response_headers)
                    return
                if again := await retry_destination(self.tunnels, where, retries, state, me, status=response.status,
                                                    replayable=replayable(), before=client.abandon,
                                                    before_deadline=clock.route):
                    pool.discard(client)
                    where, retries, body = again, retries + 1, again_body()
                    continue
                break
            except TimeoutError:
                if client is not None:
                    await client.abandon()
                    pool.discard(client)
                if not clock.expired() and (again := await retry_destination(
                        self.tunnels, where, retries, state, me, failure="per-try-timeout",
                        replayable=replayable(), before_deadline=clock.route)):
                    where, retries, body = again, retries + 1, again_body()
                    continue
                where.attempted(failure="timeout")
                await self._fail(exchange, record, outcome, 504, failure_flag("UT", where),
                                 b"upstream request timeout",
                                 f"route {where.route}: no response in time ({clock})", where.response_headers)
                return
            except (HttpError, OSError, MeshcoreError, asyncio.IncompleteReadError) as exc:
                await client.abandon()
                pool.discard(client)
                if outcome.flag in CLIENT_RESET:
                    return
                if not stale_retried and reused and client.nothing_received and not has_body \
                        and exchange.method in IDEMPOTENT and not (isinstance(exc, HttpError) and exc.status == 504):
                    stale_retried = True
                    continue                       # a kept-alive connection the backend had given up on
                if again := await retry_destination(self.tunnels, where, retries, state, me, failure="reset",
                                                    replayable=replayable(), before_deadline=clock.route):
                    where, retries, body = again, retries + 1, again_body()
                    continue
                if isinstance(exc, HttpError) and exc.status == 504:
                    await self._fail(exchange, record, outcome, 504, failure_flag("UT", where),
                                     b"upstream request timeout", str(exc),
                                     where.response_headers)
                else:
                    await self._fail(exchange, record, outcome, 503,
                                     failure_flag("UC", where),
                                     b"upstream connect error or disconnect/reset before headers",
                                     f"{type(exc).__name__}: {exc}", where.response_headers)
                return
            except BaseException:
                if client is not None:
                    pool.discard(client)           # cancelled (the client reset, the waypoint stops)
                raise
            finally:
                exchange.on_reset = None
        outcome.status, record.attempts = response.status, retries + 1
        outcome.flag = with_flag(outcome.flag, where.retry_flag)
        record.upstream, record.upstream_identity = where.chosen.workload, where.chosen.expected[0].uri
        if response.status == 101:
            pool.discard(client)
            outcome.flag, outcome.error, outcome.status = "UPE", "101 to a request without an upgrade", 502
            await _respond(exchange, 502, where.response_headers.apply([("content-type", "text/plain")]),
                           b"upstream switched protocols unasked")
            return
        fields = where.response_headers.apply(h2_fields(strip_hop_by_hop(response.headers)))
        exchange.on_reset = lambda exc: _downstream_reset(exc, client, outcome)
        try:
            if exchange.method == "HEAD" or response.body_complete:
                exchange.respond(response.status, fields, end=True)
            else:
                exchange.respond(response.status, fields)
                async for chunk in response.body():
                    await exchange.write(chunk)
                    record.response_bytes += len(chunk)
                await exchange.end(h2_fields(response.trailers) or None)
        except (HttpError, OSError, asyncio.IncompleteReadError) as exc:
            # the backend's side failed mid-body: so does the client's stream
            pool.discard(client)
            if outcome.flag not in CLIENT_RESET:
                outcome.flag, outcome.error = "UPE", f"{type(exc).__name__}: {exc}"
                exchange.reset(ErrorCode.CANCEL)
            return
        except (StreamResetError, ConnectionError, MeshcoreError) as exc:
            pool.discard(client)
            if outcome.flag not in CLIENT_RESET:
                outcome.flag, outcome.error = "DC", f"{type(exc).__name__}: {exc}"
            return
        except BaseException:
            pool.discard(client)                   # cancelled (the client reset, the waypoint stops)
            raise
        finally:
            exchange.on_reset = None
        pool.give_back(where.chosen, me, client)


def http1_fields(authority: str, forwarded: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """An HTTP/2 request's fields for an HTTP/1.1 backend: :authority as Host, and the
    cookie crumbs joined into one field with "; " (RFC 9113 8.2.3)."""
    crumbs = [v for n, v in forwarded if n == "cookie"]
    out = [("host", authority)] + [(n, v) for n, v in forwarded if n not in ("host", "cookie", ATTEMPT_COUNT)]
    if crumbs:
        out.append(("cookie", "; ".join(crumbs)))
    return out


async def _request_body(exchange: ServerExchange, record: RequestRecord, kept: KeptBody,
                        tee: MirrorBody | None = None):
    while chunk := await exchange.read():
        record.request_bytes += len(chunk)
        kept.add(chunk)
        if tee is not None:
            tee.feed(chunk)
        yield chunk
    if tee is not None:
        tee.finish(text_fields(exchange.trailers or ()))




# the client's stream ended by a reset: its own (DR), or the waypoint's for a malformed request (DPE)
CLIENT_RESET = frozenset({"DR", "DPE"})


def _downstream_reset(exc: BaseException, up, outcome: _Outcome) -> None:
    """The client's stream was reset: by the client (DR), or by the waypoint because
    the client's request was malformed (DPE, as Envoy counts a downstream protocol
    error, with no status). So is the upstream request, if one went (a stream reset
    with the same code; an HTTP/1.1 connection closed)."""
    ours = isinstance(exc, StreamResetError) and not exc.remote
    outcome.flag, outcome.error = ("DPE" if ours else "DR"), f"{type(exc).__name__}: {exc}"
    if ours:
        outcome.status = 0
    if isinstance(up, ClientExchange):
        code = getattr(exc, "error_code", ErrorCode.CANCEL)
        up.reset(code if code != ErrorCode.NO_ERROR else ErrorCode.CANCEL)
    elif up is not None:
        up.close()


async def _relay_response(exchange: ServerExchange, up: ClientExchange, response, record: RequestRecord,
                          outcome: _Outcome, edits: HeaderEdits = NO_EDITS) -> None:
    fields = edits.apply(h2_fields(text_fields(response.headers)))
    outcome.status = response.status
    if up.body_ended:
        # a response that ended with its headers goes on as one, which for gRPC is
        # Trailers-Only: its status is in this header block
        record.grpc_status = grpc_status(fields)
        exchange.respond(response.status, fields, end=True)
        return
    exchange.respond(response.status, fields)
    try:
        while chunk := await up.read():
            try:
                await exchange.write(chunk)
            except (StreamResetError, ConnectionError, MeshcoreError) as exc:
                if outcome.flag not in CLIENT_RESET:
                    # the client's side failed: it is the one gone, not the backend
                    outcome.flag, outcome.error = "DC", f"{type(exc).__name__}: {exc}"
                up.reset(ErrorCode.CANCEL)
                return
            record.response_bytes += len(chunk)
        trailers = h2_fields(text_fields(up.trailers or ()))
        record.grpc_status = grpc_status(trailers)
        try:
            await exchange.end(trailers or None)
        except (StreamResetError, ConnectionError, MeshcoreError) as exc:
            if outcome.flag not in CLIENT_RESET:
                outcome.flag, outcome.error = "DC", f"{type(exc).__name__}: {exc}"
            return
    except (StreamResetError, ConnectionError) as exc:
        if outcome.flag in CLIENT_RESET:
            return                                 # the client's reset, passed on already
        # the backend's reset (or the waypoint's, its response being malformed: UPE):
        # so is the client's stream
        malformed = isinstance(exc, StreamResetError) and not exc.remote
        outcome.flag, outcome.error = ("UPE" if malformed else "UR"), f"{type(exc).__name__}: {exc}"
        code = getattr(exc, "error_code", ErrorCode.CANCEL)
        exchange.reset(code if code != ErrorCode.NO_ERROR else ErrorCode.CANCEL)


async def _send_kept(up: ClientExchange, body: bytes) -> None:
    try:
        if body:
            await up.write(body)
        await up.end()
    except (StreamResetError, ConnectionError):
        pass


async def _send_body(exchange: ServerExchange, up: ClientExchange, record: RequestRecord,
                     kept: KeptBody | None = None, tee: MirrorBody | None = None) -> None:
    """The request's body and trailers, as the upstream's window takes them (and to the
    mirrors' copies, `tee`). A reset either way ends it; the on_reset hooks and the
    response side pass it on."""
    try:
        while chunk := await exchange.read():
            if kept is not None:
                kept.add(chunk)
            if tee is not None:
                tee.feed(chunk)
            await up.write(chunk)
            record.request_bytes += len(chunk)
        if tee is not None:
            tee.finish(text_fields(exchange.trailers or ()))
        trailers = h2_fields(text_fields(exchange.trailers or ()))
        await up.end(trailers or None)
    except (StreamResetError, ConnectionError):
        pass


def _inform(exchange: ServerExchange, response) -> None:
    try:
        exchange.inform(response.status, h2_fields(text_fields(response.headers)))
    except MeshcoreError:
        pass                                       # the client's stream is gone; the final answer will say so


async def _respond(exchange: ServerExchange, status: int, headers: list, body: bytes, *,
                   trailers_only: bool = False) -> None:
    """A whole answer of the waypoint's own."""
    if exchange.method == "HEAD":
        # a HEAD response has no content (RFC 9110 9.3.2): its length is described, not sent
        if body and not trailers_only and not any(n == "content-length" for n, _ in headers):
            headers = [*headers, ("content-length", str(len(body)))]
        exchange.respond(status, headers, end=True)
        return
    if trailers_only or not body:
        exchange.respond(status, headers, end=True)
        return
    if not any(n == "content-length" for n, _ in headers):
        headers = [*headers, ("content-length", str(len(body)))]
    exchange.respond(status, headers)
    await exchange.write(body)
    await exchange.end()
