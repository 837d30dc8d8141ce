"""HTTP requests and responses on an HBONE connection, beside its byte-stream tunnels.

A request stream is a StreamTransport like a tunnel's; its protocol is an exchange,
which holds what arrived (the body, then the trailers) and sends the other half.

Client, on a connection from dial() (the pool's connections carry its tunnels):

    async with send_request(connection, "POST", "/orders", authority="shop:8080",
                            headers=[("content-type", "application/json")]) as exchange:
        await exchange.write(b'{"item": 7}')
        await exchange.end()                      # or end(trailers=[...])
        response = await exchange.response()      # the final one (1xx: exchange.informational)
        async for chunk in exchange: ...          # the body
        exchange.trailers                         # once the body has ended

Leaving the block (or close()) releases the stream, resetting it if the exchange is
unfinished; request() does a whole exchange in one call.

Server, as HboneServer(..., request_handler=handle), or on a connection of one's own
HboneConnection(on_request=request_dispatcher(handle)):

    async def handle(exchange: ServerExchange):
        body = await exchange.read_all()
        exchange.respond(200, [("content-type", "text/plain")])
        await exchange.write(b"hello")
        await exchange.end(trailers=[("grpc-status", "0")])

Flow control is backpressure both ways: a received body's window is given back as
the application takes each chunk (read() or the iterator), never before, so a slow
reader stalls its sender instead of filling memory; write() returns once its data is
within the stream's window. Content-length, HEAD, 204 and 304 are held to by the core:
sending more or less than declared raises UsageError.

Errors: a stream reset before the exchange completed raises StreamResetError from the
calls that needed what is lost (what arrived before stays readable); the loss of
the connection raises ConnectionResetError, as for tunnels.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from meshcore._core import events as ev
from meshcore.aio.datapath import StreamTransport
from meshcore.errors import ErrorCode, StreamClosedError, StreamResetError, UsageError, error_code_name

log = logging.getLogger("meshcore.http")

READ_ALL_LIMIT = 16 * 1024 * 1024
MAX_INFORMATIONAL = 16          # 1xx responses kept per request; a peer sending more is cut off


@dataclass(frozen=True, slots=True)
class Response:
    """A response's header section: status and regular fields."""
    status: int
    headers: list

    def header(self, name: bytes | str) -> bytes | None:
        return _header(self.headers, name)


def _header(headers, name) -> bytes | None:
    if isinstance(name, str):
        name = name.encode("latin-1")
    return next((v for n, v in headers if n == name), None)


class _Exchange(asyncio.Protocol):
    """One request stream's two halves (see the module docstring)."""

    def __init__(self, connection, stream_id: int):
        self.connection = connection
        self.stream_id = stream_id
        self.transport: StreamTransport | None = None
        self.trailers: list | None = None     # received trailers once the body has ended ([]: none)
        self._chunks: deque = deque()         # delivered (their window given back), not yet read
        self._end_received = False            # END_STREAM arrived
        self._ended = False                   # ... and all that came before it was delivered
        self._received_trailers: list | None = None
        self._recv_error: BaseException | None = None
        self._send_error: BaseException | None = None
        self._local_ended = False
        self._draining = False
        self._reader: asyncio.Future | None = None
        self._drained: asyncio.Future | None = None
        # called with the error when the peer resets the stream or the connection is lost
        # before the exchange completed: a proxy resets the stream it relays to at once,
        # not when it next reads or writes
        self.on_reset: Callable[[BaseException], None] | None = None

    # ---------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        # write() waits until what it wrote is within the windows: nothing piles up here
        transport.set_write_buffer_limits(high=0)
        # reading runs only while a reader waits: each chunk's window is given back when
        # the application takes it
        transport.pause_reading()

    def data_received(self, data) -> None:
        if not data:
            return                      # b"" is read()'s end of the body, never a chunk
        if type(data) is not bytes:
            data = bytes(data)          # a view into the connection's shared read buffer
        self._chunks.append(data)
        if not self._draining:
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        if self._end_received:          # else a reset posing as the end: _on_reset has it
            self._ended = True
            self.trailers = self._received_trailers or []
        self._wake_reader()
        return True                     # our half ends when end() says so

    def connection_lost(self, exc) -> None:
        error = None
        if not self._ended and self._recv_error is None:
            error = self._recv_error = exc or self._reset_error(
                ErrorCode.CANCEL, "the stream closed before the message ended")
        if not self._local_ended and self._send_error is None:
            error = self._send_error = exc or self._reset_error(ErrorCode.CANCEL, "the stream closed")
        if error is not None:
            self._lost(error, by_us=False)
            self._notify_reset(error)
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self.connection.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # ------------------------------------------------ from the connection's events

    def stream_event(self, e) -> None:
        kind = type(e)
        if kind is ev.TrailersReceived:
            self._received_trailers = e.headers
        elif kind is ev.StreamEnded:
            self._end_received = True
        elif kind is ev.StreamReset:
            self._on_reset(e)
        else:
            self._header_section(e)

    def _header_section(self, e) -> None:
        pass

    def _on_reset(self, e) -> None:
        error = StreamResetError(
            e.reason if not e.remote else
            f"peer reset stream {self.stream_id} with {error_code_name(e.error_code)}",
            e.error_code, self.stream_id, e.remote)
        if self._send_error is None and not self._local_ended:
            self._send_error = error
        if self._end_received:
            # the message was complete before the reset, which only stops our half (a
            # server's NO_ERROR after its full response, RFC 9113 8.1): what waits unread
            # in the stream is kept, not dropped with it
            self._draining = True
            try:
                self.transport.resume_reading()
            finally:
                self._draining = False
        elif self._recv_error is None:
            self._recv_error = error
        self._lost(error, by_us=False)
        if not (self._end_received and self._local_ended):
            self._notify_reset(error)
        self._wake_reader()
        self._wake_writer()

    def _lost(self, error, by_us: bool) -> None:
        pass

    def _notify_reset(self, error: BaseException) -> None:
        on_reset, self.on_reset = self.on_reset, None      # once
        if on_reset is not None:
            on_reset(error)

    def _reset_error(self, code: int, why: str) -> StreamResetError:
        return StreamResetError(f"stream {self.stream_id}: {why}", code, self.stream_id, False)

    # -------------------------------------------------------------------- reading

    async def read(self) -> bytes:
        """The body's next chunk, b"" once it has ended (the trailers are then in
        .trailers). Taking a chunk gives its flow-control window back."""
        while True:
            if self._chunks:
                return self._chunks.popleft()
            if self._ended:
                return b""
            if self._recv_error is not None:
                raise self._recv_error
            self._reader = self.connection.loop.create_future()
            self.transport.resume_reading()       # delivers one waiting chunk, or the end
            if not self._chunks and not self._ended and self._recv_error is None:
                await self._reader
            self._reader = None

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read_all(self, limit: int = READ_ALL_LIMIT) -> bytes:
        """The whole body. One larger than `limit` resets the stream (CANCEL) and raises
        StreamResetError."""
        parts, size = [], 0
        async for chunk in self:
            size += len(chunk)
            if size > limit:
                self.reset(ErrorCode.CANCEL)
                raise self._reset_error(ErrorCode.CANCEL, f"body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    @property
    def body_ended(self) -> bool:
        """The whole body (and any trailers) has been read."""
        return self._ended and not self._chunks

    # -------------------------------------------------------------------- sending

    async def write(self, data) -> None:
        """Send content; returns once it is within the stream's flow-control window.
        More than a declared content-length allows raises UsageError."""
        await self._writable()
        if self._local_ended:
            raise StreamClosedError(f"stream {self.stream_id} has already ended its message", self.stream_id)
        if not data:
            return
        left = self.connection.h2.declared_content_left(self.stream_id)
        if 0 <= left < len(data):
            raise UsageError(f"{len(data)} bytes exceed what stream {self.stream_id} declared: "
                             f"{left} bytes of content left (content-length; none after HEAD, 204, 304)")
        self.transport.write(data)
        await self._writable()

    async def end(self, trailers: Iterable | None = None) -> None:
        """End what we send: END_STREAM after the content written, or a trailer section."""
        await self._writable()
        if self._local_ended:
            raise StreamClosedError(f"stream {self.stream_id} has already ended its message", self.stream_id)
        if trailers is None:
            self.connection.h2.end_stream(self.stream_id)
        else:
            self.connection.h2.send_trailers(self.stream_id, trailers)
        self._local_ended = True
        self.transport.write_eof()                # END_STREAM is out: the transport's half is done
        self.connection.output_queued()

    def reset(self, error_code: int = ErrorCode.CANCEL) -> None:
        """Abandon the exchange: RST_STREAM (CANCEL by default)."""
        error = self._reset_error(error_code, f"reset by us with {error_code_name(error_code)}")
        if self._recv_error is None and not self._ended:
            self._recv_error = error
        if self._send_error is None and not self._local_ended:
            self._send_error = error
        self._lost(error, by_us=True)
        self.transport.abort(error_code)
        self._wake_reader()
        self._wake_writer()

    def close(self) -> None:
        """Release the stream: an exchange left incomplete either way is reset (CANCEL);
        body chunks not read give their window back."""
        if self.transport is None:
            return
        if self._send_error is None and self._recv_error is None and not (
                self._local_ended and self._end_received):
            self.reset(ErrorCode.CANCEL)
        else:
            self.transport.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    async def _writable(self) -> None:
        while self._drained is not None and self._send_error is None:
            await asyncio.shield(self._drained)   # one writer giving up leaves it for the next
        if self._send_error is not None:
            raise self._send_error
        if self.transport.is_closing() and not self._local_ended:
            # the connection is gone and the stream's connection_lost() is still to run:
            # a write now would vanish without a word
            raise ConnectionResetError(f"stream {self.stream_id} was lost with its connection")

    # ------------------------------------------------------------------- internal

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_writer(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _send_headers_check(self) -> None:
        if self._send_error is not None:
            raise self._send_error


class ClientExchange(_Exchange):
    """The client's side of one request: send its content, then read the response."""

    def __init__(self, connection, stream_id: int):
        super().__init__(connection, stream_id)
        self.informational: list[Response] = []      # 1xx responses, in order
        self.on_informational: Callable[[Response], None] | None = None
        self._response: asyncio.Future = connection.loop.create_future()

    def _header_section(self, e) -> None:
        if type(e) is ev.InformationalResponseReceived:
            if len(self.informational) >= MAX_INFORMATIONAL:
                # each one is kept for the application: without a bound, a peer could
                # grow the list for as long as it likes
                self.reset(ErrorCode.ENHANCE_YOUR_CALM)
                return
            response = Response(e.status, e.headers)
            self.informational.append(response)
            if self.on_informational is not None:
                self.on_informational(response)
        elif type(e) is ev.ResponseReceived and not self._response.done():
            self._response.set_result(Response(e.status, e.headers))

    def _lost(self, error, by_us: bool) -> None:
        if not self._response.done():
            self._response.set_exception(error)
            self._response.exception()              # whoever awaits it sees it; no "never retrieved"

    async def response(self) -> Response:
        """The final response's header section (after any 1xx)."""
        return await asyncio.shield(self._response)


class ServerExchange(_Exchange):
    """The server's side of one request: read it, then answer it."""

    def __init__(self, connection, event):
        super().__init__(connection, event.stream_id)
        self.method: str = event.method
        self.scheme: str = event.scheme
        self.authority: str = event.authority
        self.path: str = event.path
        self.headers: list = event.headers
        self.responded = False            # the final response's header section went out
        self.task: asyncio.Task | None = None
        self.started = False              # serve() runs the handler: cancelling it now runs its cleanup

    def header(self, name: bytes | str) -> bytes | None:
        return _header(self.headers, name)

    @property
    def peer_identity(self):
        return self.connection.peer_identity

    @property
    def peer_address(self):
        return self.transport.get_extra_info("peername")

    @property
    def local_address(self):
        return self.transport.get_extra_info("sockname")

    def inform(self, status: int, headers: Iterable = ()) -> None:
        """An informational (1xx) response; any number may precede the final one."""
        self._send_headers_check()
        self.connection.h2.send_informational(self.stream_id, status, headers)
        self.connection.output_queued()

    def respond(self, status: int, headers: Iterable = (), end: bool = False) -> None:
        """The final response's header section; `end`: it has no content (and no trailers)."""
        self._send_headers_check()
        self.connection.h2.send_response(self.stream_id, status, headers, end)
        self.responded = True
        if end:
            self._local_ended = True
            self.transport.write_eof()
        self.connection.output_queued()

    async def write(self, data) -> None:
        if not self.responded:
            raise UsageError(f"stream {self.stream_id} has no final response yet: content comes after it")
        await super().write(data)

    async def end(self, trailers: Iterable | None = None) -> None:
        if not self.responded:
            raise UsageError(f"stream {self.stream_id} has no final response yet: respond() first")
        await super().end(trailers)

    @property
    def stream_error(self) -> BaseException | None:
        """Why the stream ended before the exchange completed (a StreamResetError: the
        client's reset, or the HTTP/2 core's for a malformed request; or the connection's
        loss), None while it stands."""
        return self._recv_error or self._send_error

    def _lost(self, error, by_us: bool) -> None:
        # the client gave up before its answer: whatever the handler waits on is
        # cancelled. A handler not yet started is left to start: cancelled before its
        # first step it would run none of its own cleanup or reporting, and it finds the
        # stream gone at its first read or answer (stream_error says why)
        if not by_us and not self.responded and self.started and self.task is not None \
                and not self.task.done():
            self.task.cancel()

    def finish(self, handler_failed: bool = False) -> None:
        """After the handler: a request left unanswered gets 500, a response left
        unended is reset (its content may be cut short), a request body still arriving
        after a complete response is stopped with NO_ERROR (RFC 9113 8.1), and unread
        body chunks give their window back."""
        if self.transport is None:
            return
        if self._send_error is None:
            if not self.responded:
                if not handler_failed:        # else its failure was logged already
                    log.warning("request %s %s on stream %s got no response: 500", self.method, self.path,
                                self.stream_id)
                try:
                    self.respond(500, end=True)
                except UsageError:
                    self.reset(ErrorCode.INTERNAL_ERROR)
                    return
            if not self._local_ended:
                self.reset(ErrorCode.INTERNAL_ERROR)
                return
        if not self._end_received and self._recv_error is None:
            self.transport.abort(ErrorCode.NO_ERROR)
        else:
            self.transport.close()


# ------------------------------------------------------------------- entry points

def send_request(connection, method: str, path: str, *, authority: str | None, scheme: str = "https",
                 headers: Iterable = (), end_stream: bool = False) -> ClientExchange:
    """Client: send a request's header section on `connection` (an HboneConnection);
    `end_stream` when it has no content. Raises UsageError for a malformed request and
    TooManyStreamsError / StreamClosedError when the connection cannot take a stream.

    HbonePool counts the streams it hands out on its connections: requests go on a
    connection of one's own (dial()), not beside the pool's tunnels."""
    if connection.closed.done() or connection.transport is None:
        raise StreamClosedError("the connection is closed; open a new one")
    sid = connection.h2.send_request(method, scheme, authority, path, headers, end_stream)
    exchange = ClientExchange(connection, sid)
    stream = StreamTransport(connection, sid, connection._extra())
    connection.streams[sid] = stream
    stream.set_protocol(exchange)
    exchange.connection_made(stream)
    if end_stream:
        exchange._local_ended = True
        stream.write_eof()
    connection.output_queued()
    return exchange


async def request(connection, method: str, path: str, *, authority: str | None, scheme: str = "https",
                  headers: Iterable = (), body: bytes = b"", trailers: Iterable | None = None,
                  limit: int = READ_ALL_LIMIT) -> tuple[Response, bytes, list]:
    """A whole exchange: (response, body, trailers)."""
    exchange = send_request(connection, method, path, authority=authority, scheme=scheme,
                            headers=headers, end_stream=not body and trailers is None)
    try:
        if body or trailers is not None:
            await exchange.write(body)
            await exchange.end(trailers)
        response = await exchange.response()
        content = await exchange.read_all(limit)
        return response, content, exchange.trailers
    except BaseException:
        if not exchange.body_ended:
            exchange.reset()
        raise


def accept_request(connection, event) -> ServerExchange:
    """Server: take over the stream of a RequestReceived. Call it from the connection's
    on_request, before it returns: what follows the request in the same read (its body,
    trailers, end) then reaches the exchange."""
    stream = connection.streams.get(event.stream_id)
    if stream is None:
        raise StreamClosedError(f"stream {event.stream_id} ended before its request was taken", event.stream_id)
    exchange = ServerExchange(connection, event)
    stream.set_protocol(exchange)
    exchange.connection_made(stream)
    return exchange


Handler = Callable[[ServerExchange], Awaitable[None]]


async def serve(exchange: ServerExchange, handler: Handler) -> None:
    """Run `handler` for one request, then finish() the exchange. A handler that
    raises answers 500 if it had not answered yet, else its stream is reset."""
    failed = False
    exchange.started = True
    try:
        await handler(exchange)
    except (StreamResetError, ConnectionResetError) as exc:
        log.debug("request %s %s on stream %s ended early: %s", exchange.method, exchange.path,
                  exchange.stream_id, exc)
    except asyncio.CancelledError:
        if exchange._send_error is None:
            exchange.reset(ErrorCode.CANCEL)
        raise
    except Exception:
        failed = True
        log.exception("request handler failed for %s %s", exchange.method, exchange.path)
        if exchange.responded and exchange._send_error is None:
            exchange.reset(ErrorCode.INTERNAL_ERROR)
    finally:
        exchange.finish(failed)


def request_dispatcher(handler: Handler, tunnels: Callable | None = None) -> Callable:
    """An HboneConnection on_request that answers requests with `handler` (one task
    each, owned by the connection: a reset before the answer or the connection's loss
    cancels it) and passes CONNECTs to `tunnels(connection, event)` (501 without)."""
    def on_request(connection, event) -> None:
        if type(event) is not ev.RequestReceived:
            if tunnels is not None:
                tunnels(connection, event)
            else:
                connection.refuse_stream(event.stream_id, 501)
            return
        exchange = accept_request(connection, event)
        exchange.task = connection.loop.create_task(serve(exchange, handler))
        connection.own_request(event.stream_id, exchange.task)
    return on_request
