"""An HBONE connection: the compiled H2Connection driven over an asyncio transport
(TLS in production, anything in tests).

All protocol bytes go through meshcore._core. The per-chunk half (reads, DATA to
streams, sends, output batching) is compiled: meshcore.aio.datapath.ConnectionBase.
This module is the rest: events other than DATA, opening and accepting streams,
keepalive, drain.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from meshcore._core import events as ev
from meshcore._core.h2conn import H2Connection
from meshcore.aio.datapath import ConnectionBase, StreamTransport
from meshcore.aio.deadline import current_task as _current_task
from meshcore.aio.keepalive import keepalive_clock
from meshcore.aio.memory import trimmer
from meshcore.errors import ErrorCode, StreamClosedError, StreamRefusedError, TunnelError, error_code_name

log = logging.getLogger("meshcore.hbone")

KEEPALIVE_INTERVAL = 10.0     # docs/hbone.md, HTTP/2 settings: PING after 10 s idle
KEEPALIVE_TIMEOUT = 20.0      # no ACK within 20 s closes the connection
DRAIN_DEADLINE = 5.0
CLOSE_DEADLINE = 1.0          # a closing connection whose peer does not read is aborted after this


class HboneConnection(ConnectionBase, asyncio.BufferedProtocol):
    """One HTTP/2 connection carrying tunnels, client or server side."""

    # client: the last tunnel opened before the peer's SETTINGS came (a class default, so
    # connections that never open one early carry no attribute for it)
    _last_sid_before_settings = 0

    def __init__(self, *, client: bool, on_request: Callable | None = None,
                 verify: Callable | None = None, keepalive_interval: float = KEEPALIVE_INTERVAL,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT, close_deadline: float = CLOSE_DEADLINE,
                 **h2_options):
        self.h2 = H2Connection(client=client, **h2_options)
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.on_request = on_request            # server: (connection, TunnelRequested) -> None
        self.verify = verify                    # (ssl_object) -> peer identity; raises to refuse
        self.peer_identity = None
        self._opening: dict[int, tuple[asyncio.Future, Callable, StreamTransport]] = {}
        self.closed: asyncio.Future = self.loop.create_future()
        self.settings_received: asyncio.Future = self.loop.create_future()
        self.error: BaseException | None = None
        self.goaway = False
        # pool hooks; on_unusable: no new stream may go on it (GOAWAY either way, or an
        # unanswered keepalive PING)
        self.on_unusable: Callable | None = None
        self.on_settings: Callable | None = None
        self.on_stream_closed: Callable | None = None
        self.on_closed: Callable | None = None           # owner's hook: (connection) -> None, once
        # server: the task answering each request (authorization, upstream dial, relay).
        # The connection owns it: a reset of its stream or the loss of the connection
        # cancels it, and whatever it opened closes with it.
        self.request_tasks: dict[int, asyncio.Task] = {}
        self.defer_output = self._defer_output
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._close_deadline = close_deadline
        self._stream_extra: dict | None = None
        self._reads_seen = 0                    # the keepalive timer compares _reads, instead of a clock per read
        self._idle_since = time.monotonic()
        self._ping_deadline: float | None = None
        self._drained: asyncio.Future | None = None     # while draining: resolved when the last stream ends
        self._keepalive_slot: int | None = None  # pending check on the loop's KeepaliveClock

    # ------------------------------------------------------------- asyncio.Protocol

    def _defer_output(self) -> bool:
        """Output queued outside a read: from a task it waits for the loop's next turn,
        so that what the task sends in one step leaves in one TLS write; from a
        callback relaying a socket's read it goes at once."""
        if _current_task(self.loop) is None:
            return False
        self.loop.call_soon(self._deferred_flush)
        return True

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.verify is not None:
            verify, self.verify = self.verify, None      # used once: its closure need not stay
            try:
                self.peer_identity = verify(transport.get_extra_info("ssl_object"))
            except Exception as exc:                     # refused identity: nothing more
                self.error = exc
                transport.abort()
                return
        self._flush()
        if self._keepalive_interval:
            self._keepalive_slot = keepalive_clock(self.loop).schedule(self, self._keepalive_interval)

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        if self._keepalive_slot is not None:
            keepalive_clock(self.loop).cancel(self, self._keepalive_slot)
            self._keepalive_slot = None
        lost = ConnectionResetError(f"HBONE connection lost ({exc or 'closed'})")
        for stream in list(self.streams.values()):
            stream._connection_lost(lost)            # peers vanished: abort, never "complete"
        for task in list(self.request_tasks.values()):
            task.cancel()
        self.request_tasks.clear()
        for fut, _, _ in self._opening.values():
            if not fut.done():
                fut.set_exception(TunnelError(f"connection lost before the tunnel opened ({exc})", 503))
        self._opening.clear()
        if not self.closed.done():
            self.closed.set_result(exc)
        on_closed, self.on_closed = self.on_closed, None
        if on_closed is not None:
            on_closed(self)
        if not self.settings_received.done():
            self.settings_received.set_exception(ConnectionResetError("closed before SETTINGS"))
            self.settings_received.exception()

    # ------------------------------------------------------------------ events

    def _stream_failed(self, stream_id: int, exc: BaseException) -> None:
        """A stream's protocol raised while handling its event: that stream is reset
        (INTERNAL_ERROR) and the connection carries on. An error outside any stream is
        the connection's own and propagates."""
        stream = self.streams.get(stream_id) if stream_id else None
        if stream is None:
            raise exc
        log.error("tunnel %s on %s failed and was reset: %r", stream_id,
                  self._extra().get("peername"), exc, exc_info=exc)
        stream.abort(ErrorCode.INTERNAL_ERROR)

    def _dispatch(self, e) -> None:
        kind = type(e)
        if kind is ev.WindowOpened:
            self._on_window(e.stream_id)
        elif kind is ev.StreamEnded:
            stream = self.streams.get(e.stream_id)
            if stream is not None:
                # _exchange_event inline: every tunnel ends this way
                handler = getattr(stream.get_protocol(), "stream_event", None)
                if handler is not None:
                    handler(e)
                stream._on_end()
        elif kind is ev.TunnelRequested or kind is ev.RequestReceived:
            # a CONNECT, or a request for meshcore.aio.request to answer: on_request decides
            if self.on_request is None:
                self.h2.refuse_tunnel(e.stream_id, 503)
            else:
                # The stream exists from its request on, reading paused: DATA a client
                # sends before our answer waits in it (within the stream window) and is
                # delivered once the tunnel is accepted, END_STREAM included.
                stream = StreamTransport(self, e.stream_id, self._stream_extra or self._extra())
                stream.pause_reading()
                self.streams[e.stream_id] = stream
                self.on_request(self, e)
        elif kind is ev.TunnelAccepted or kind is ev.TunnelRefused:
            self._on_response(e)
        elif kind is ev.StreamReset:
            self._on_reset(e)
        elif kind is ev.ConnectionTerminated:
            self._on_terminated(e)
        elif kind is ev.PingAcknowledged:
            self._ping_deadline = None
            self._idle_since = time.monotonic()
        elif kind is ev.SettingsChanged:
            if not self.settings_received.done():
                self.settings_received.set_result(e.changed)
            if self.on_settings is not None:
                self.on_settings(self)
        elif kind is ev.ResponseReceived or kind is ev.InformationalResponseReceived or kind is ev.TrailersReceived:
            stream = self.streams.get(e.stream_id)
            if stream is not None:
                self._exchange_event(stream, e)

    @staticmethod
    def _exchange_event(stream, e) -> None:
        """A request stream's header sections, end and reset go to its exchange (the
        stream's protocol, meshcore.aio.request) before the stream acts on them."""
        handler = getattr(stream.get_protocol(), "stream_event", None)
        if handler is not None:
            handler(e)

    def _on_response(self, e) -> None:
        opening = self._opening.pop(e.stream_id, None)
        if opening is None:
            return
        fut, protocol_factory, stream = opening
        if type(e) is ev.TunnelRefused:
            self.streams.pop(e.stream_id, None)
            if self.h2.can_send(e.stream_id):
                self.h2.reset_stream(e.stream_id, ErrorCode.CANCEL)
            if not fut.done():                  # else the opener gave up first
                fut.set_exception(TunnelError(f"tunnel refused with status {e.status}", e.status))
            self._stream_done(e.stream_id)
            return
        if fut.done():
            # the opener gave up (its client left) while the tunnel was being answered
            self.streams.pop(e.stream_id, None)
            self.h2.reset_stream(e.stream_id, ErrorCode.CANCEL)
            self._stream_done(e.stream_id)
            return
        protocol = protocol_factory()
        stream.set_protocol(protocol)
        protocol.connection_made(stream)
        fut.set_result((stream, protocol))

    def _on_reset(self, e) -> None:
        opening = self._opening.pop(e.stream_id, None)
        if opening is not None:
            self.streams.pop(e.stream_id, None)
            if opening[0].done():
                pass                            # the opener gave up first
            elif e.error_code == ErrorCode.REFUSED_STREAM:
                # unprocessed: the pool may try another connection if this one is going
                # away, or if the stream went out before the peer told its stream limit
                going_away = self.goaway or self.h2.goaway_received
                early = e.stream_id <= self._last_sid_before_settings
                opening[0].set_exception(StreamRefusedError(
                    f"tunnel refused before it opened (REFUSED_STREAM"
                    f"{', the connection is going away' if going_away else ''}"
                    f"{', sent before the peer SETTINGS' if early else ''})", going_away, early))
            else:
                opening[0].set_exception(TunnelError(
                    f"tunnel reset before it opened ({error_code_name(e.error_code)})", 503))
            self._stream_done(e.stream_id)
            return
        stream = self.streams.get(e.stream_id)
        if stream is not None:
            self._exchange_event(stream, e)
        if stream is None or stream.get_protocol() is None:
            # not answered yet: the client gave up (or rapid-reset us), so the dial and
            # whatever else the request started are cancelled. Once accepted, the
            # stream's protocol learns of the reset instead (a peer's CANCEL is an EOF).
            task = self.request_tasks.pop(e.stream_id, None)
            if task is not None:
                task.cancel()
        if stream is not None:
            stream._on_reset(e.error_code, e.remote)

    def _on_terminated(self, e) -> None:
        if e.remote:
            self.goaway = True
            if self.on_unusable is not None:
                self.on_unusable(self)
            if e.error_code != ErrorCode.NO_ERROR:
                log.warning("peer closed the HBONE connection with %s: %s",
                            error_code_name(e.error_code), e.additional_data[:200])
                self._close_transport()
        else:
            log.warning("HBONE protocol error from peer %s: %s (%s)", self.peer_identity,
                        e.reason, error_code_name(e.error_code))
            self.error = ConnectionError(e.reason)
            self.transport.pause_reading()      # nothing more is read from a peer we cut off
            self._close_transport()

    def _stream_done(self, stream_id: int) -> None:
        # an emptied dict keeps its table (~0.2 KiB each): a connection left idle after
        # carrying tunnels gets fresh ones, and builds its streams' extra info again
        # for the next one
        if not self.streams:
            self.streams = {}
            self._stream_extra = None
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
        if not self._opening:
            self._opening = {}
        trimmer.tunnel_ended(self.loop)
        if self.on_stream_closed is not None:
            self.on_stream_closed(self, stream_id)

    # ---------------------------------------------------------------- commands

    async def open_stream(self, authority: str, protocol_factory: Callable, headers=()):
        """Client: CONNECT `authority`; once the peer answers 200, `protocol_factory()`
        is connected to a StreamTransport. Raises TunnelError(status) otherwise."""
        sid = self.h2.open_tunnel(authority, headers)
        if not self.settings_received.done():
            self._last_sid_before_settings = sid
        # the shared extra info as it stands, built only when there is none (a call less per tunnel)
        stream = StreamTransport(self, sid, self._stream_extra or self._extra())
        self.streams[sid] = stream
        fut = self.loop.create_future()
        self._opening[sid] = (fut, protocol_factory, stream)
        self._flush()
        try:
            return await fut
        except asyncio.CancelledError:
            self._abandon_open(sid, fut)
            raise

    def _abandon_open(self, sid: int, fut: asyncio.Future) -> None:
        """The opener left: the stream goes now (RST_STREAM CANCEL), not when the peer
        answers, so a peer that never answers holds neither a stream nor a pool slot."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            fut.result()[0].abort()             # answered 200 just before the opener left
            return
        if self._opening.pop(sid, None) is None:
            return
        self.streams.pop(sid, None)
        if self.h2.can_send(sid) or self.h2.can_receive(sid):
            self.h2.reset_stream(sid, ErrorCode.CANCEL)
            self._flush()
        self._stream_done(sid)

    def own_request(self, stream_id: int, task: asyncio.Task) -> None:
        """Server: `task` answers the request on `stream_id`; it is cancelled if the
        stream is reset or the connection ends first."""
        if self.closed.done() or stream_id not in self.streams:
            task.cancel()
            return
        self.request_tasks[stream_id] = task
        task.add_done_callback(functools.partial(self._request_done, stream_id))

    def cancel_request(self, stream_id: int) -> bool:
        """Server: end the work answering `stream_id` (a revoked authorization, say);
        whatever it opened closes with it. False if there is none."""
        task = self.request_tasks.get(stream_id)
        if task is None:
            return False
        task.cancel()
        return True

    def _request_done(self, stream_id: int, task=None) -> None:
        self.request_tasks.pop(stream_id, None)
        if not self.request_tasks:
            self.request_tasks = {}

    def accept_stream(self, stream_id: int, protocol, headers=()) -> StreamTransport:
        """Server: answer 200 and connect `protocol` to the tunnel; data the client
        sent early is delivered now. Raises StreamClosedError if the stream or the
        connection ended meanwhile (the caller closes what it opened for it)."""
        stream = self.streams.get(stream_id)
        if stream is None or self.closed.done() or self.h2.terminated:
            raise StreamClosedError(f"stream {stream_id} ended before its tunnel was accepted", stream_id)
        self.h2.accept_tunnel(stream_id, headers)
        stream.set_protocol(protocol)
        protocol.connection_made(stream)
        stream.resume_reading()
        self.output_queued()
        return stream

    def refuse_stream(self, stream_id: int, status: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.get_protocol() is None:
            stream._connection_lost(None)            # returns what it held of the window
        if self.h2.can_send(stream_id):
            self.h2.refuse_tunnel(stream_id, status)
            if self.h2.can_receive(stream_id):
                # the answer is complete; RFC 9113 8.1 lets us stop the request body so
                # the stream does not hold a slot until the client ends it
                self.h2.reset_stream(stream_id, ErrorCode.NO_ERROR)
            self.output_queued()

    async def drain(self, deadline: float = DRAIN_DEADLINE) -> None:
        """Graceful shutdown: GOAWAY, let open tunnels finish, close after `deadline`."""
        if self.transport is None or self.transport.is_closing():
            return
        self.h2.close(ErrorCode.NO_ERROR)
        self._flush()
        if self.on_unusable is not None:
            self.on_unusable(self)
        if self.streams:
            # the last stream's end resolves it (_stream_done): no polling
            self._drained = self.loop.create_future()
            await asyncio.wait((self._drained, self.closed), timeout=deadline)
        self._close_transport()
        await asyncio.shield(self.closed)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.h2.close(ErrorCode.NO_ERROR)
            self._close_transport()

    @property
    def usable(self) -> bool:
        """Can carry a new tunnel (pool): connected, no GOAWAY either way, no error."""
        return (self.transport is not None and not self.transport.is_closing() and not self.goaway
                and not self.h2.goaway_sent and not self.h2.terminated and self.error is None)

    # ----------------------------------------------------------------- internal

    def _extra(self) -> dict:
        """What every stream's get_extra_info() answers: the connection's, shared by the
        streams open together (they only read it) and built again after they all end."""
        if self._stream_extra is None:
            t = self.transport
            self._stream_extra = {"peername": t.get_extra_info("peername") if t else None,
                                  "sockname": t.get_extra_info("sockname") if t else None,
                                  "peer_identity": self.peer_identity}
        return self._stream_extra

    def _close_transport(self) -> None:
        """Write what is queued (a GOAWAY) and close; a peer that does not read it
        within the close deadline is aborted, so its socket and buffers go now instead
        of when TCP gives up."""
        self._write_paused = False      # the last write: the transport buffers it whatever its state
        self._flush()
        self.transport.close()
        if not self.closed.done():
            timer = self.loop.call_later(self._close_deadline, self._abort_unclosed)
            self.closed.add_done_callback(lambda _: timer.cancel())

    def _abort_unclosed(self) -> None:
        if not self.closed.done():
            log.warning("HBONE peer %s did not take the end of the connection within %.1f s: aborting",
                        self.peer_identity, self._close_deadline)
            self.transport.abort()

    def _keepalive(self) -> None:
        self._keepalive_slot = None             # this check is the one that was pending
        now = time.monotonic()
        if self.transport is None or self.transport.is_closing():
            return
        if self._reads != self._reads_seen:         # the peer spoke: alive, idle from now
            self._reads_seen = self._reads
            self._idle_since = now
            self._ping_deadline = None
        if self._ping_deadline is not None and now >= self._ping_deadline:
            log.warning("HBONE peer %s did not answer PING within %g s: closing",
                        self.peer_identity, self._keepalive_timeout)
            self.error = TimeoutError("keepalive PING not acknowledged")
            if self.on_unusable is not None:
                self.on_unusable(self)
            self.transport.abort()
            return
        idle = now - self._idle_since
        if self._ping_deadline is None and idle >= self._keepalive_interval:
            self.h2.ping()
            self._ping_deadline = now + self._keepalive_timeout
            self._flush()
        # a check every half interval: a PING goes out after 1 to 1.5 intervals of silence
        wait = max(0.01, min(self._keepalive_interval - idle, self._keepalive_interval / 2)) \
            if self._ping_deadline is None else \
            min(self._keepalive_interval, max(0.01, self._ping_deadline - now))
        self._keepalive_slot = keepalive_clock(self.loop).schedule(self, wait)
