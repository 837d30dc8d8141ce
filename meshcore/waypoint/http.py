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

from meshcore.aio.request import send_request
from meshcore.errors import ErrorCode, HttpError, MeshcoreError, StreamResetError
from meshcore.l7.http1 import Http1ClientConnection, Http1ServerConnection, strip_hop_by_hop, upgrade_allowed
from meshcore.node.context import ProxyContext
from meshcore.policy.paths import request_authority, request_path
from meshcore.policy.waypoint import denied_response, evaluate_request, is_grpc
from meshcore.traffic.decide import NO_EDITS, HeaderEdits, LocalReply, RequestView
from meshcore.waypoint.endpoints import EndpointPicker
from meshcore.waypoint.bodies import RETRY_BODY_LIMIT, KeptBody, replay as replay_body
from meshcore.waypoint.destination import (ATTEMPT_COUNT, IDEMPOTENT, Deadlines, Destination, InFlight,
                                           after_route, destination, failure_answer, failure_flag, retry_destination,
                                           with_flag, with_rate_headers)
from meshcore.waypoint.mirrors import MirrorBody, Mirrors
from meshcore.waypoint.ratelimits import Limited, RequestLimits
from meshcore.waypoint.headers import forwarded_headers, h2_fields, policy_headers, text_fields
from meshcore.waypoint.telemetry import RequestMetrics, RequestRecord
from meshcore.waypoint.tunnels import Tunnel, WaypointTunnels
from meshcore.waypoint.upstreams import Http2Upstreams, KeptUpstreams

log = logging.getLogger("meshcore.waypoint")

COPY_CHUNK = 1 << 16


def _has_body(headers: list[tuple[str, str]]) -> bool:
    return any(n in ("content-length", "transfer-encoding") for n, _ in headers)


class _Counted:
    """An async body iterator that counts what went through; `on_error` runs when the
    body fails (a request body cut short or malformed: the upstream request it feeds
    can never complete and is abandoned). `finished` is set once it ended whole, and
    `on_finished` called. With `keep`, the body is kept while it stays within that
    many bytes: what a retry sends again (`kept`)."""
    __slots__ = ("body", "count", "on_error", "error", "finished", "on_finished", "keeping")

    def __init__(self, body, on_error=None, keep: int = 0):
        self.body, self.count, self.on_error, self.error = body, 0, on_error, None
        self.finished = asyncio.Event()
        self.on_finished = None
        self.keeping = KeptBody(keep) if keep else None

    @property
    def kept(self) -> bytes | None:
        """The whole body, if it ended whole within the bound kept."""
        return self.keeping.whole if self.keeping is not None and self.finished.is_set() else None

    async def __aiter__(self):
        try:
            async for chunk in self.body:
                self.count += len(chunk)
                if self.keeping is not None:
                    self.keeping.add(chunk)
                yield chunk
        except (HttpError, OSError, MeshcoreError, TimeoutError) as exc:
            self.error = exc
            if self.on_error is not None:
                self.on_error()
            raise
        self.finished.set()
        if self.on_finished is not None:
            self.on_finished()


def _replayable(body: "_Counted | None", request) -> bool:
    """Whether the request can go again: no body, or one taken whole within the bound
    kept (and without trailers, which are not kept)."""
    return body is None or (body.kept is not None and not request.trailers)


class _ClientLeft(Exception):
    """The client closed its side while its request waited for the upstream."""


class Http1Handler:
    # Envoy's stream idle timeout (5 min) is what bounds a silent upstream in Istio's
    # waypoint: the same here for the response head, each read of the response body and
    # each write to a client that stopped reading
    RESPONSE_TIMEOUT = 300.0
    BODY_IDLE_TIMEOUT = 300.0
    WRITE_IDLE_TIMEOUT = 300.0

    def __init__(self, ctx: ProxyContext, tunnels: WaypointTunnels, metrics: RequestMetrics,
                 waypoint: tuple[str, str], *, http2_upstreams: Http2Upstreams | None = None,
                 endpoints: EndpointPicker | None = None, rate_limits: RequestLimits | None = None,
                 mirrors: Mirrors | None = None):
        self.ctx, self.tunnels, self.metrics = ctx, tunnels, metrics
        self.waypoint = waypoint                   # (namespace, name) of the Gateway
        self.endpoints = endpoints or EndpointPicker()
        self.rate_limits = rate_limits
        self.mirrors = mirrors
        # backends declared to speak HTTP/2 (http2, grpc) are reached on these
        self.http2_upstreams = http2_upstreams or Http2Upstreams(tunnels)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tunnel: Tunnel) -> None:
        # a CONNECT is refused as Envoy refuses one it is not configured for
        conn = Http1ServerConnection(reader, writer, write_timeout=self.WRITE_IDLE_TIMEOUT, connect_status=403)
        upstreams = KeptUpstreams()
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
            upstreams.close()                  # the tunnel was reset or the waypoint stops: at once
            raise
        finally:
            # the client left: end the kept-alive upstream tunnels as a client ends them
            await upstreams.aclose()

    async def _one(self, conn: Http1ServerConnection, request, tunnel: Tunnel, upstreams: KeptUpstreams) -> bool:
        """One request; False when the connection cannot carry another."""
        req = tunnel.request
        record = RequestRecord(tunnel.record, method=request.method, path=request.target,
                               authority=request.host or req.authority)
        inflight: list = [None]                    # the upstream client while one is in use, then the bodies
        pending = InFlight()                       # its attempts and mirror copies
        try:
            return await self._forward(conn, request, tunnel, upstreams, record, inflight, pending)
        except asyncio.CancelledError:
            pending.end(client_left=True)
            # the tunnel was reset (or the waypoint stops) mid-request
            if inflight[0] is not None:
                inflight[0].close()
            if not record.duration:
                if conn.response_sent:             # only the lingering after a whole response was cut
                    for counted, field in zip(inflight[1:], ("response_bytes", "request_bytes")):
                        if counted is not None:
                            setattr(record, field, counted.count)
                    self._report(record.finish(record.status))
                else:
                    self._report(record.finish(0, flag="DC", error="downstream reset before the response ended"))
            raise
        finally:
            pending.end(client_left=record.flag == "DC")

    async def _local(self, conn: Http1ServerConnection, record: RequestRecord, status: int, body: bytes, *,
                     flag: str = "-", error: str = "", headers=None, edits: HeaderEdits = NO_EDITS) -> bool:
        """A reply of the waypoint's own (with `edits`: the route's, once one took the
        request); a client already gone is reported as such."""
        record.status, record.flag, record.error = status, flag, error
        try:
            fields = headers if headers is not None else [("content-type", "text/plain")]
            await conn.respond(status, edits.apply(fields), body, close=self.tunnels.draining)
        except (HttpError, OSError, MeshcoreError) as exc:
            self._report(record.finish(0, flag="DC", error=f"{error}; the client left: {type(exc).__name__}: {exc}"))
            return False
        self._report(record.finish(status, flag=flag, error=error))
        return not conn.closed

    async def _forward(self, conn: Http1ServerConnection, request, tunnel: Tunnel, upstreams: KeptUpstreams,
                       record: RequestRecord, inflight: list, pending: InFlight) -> bool:
        ctx, req = self.ctx, tunnel.request
        if request.upgrade is not None and not upgrade_allowed(request.upgrade) \
                and request.upgrade.strip().lower() != "h2c":
            # what Envoy answers an upgrade it is not configured for (upgrade_failed); an
            # h2c upgrade is instead dropped and the request goes on as HTTP/1.1, as
            # Envoy's codec does
            return await self._local(conn, record, 403, b"upgrade not allowed",
                                     error=f"upgrade {request.upgrade!r} is not allowed")
        try:
            path, query = request_path(request.target, method=request.method)
        except ValueError as exc:
            return await self._local(conn, record, 400, b"bad request-target\n", error=f"request-target: {exc}")
        # what the policy decides on is what the upstream gets: the normalized path, in
        # origin-form, and (absolute-form) the target's authority as the host
        target = f"{path}?{query}" if query else path
        host = request_authority(request.target) or request.host
        state = ctx.store.view
        service = tunnel.service
        policies = state.waypoint_policy_set(self.waypoint, (service.namespace, service.name) if service else None)
        seen = policy_headers(request.headers)
        decision = evaluate_request(policies, peer=req.peer_identity, source_ip=req.peer_address[0],
                                    destination_ip=req.host, port=req.port, method=request.method,
                                    path=target, host=host, headers=seen)
        if not decision:
            denied = denied_response(request.headers)
            record.grpc_status = next((v for n, v in denied.headers if n == "grpc-status"), "")
            return await self._local(conn, record, denied.status, denied.body, headers=list(denied.headers),
                                     error=f"denied: {decision.reason}")
        me = tunnel.waypoint
        where = destination(self.tunnels, state, tunnel,
                            RequestView(request.method, path, query, host or "", seen, grpc=is_grpc(request.headers)),
                            target, waypoint_namespace=self.waypoint[0], picker=self.endpoints)
        limit = await after_route(where, state, tunnel, record, pending, self.rate_limits, self.waypoint, False)
        if isinstance(limit, Limited):
            record.route = where.route
            return await self._local(conn, record, limit.status, limit.body, flag=limit.flag, error=limit.reason,
                                     headers=list(limit.headers), edits=where.response_headers)
        where = with_rate_headers(where, limit.response)
        if isinstance(where, LocalReply):
            record.route = where.route
            return await self._local(conn, record, where.status, where.body, flag=where.flag, error=where.reason,
                                     headers=[*where.headers, *where.content_headers()], edits=where.response_headers)
        chosen, target, record.route = where.chosen, where.target, where.route
        record.upstream, record.upstream_identity = chosen.workload, chosen.expected[0].uri
        upgrade = upgrade_allowed(request.upgrade)
        headers, record.request_id = forwarded_headers(request.headers, upgrade=upgrade)
        # 100-continue is the waypoint's to answer (its first read of the body does): an
        # upstream told to expect would wait for a 100 that no one passes on
        headers = limit.to_request(where.request_headers.apply([(n, v) for n, v in headers if n != "expect"]))
        host = where.authority
        if host != request.host:
            headers = [("host", host)] + [(n, v) for n, v in headers if n != "host"]
        has_body = _has_body(request.headers)
        tee = None                                 # the body on its way to the mirrors, as the primary takes it
        if where.mirrors and self.mirrors is not None:
            if has_body:
                tee = pending.mirror_body = MirrorBody(self.mirrors)
            pending.mirrored += self.mirrors.send(state, me, where.mirrors, request.method, target, host, headers,
                                                  body=tee)
        if where.upstream_http("1.1") == "2":
            if upgrade:
                # an HTTP/2 backend could take it only as an extended CONNECT (RFC 8441),
                # which meshcore does not send: refused as Envoy refuses an upgrade it
                # is not configured for
                return await self._local(conn, record, 403, b"upgrade not allowed",
                                         error=f"upgrade {request.upgrade!r} to an HTTP/2 backend")
            return await self._forward_http2(conn, request, where, me, headers, has_body, record, tee)
        key = (chosen.dial, chosen.authority, chosen.expected)
        client = upstreams.pop(key, where.connection_limits)
        body = None
        clock = Deadlines(where.timeout, where.retry)
        headers = [(n, v) for n, v in headers if n != ATTEMPT_COUNT]
        retries, stale_retried, replay = 0, False, None
        while True:
            if conn.client_ended():
                # it left during a delay, a connect or a back-off: nothing goes upstream for it
                self._report(record.finish(0, flag="DC", error="the client left before its request went upstream"))
                return False
            reused = client is not None and client.reusable
            if client is not None and not reused:
                client.close()
                client = None
            sent = [*headers, (ATTEMPT_COUNT, str(retries + 1))]
            record.attempts = retries + 1
            attempt_deadline = clock.attempt()
            try:
                if client is None:
                    try:
                        async with asyncio.timeout_at(attempt_deadline):
                            up_reader, up_writer = await self.tunnels.open_upstream(
                                chosen, me, connect_timeout=where.connection_limits.connect_timeout)
                    except (OSError, MeshcoreError) as exc:
                        if clock.passed(attempt_deadline):
                            raise TimeoutError from exc    # the attempt's time (or the route's) is up
                        # nothing of the request was taken: it may go to another endpoint
                        if again := await retry_destination(self.tunnels, where, retries, state, me,
                                                            failure="connect-failure", before_deadline=clock.route):
                            where, retries = again, retries + 1
                            chosen, key = where.chosen, (where.chosen.dial, where.chosen.authority,
                                                         where.chosen.expected)
                            client = upstreams.pop(key, where.connection_limits)
                            continue
                        return await self._local(conn, record, 503, b"upstream connect error",
                                                 flag=failure_flag("UF", where),
                                                 error=f"{type(exc).__name__}: {exc}",
                                                 edits=where.response_headers)
                    client = Http1ClientConnection(up_reader, up_writer, response_timeout=self.RESPONSE_TIMEOUT,
                                                   idle_timeout=self.BODY_IDLE_TIMEOUT)
                    upstreams.opened(client, where.connection_limits)
                inflight[0] = client
                if has_body:
                    # an attempt after one that took the body whole sends it again from memory
                    source = replay_body(replay) if replay is not None else _client_body(request, tee)
                    body = _Counted(source, on_error=client.close, keep=RETRY_BODY_LIMIT)
                if attempt_deadline is None:
                    response = await self._exchange(conn, client, request, target, sent, body)
                else:
                    async with asyncio.timeout_at(attempt_deadline):
                        response = await self._exchange(conn, client, request, target, sent, body)
            except TimeoutError:
                # the attempt's time (perTryTimeout) or the route's: the upstream request is
                # given up (its connection closed)
                if client is not None:
                    await client.abandon()
                    client = None
                inflight[0] = None
                if body is not None and body.error is not None:
                    self._report(record.finish(getattr(body.error, "status", 0), flag="DC", error=str(body.error)))
                    return False
                if not clock.expired() and (again := await retry_destination(
                        self.tunnels, where, retries, state, me, failure="per-try-timeout",
                        replayable=_replayable(body, request), before_deadline=clock.route)):
                    where, retries, replay = again, retries + 1, body.kept if body is not None else None
                    chosen, key = where.chosen, (where.chosen.dial, where.chosen.authority, where.chosen.expected)
                    client = upstreams.pop(key, where.connection_limits)
                    continue
                where.attempted(failure="timeout")
                return await self._local(conn, record, 504, b"upstream request timeout",
                                         flag=failure_flag("UT", where),
                                         error=f"route {where.route}: no response in time ({clock})",
                                         edits=where.response_headers)
            except (HttpError, OSError, MeshcoreError, asyncio.IncompleteReadError, _ClientLeft) as exc:
                await client.abandon(linger=1.0 if isinstance(exc, _ClientLeft) else 0.0)
                if body is not None and body.error is not None:
                    # the client's body failed: the codec answered it (400, 408) and closed
                    failure = body.error
                    self._report(record.finish(getattr(failure, "status", 0), flag="DC", error=str(failure)))
                    return False
                if conn.closed or isinstance(exc, _ClientLeft):
                    self._report(record.finish(0, flag="DC", error=str(exc) or "the client left"))
                    return False
                if not stale_retried and reused and client.nothing_received and request.method in IDEMPOTENT \
                        and not (isinstance(exc, HttpError) and exc.status == 504) \
                        and (body is None or body.count == 0):
                    # a kept-alive connection the upstream had given up on: an idempotent
                    # request nothing came back for goes once more on a new connection
                    # (RFC 9112 9.3.1), as a client may resend one
                    stale_retried, client = True, None
                    continue
                client = None
                if again := await retry_destination(self.tunnels, where, retries, state, me, failure="reset",
                                                    replayable=_replayable(body, request),
                                                    before_deadline=clock.route):
                    where, retries, replay = again, retries + 1, body.kept if body is not None else None
                    chosen, key = where.chosen, (where.chosen.dial, where.chosen.authority, where.chosen.expected)
                    client = upstreams.pop(key, where.connection_limits)
                    continue
                inflight[0] = None
                if isinstance(exc, HttpError) and exc.status == 504:
                    return await self._local(conn, record, 504, b"upstream request timeout",
                                             flag=failure_flag("UT", where), error=str(exc),
                                             edits=where.response_headers)
                return await self._local(conn, record, 503,
                                         b"upstream connect error or disconnect/reset before headers",
                                         flag=failure_flag("UC", where),
                                         error=f"{type(exc).__name__}: {exc}",
                                         edits=where.response_headers)
            if again := await retry_destination(self.tunnels, where, retries, state, me, status=response.status,
                                                replayable=_replayable(body, request), before=client.abandon,
                                                before_deadline=clock.route):
                # an answer the policy retries: given up (its connection closed), asked again
                where, retries, client = again, retries + 1, None
                replay = body.kept if body is not None else None
                chosen, key = where.chosen, (where.chosen.dial, where.chosen.authority, where.chosen.expected)
                client = upstreams.pop(key, where.connection_limits)
                continue
            break
        record.attempts = retries + 1
        record.upstream, record.upstream_identity = chosen.workload, chosen.expected[0].uri
        record.request_bytes = body.count if body is not None else 0
        if response.status == 101:
            if not upgrade:
                # a switch nobody asked for (or one meshcore does not forward): never a splice
                await client.abandon()
                inflight[0] = None
                return await self._local(conn, record, 502, b"upstream switched protocols unasked", flag="UPE",
                                         error="101 to a request without an allowed upgrade",
                                         edits=where.response_headers)
            try:
                await conn.respond(101, strip_hop_by_hop(response.headers, upgrade=True), b"")
            except (HttpError, OSError, MeshcoreError) as exc:
                await client.abandon()
                self._report(record.finish(0, flag="DC", error=f"{type(exc).__name__}: {exc}"))
                return False
            self._report(record.finish(101))
            inflight[0] = None
            await _splice(conn.take_over(), client.take_over())
            return False
        answer = _Counted(_relay_body(response, client, body))
        record.status, record.flag = response.status, with_flag(record.flag, where.retry_flag)
        inflight[1:] = [answer, body]
        try:
            await conn.respond(response.status, where.response_headers.apply(strip_hop_by_hop(response.headers)), answer,
                               trailers=lambda: response.trailers, reason=response.reason,
                               close=self.tunnels.draining)
        except (HttpError, OSError, MeshcoreError) as exc:
            await client.abandon()
            record.response_bytes = answer.count
            if body is not None:
                record.request_bytes = body.count
            if answer.error is None:
                flag = "DC"                        # writing to the client failed
            elif isinstance(answer.error, HttpError) and answer.error.status == 408:
                flag = "SI"                        # the upstream's body went idle
            else:
                flag = "UPE"
            self._report(record.finish(response.status, flag=flag, error=f"{type(exc).__name__}: {exc}"))
            return False
        inflight[0] = None
        record.response_bytes = answer.count
        if body is not None:
            record.request_bytes = body.count
        self._report(record.finish(response.status))
        upstreams.keep(key, client)
        return not conn.closed

    async def _forward_http2(self, conn: Http1ServerConnection, request, where: Destination, me,
                             headers, has_body: bool, record: RequestRecord, tee: MirrorBody | None = None) -> bool:
        """The request to a backend that speaks HTTP/2: a stream on the waypoint's
        connection to the endpoint; its response back in HTTP/1.1 (chunked when its
        length is not announced, trailers after the last chunk). A client that ends its
        side before the response ended resets the stream. Retried as the route says:
        connection failures always, anything else only without a body."""
        fields = [(n, v) for n, v in h2_fields(headers) if n != ATTEMPT_COUNT]
        state, clock = self.ctx.store.view, Deadlines(where.timeout, where.retry)
        body = up = sending = replay = None
        retries = 0

        def drop() -> None:
            nonlocal up, sending
            if sending is not None and not sending.done():
                sending.cancel()
            if up is not None:
                up.close()                         # resets the stream if either half is unfinished
            up, sending = None, None

        async def give_up() -> None:
            drop()

        async def attempt():
            nonlocal up, body, sending
            try:
                connection = await self.http2_upstreams.get(where.chosen, me, where.connection_limits)
                up = send_request(connection, request.method, where.target, authority=where.authority,
                                  scheme="http", headers=[*fields, (ATTEMPT_COUNT, str(retries + 1))],
                                  end_stream=not has_body)
            except (OSError, MeshcoreError) as exc:
                return None, "connect-failure", exc
            if has_body:
                stream = up
                # an attempt after one that took the body whole sends it again from memory
                source = replay_body(replay) if replay is not None else _client_body(request, tee)
                body = _Counted(source, on_error=lambda: stream.reset(ErrorCode.CANCEL), keep=RETRY_BODY_LIMIT)
                sending = asyncio.get_running_loop().create_task(_send_http2_body(body, request, up))
            try:
                return await _while_client_stays(conn, body, up.response()), None, None
            except StreamResetError as exc:
                refused = exc.remote and exc.error_code == ErrorCode.REFUSED_STREAM
                return None, "refused-stream" if refused else "reset", exc
            except (ConnectionError, OSError, MeshcoreError) as exc:
                return None, "reset", exc

        try:
            while True:
                record.attempts = retries + 1
                try:
                    async with asyncio.timeout_at(clock.attempt()):
                        response, failure, error = await attempt()
                except TimeoutError:
                    response, failure, error = None, "per-try-timeout", None
                except _ClientLeft as exc:
                    self._report(record.finish(0, flag="DC", error=str(exc)))
                    return False
                if body is not None and body.error is not None:
                    self._report(record.finish(getattr(body.error, "status", 0), flag="DC", error=str(body.error)))
                    return False
                # what nothing of was sent (a connection failure) goes again, and a body
                # taken whole within what is kept
                replayable = failure == "connect-failure" or _replayable(body, request)
                if failure == "per-try-timeout":
                    if not clock.expired() and (again := await retry_destination(
                            self.tunnels, where, retries, state, me, failure=failure, replayable=replayable,
                            before=give_up, before_deadline=clock.route)):
                        where, retries = again, retries + 1
                        replay = body.kept if body is not None else replay
                        continue
                    where.attempted(failure="timeout")
                    return await self._local(conn, record, 504, b"upstream request timeout",
                                             flag=failure_flag("UT", where),
                                             error=f"route {where.route}: no response in time ({clock})",
                                             edits=where.response_headers)
                if failure is not None:
                    if again := await retry_destination(self.tunnels, where, retries, state, me, failure=failure,
                                                        replayable=replayable, before=give_up,
                                                        before_deadline=clock.route):
                        where, retries = again, retries + 1
                        replay = body.kept if body is not None else replay
                        continue
                    flag, text = failure_answer(failure, where)
                    return await self._local(conn, record, 503, text, flag=flag, error=f"{type(error).__name__}: {error}",
                                             edits=where.response_headers)
                if again := await retry_destination(self.tunnels, where, retries, state, me, status=response.status,
                                                    replayable=replayable, before=give_up,
                                                    before_deadline=clock.route):
                    where, retries = again, retries + 1
                    replay = body.kept if body is not None else replay
                    continue
                break
            record.status, record.flag = response.status, with_flag(record.flag, where.retry_flag)
            record.upstream, record.upstream_identity = where.chosen.workload, where.chosen.expected[0].uri
            answer = _Counted(_http2_body(up, self.BODY_IDLE_TIMEOUT)) if not up.body_ended else None
            stream = up
            try:
                await _while_client_stays(conn, None, conn.respond(
                    response.status, where.response_headers.apply(h2_response_fields(response.headers)),
                    answer if answer is not None else b"",
                    trailers=lambda: h2_fields(text_fields(stream.trailers or ())), close=self.tunnels.draining))
            except (HttpError, OSError, MeshcoreError, TimeoutError, _ClientLeft) as exc:
                record.response_bytes = answer.count if answer is not None else 0
                if isinstance(exc, _ClientLeft) and conn.response_sent:
                    self._report(record.finish(response.status))    # it left while the close lingered
                    return False
                flag = "DC" if answer is None or answer.error is None else \
                    ("SI" if isinstance(answer.error, TimeoutError) else "UR")
                self._report(record.finish(response.status, flag=flag, error=f"{type(exc).__name__}: {exc}"))
                return False
            record.response_bytes = answer.count if answer is not None else 0
            record.request_bytes = body.count if body is not None else 0
            self._report(record.finish(response.status))
            return not conn.closed
        finally:
            drop()

    async def _exchange(self, conn: Http1ServerConnection, client: Http1ClientConnection, request, target: str,
                        headers, body):
        """The upstream's response head, unless the client leaves first."""
        return await _while_client_stays(conn, body, client.request(request.method, target, headers, body,
                                                                    trailers=lambda: request.trailers))

    def _report(self, record: RequestRecord) -> None:
        self.metrics.report(record)


async def _while_client_stays(conn: Http1ServerConnection, body, awaitable):
    """What `awaitable` gives, unless the client ends its side first (once its request
    went whole): then what is awaited is given up and _ClientLeft raised."""
    if conn.client_ended() and (body is None or body.finished.is_set()):
        awaitable.close()
        raise _ClientLeft("the client closed the connection before the response")
    task = asyncio.current_task()
    left = False

    def client_ended() -> None:
        nonlocal left
        if not left and (body is None or body.finished.is_set()):
            left = True
            task.cancel()
    conn.watch_end(client_ended)
    if body is not None:
        body.on_finished = lambda: conn.watch_end(client_ended)   # an end seen mid-body counts now
    try:
        return await awaitable
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:
            raise _ClientLeft("the client closed the connection before the response") from None
        raise
    finally:
        conn.watch_end(None)
        if body is not None:
            body.on_finished = None


def _client_body(request, tee: MirrorBody | None):
    """The client's request body, passed on to the mirrors' copies as it goes."""
    return request.body() if tee is None else tee.feeding(request.body(), lambda: request.trailers)


async def _relay_body(response, client: Http1ClientConnection, body):
    """The response body; at its end an upload the upstream did not wait for is given up,
    so that the client connection reads its own socket again, alone."""
    async for chunk in response.body():
        yield chunk
    if body is not None and not body.finished.is_set():
        await client.abandon()


async def _send_http2_body(body: "_Counted", request, up) -> None:
    """An HTTP/1.1 request's body (and chunked trailers) onto its HTTP/2 stream, as the
    stream's window takes it."""
    try:
        async for chunk in body:
            await up.write(chunk)
        await up.end(h2_fields(request.trailers) or None)
    except (StreamResetError, ConnectionError, HttpError, OSError, MeshcoreError):
        pass                                       # the response side reports it


async def _http2_body(up, idle: float):
    """An HTTP/2 response's body; a backend silent for `idle` seconds ends it (TimeoutError)."""
    while True:
        async with asyncio.timeout(idle):
            chunk = await up.read()
        if not chunk:
            return
        yield chunk


def h2_response_fields(fields) -> list[tuple[str, str]]:
    """An HTTP/2 response's fields for an HTTP/1.1 client (the codec frames the body)."""
    return [(n, v) for n, v in text_fields(fields) if not n.startswith(":")]


async def _splice(down, up, idle: float = Http1Handler.WRITE_IDLE_TIMEOUT) -> None:
    """After a 101: bytes both ways until both sides end."""
    (d_reader, d_writer, d_ahead), (u_reader, u_writer, u_ahead) = down, up

    async def copy(reader, writer):
        try:
            while chunk := await reader.read(COPY_CHUNK):
                writer.write(chunk)
                async with asyncio.timeout(idle):          # a side that stopped reading
                    await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            writer.transport.abort()
    try:
        if u_ahead:
            d_writer.write(u_ahead)
        if d_ahead:
            u_writer.write(d_ahead)
        await asyncio.gather(copy(d_reader, u_writer), copy(u_reader, d_writer))
    finally:
        for w in (d_writer, u_writer):
            if not w.transport.is_closing():
                w.close()
