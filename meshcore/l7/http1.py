"""HTTP/1.1 for `meshcore waypoint`, over the asyncio (StreamReader, StreamWriter) pair of
a tunnel: the server side a downstream client speaks to, the client side that reaches
upstream endpoints.

llhttp (through httptools) does all the parsing; this module adds what it leaves to its
caller: limits and timeouts on the request head, the refusals RFC 9112 asks of a server
(no Host, Transfer-Encoding in HTTP/1.0, codings meshcore cannot forward), framing of
what meshcore writes, and backpressure. Bodies stream: nothing is read from the socket
while the consumer has not taken the chunk already read, so a 64 MiB upload costs one
read buffer, not 64 MiB.

A request read ahead on the socket (pipelining) is tokenized with the read it came in,
but it is handed out, and may be refused, only once the request before it was answered
and its body consumed or drained: responses go out in order.
"""
from __future__ import annotations

import asyncio
import collections
import http
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

import httptools

from meshcore.errors import HttpError, UsageError

__all__ = ["ALLOWED_UPGRADES", "Http1ClientConnection", "Http1Request", "Http1Response", "Http1ServerConnection",
           "strip_hop_by_hop", "upgrade_allowed"]

READ_SIZE = 64 * 1024
Headers = list[tuple[str, str]]
Body = bytes | bytearray | memoryview | AsyncIterable[bytes] | None
Trailers = Headers | Callable[[], Headers] | None

# http2-settings belongs to an h2c upgrade (RFC 9113 3.2.1's predecessor): never past this hop
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                         "upgrade", "http2-settings"})
# as Istio configures Envoy: WebSocket is the one protocol a request may switch to. Any
# other (h2c above all) would turn the rest of the connection into bytes no policy sees
ALLOWED_UPGRADES = frozenset({"websocket"})
DRAIN_LIMIT = 1024 * 1024     # unread request body discarded to keep a connection; more closes it (as Envoy)


def upgrade_allowed(value: str | None) -> bool:
    """Whether an Upgrade header asks only for a protocol meshcore forwards."""
    if not value:
        return False
    tokens = {t.strip().lower() for t in value.split(",") if t.strip()}
    return bool(tokens) and tokens <= ALLOWED_UPGRADES
_NO_BODY_STATUS = frozenset({204, 304})


def strip_hop_by_hop(headers: Iterable[tuple[str, str]], *, upgrade: bool = False) -> Headers:
    """The end-to-end headers of a message a proxy forwards.

    ``te: trailers`` stays: it tells the next hop the client takes trailers, which gRPC
    over HTTP/1.1 bridges rely on. ``upgrade``: the message is an upgrade being
    forwarded, so Upgrade stays and ``connection: upgrade`` is added back, the one
    Connection token the next hop needs to see; only for an upgrade in ALLOWED_UPGRADES,
    any other is dropped with the Connection tokens naming it.
    """
    headers = list(headers)
    named = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    upgrade = upgrade and all(upgrade_allowed(v) for n, v in headers if n.lower() == "upgrade")
    if upgrade:
        named.discard("upgrade")
    out: Headers = []
    te_trailers = False
    has_upgrade = False
    for name, value in headers:
        lname = name.lower()
        if lname == "te":
            te_trailers = te_trailers or any(t.strip().lower() == "trailers" for t in value.split(","))
            continue
        if lname == "upgrade" and upgrade:
            has_upgrade = True
            out.append((name, value))
            continue
        if lname in _HOP_BY_HOP or lname in named:
            continue
        out.append((name, value))
    if te_trailers:
        out.append(("te", "trailers"))
    if has_upgrade:
        out.append(("connection", "upgrade"))
    return out


class WatchedReader(asyncio.StreamReader):
    """A StreamReader that tells `on_end` when its stream ends or breaks, so a server
    can learn that its client left without a read of its own pending."""
    on_end = None

    def feed_eof(self) -> None:
        super().feed_eof()
        if self.on_end is not None:
            self.on_end()

    def set_exception(self, exc) -> None:
        super().set_exception(exc)
        if self.on_end is not None:
            self.on_end()


class _Message:
    """One message as llhttp reports it, filled by the parser callbacks."""

    __slots__ = ("url", "status", "reason", "headers", "trailers", "head_done", "complete", "chunks", "version",
                 "keep_alive", "method", "upgrade", "head_bytes", "no_body")

    def __init__(self):
        self.url = b""
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.version = ""
        self.keep_alive = False
        self.method = ""
        self.upgrade = False
        self.head_bytes = 0
        self.no_body = False


class _StopHead(Exception):
    """Raised from a callback to stop llhttp after a HEAD response's head, whose
    Content-Length describes a body that is not sent."""


class _Reader:
    """The read half shared by both sides: one llhttp parser fed from the StreamReader,
    one read at a time, and only when a consumer is waiting for more."""

    _parser_type: type = httptools.HttpRequestParser
    _error_status = 400

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_header_bytes: int):
        self._reader = reader
        self._writer = writer
        self.max_header_bytes = max_header_bytes
        self._messages: collections.deque[_Message] = collections.deque()
        self._error: HttpError | None = None
        self._cb_error: HttpError | None = None
        self._eof = False
        self._leftover = b""
        self._upgraded = False
        self._head_feed = 0
        self._closed = False
        self._stop_head = False
        self._broken = False
        self._body_timeout: float | None = None
        self._received = 0
        self._new_parser()

    def _new_parser(self) -> None:
        self._parser = self._parser_type(self)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self._messages.append(_Message())

    def on_url(self, url: bytes) -> None:
        msg = self._messages[-1]
        msg.url += url
        self._count_head(msg, len(url))

    def on_status(self, reason: bytes) -> None:
        msg = self._messages[-1]
        msg.reason += reason
        self._count_head(msg, len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self._messages[-1]
        self._count_head(msg, len(name) + len(value) + 4)
        (msg.trailers if msg.head_done else msg.headers).append((name, value))

    def _count_head(self, msg: _Message, n: int) -> None:
        msg.head_bytes += n
        if msg.head_bytes > self.max_header_bytes:
            what = "trailer section" if msg.head_done else "header section"
            self._cb_error = HttpError(431, f"{what} over {self.max_header_bytes} bytes")
            raise self._cb_error

    def on_headers_complete(self) -> None:
        msg = self._messages[-1]
        msg.head_done = True
        self._head_feed = 0
        msg.version = self._parser.get_http_version()
        msg.keep_alive = self._parser.should_keep_alive()
        msg.upgrade = self._parser.should_upgrade()
        self._on_head(msg)

    def _on_head(self, msg: _Message) -> None:
        pass

    def on_body(self, body: bytes) -> None:
        if body:
            self._messages[-1].chunks.append(body)

    def on_message_complete(self) -> None:
        self._messages[-1].complete = True

    # reading
    async def _fill(self, timeout: float | None) -> None:
        """One read fed to the parser; sets _eof at the end of the stream."""
        if self._eof:
            return
        try:
            if timeout is None:
                data = await self._reader.read(READ_SIZE)
            else:
                async with asyncio.timeout(timeout):
                    data = await self._reader.read(READ_SIZE)
        except TimeoutError:
            raise
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self._eof = True
            return
        self._received += len(data)
        if self._upgraded or self._error is not None:
            # the bytes after a 101 belong to whoever takes the connection over
            self._leftover += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded = True
            self._leftover = bytes(data[exc.args[0]:])
        except httptools.HttpParserError as exc:
            self._error = self._cb_error or self._translate(exc)
            return
        msg = self._messages[-1] if self._messages else None
        if msg is None or msg.complete or not msg.head_done:
            # llhttp keeps an unfinished header line in memory: this bounds it even when
            # no callback fires (one read of slack, as the feed that began the head may
            # have held the end of the message before it)
            self._head_feed += len(data)
            if self._head_feed > self.max_header_bytes + READ_SIZE:
                self._error = HttpError(431, f"header section over {self.max_header_bytes} bytes")

    def _translate(self, exc: Exception) -> HttpError:
        return HttpError(self._error_status, f"malformed message: {exc}")

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()

    def _take_over(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        leftover, self._leftover = self._leftover, b""
        self._closed = True
        return self._reader, self._writer, leftover

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()


class _Incoming:
    """What both a request and a response offer: head fields, a streamed body, trailers."""

    def __init__(self, conn: _Reader, msg: _Message):
        self._conn = conn
        self._msg = msg
        self.version: str = msg.version
        self.headers: Headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in msg.headers]
        self.keep_alive: bool = msg.keep_alive

    def header(self, name: str) -> str | None:
        """The first value of a header (names compare case-insensitively)."""
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)

    @property
    def trailers(self) -> Headers:
        """The trailer section of a chunked body; complete once the body has ended."""
        return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in self._msg.trailers]

    @property
    def body_complete(self) -> bool:
        return self._msg.complete and not self._msg.chunks

    async def _before_body(self) -> None:
        pass

    def _body_ended_early(self) -> HttpError:
        raise NotImplementedError

    async def body(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as read; the next read happens only once the consumer
        asks for the next chunk."""
        await self._before_body()
        conn, msg = self._conn, self._msg
        while True:
            if msg.chunks:
                yield msg.chunks.popleft()
            elif msg.complete:
                return
            elif conn._error is not None:
                await self._body_failed(conn._error)
            elif conn._eof or conn._upgraded:
                if self._close_delimited():
                    msg.complete = True
                    return
                await self._body_failed(self._body_ended_early())
            else:
                try:
                    await conn._fill(conn._body_timeout)
                except TimeoutError:
                    await self._body_failed(HttpError(408, "no body bytes within the idle timeout"))

    async def _body_failed(self, err: HttpError):
        self._conn._broken = True
        raise err

    def _close_delimited(self) -> bool:
        return False

    async def drain(self) -> None:
        async for _ in self.body():
            pass


class Http1Request(_Incoming):
    """A request read by Http1ServerConnection.next_request()."""

    def __init__(self, conn: Http1ServerConnection, msg: _Message):
        super().__init__(conn, msg)
        self.method: str = msg.method
        self.target: str = msg.url.decode("latin-1")
        self.host: str | None = self.header("host")
        expect = (self.header("expect") or "").lower()
        self.expect_continue: bool = expect == "100-continue" and self.version == "1.1"
        self.upgrade: str | None = self.header("upgrade") if msg.upgrade else None
        self._continue_sent = False
        self._consumed = 0

    async def body(self) -> AsyncIterator[bytes]:
        async for chunk in super().body():
            self._consumed += len(chunk)
            yield chunk

    async def send_continue(self) -> None:
        """Tells a client waiting on ``Expect: 100-continue`` to send the body; once, and
        only before the final response. Reading the body sends it too."""
        conn = self._conn
        if not self.expect_continue or self._continue_sent or conn._answered or conn._closed:
            return
        self._continue_sent = True
        await conn._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _before_body(self) -> None:
        await self.send_continue()

    def _body_ended_early(self) -> HttpError:
        return HttpError(400, "the client closed the connection before the end of the request body")

    async def _body_failed(self, err: HttpError):
        # refused like a bad head when no response has started; once one has, the
        # connection can only end
        conn = self._conn
        conn._broken = True
        if not conn._answered:
            conn._answered = True
            await conn._refuse(err)
        conn._close()
        raise err

    def __repr__(self) -> str:
        return f"<Http1Request {self.method} {self.target} HTTP/{self.version}>"


class Http1Response(_Incoming):
    """A response read by Http1ClientConnection.request()."""

    def __init__(self, conn: Http1ClientConnection, msg: _Message):
        super().__init__(conn, msg)
        self.status: int = msg.status
        self.reason: str = msg.reason.decode("latin-1")
        self._delimited_by_close = (not msg.no_body and self.header("content-length") is None
                                    and self.header("transfer-encoding") is None)

    def _close_delimited(self) -> bool:
        return self._delimited_by_close and self._conn._eof

    def _body_ended_early(self) -> HttpError:
        return HttpError(502, "the upstream closed the connection before the end of the response body")

    def __repr__(self) -> str:
        return f"<Http1Response {self.status} {self.reason}>"


def _check_field(s: str, what: str) -> bytes:
    if "\r" in s or "\n" in s or "\0" in s:
        raise UsageError(f"{what} {s!r} holds CR, LF or NUL")
    return s.encode("latin-1")


def _head(start: str, headers: Iterable[tuple[str, str]]) -> bytes:
    if not isinstance(headers, list):
        headers = list(headers)
    lines = [start]
    for name, value in headers:
        if not name or ":" in name or " " in name:
            raise UsageError(f"header name {name!r} is not a token")
        lines.append(f"{name}: {value}")
    text = "\r\n".join(lines) + "\r\n\r\n"
    # one look at the whole head: only the line ends meshcore wrote may be CR or LF
    ends = len(lines) + 1
    if text.count("\r") != ends or text.count("\n") != ends or "\0" in text:
        _check_field(start, "start line")
        for name, value in headers:
            _check_field(name, "header name")
            _check_field(value, "header value")
    return text.encode("latin-1")


_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


async def _write_body(conn: _Reader, body: Body, chunked: bool, length: int | None,
                      trailers: Trailers) -> None:
    """Writes a body framed as announced: raw when its length was announced or the close
    ends it, chunked otherwise. A body that does not match its announced length breaks
    the connection rather than desynchronizing the peer."""
    if body is None:
        return
    if isinstance(body, (bytes, bytearray, memoryview)):
        chunks: AsyncIterable[bytes] | None = None
        if body:
            if chunked:
                await conn._write(b"%x\r\n%s\r\n" % (len(body), body))
            else:
                await conn._write(bytes(body))
    else:
        chunks = body
    sent = 0
    if chunks is not None:
        async for chunk in chunks:
            if not chunk:
                continue
            sent += len(chunk)
            if length is not None and sent > length:
                conn._broken = True
                raise UsageError(f"body longer than its content-length {length}")
            if chunked:
                await conn._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                await conn._write(bytes(chunk))
        if length is not None and sent != length:
            conn._broken = True
            raise UsageError(f"body of {sent} bytes for a content-length of {length}")
    if chunked:
        fields = trailers() if callable(trailers) else (trailers or [])
        tail = bytearray(b"0\r\n")
        for name, value in fields:
            tail += _check_field(name, "trailer name") + b": " + _check_field(value, "trailer value") + b"\r\n"
        tail += b"\r\n"
        await conn._write(bytes(tail))


def _announced_length(headers: Headers) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                n = int(value.strip())
            except ValueError:
                raise UsageError(f"content-length {value!r} is not a number") from None
            if n < 0:
                raise UsageError(f"content-length {value!r} is negative")
            return n
    return None


class Http1ServerConnection(_Reader):
    """The server side of one downstream connection.

    ``await next_request()`` gives the next request, or None once the client closed (or
    stayed idle past ``idle_timeout``) between requests. A request that meshcore refuses
    is answered here with its status (400, 408, 431, 501, 505), the connection is closed
    and the HttpError raised.
    """

    _parser_type = httptools.HttpRequestParser
    LINGER_SECONDS = 2.0
    LINGER_BYTES = 1024 * 1024

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 max_header_bytes: int = 64 * 1024, header_timeout: float = 10.0, idle_timeout: float = 60.0,
                 write_timeout: float | None = None, connect_status: int = 501):
        super().__init__(reader, writer, max_header_bytes)
        self.header_timeout = header_timeout
        self.connect_status = connect_status      # what a CONNECT request is answered
        # a client that stops reading would otherwise hold a response (and its upstream) forever
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self._body_timeout = idle_timeout
        self._current: Http1Request | None = None
        self._answered = False
        self.response_sent = False                # the response went out whole (lingering may follow)
        self._closing = False
        self._broken = False
        self._switched = False
        self._preface_checked = False

    def _on_head(self, msg: _Message) -> None:
        msg.method = self._parser.get_method().decode("ascii")

    def _translate(self, exc: Exception) -> HttpError:
        text = str(exc)
        if "PRI" in text or "Invalid HTTP version" in text:
            return HttpError(505, f"HTTP version not supported: {text}")
        if "Request has invalid `Transfer-Encoding`" in text:
            return HttpError(501, "a transfer coding other than chunked ends the request's codings")
        return HttpError(400, f"malformed request: {text}")

    def _feed(self, data: bytes) -> None:
        if not self._preface_checked:
            self._preface_checked = True
            if data.startswith(b"PRI * HTTP/2"):
                self._error = HttpError(505, "HTTP/2 prior knowledge on an HTTP/1.1 listener")
                return
        super()._feed(data)

    @property
    def closed(self) -> bool:
        return self._closed

    async def next_request(self) -> Http1Request | None:
        if self._closed:
            return None
        prev = self._current
        if prev is not None:
            if not self._answered:
                raise UsageError("the previous request has not been answered")
            if self._closing or self._broken or self._switched:
                self._close()
                return None
            if not prev._msg.complete or prev._msg.chunks:
                try:
                    if not await self._drain_bounded(prev):
                        # keeping the connection is not worth reading that much: it ends
                        try:
                            await self._linger()
                        except (ConnectionError, OSError):
                            pass
                        self._close()
                        return None
                except HttpError:
                    self._close()
                    return None
            self._messages.popleft()
            self._current = None
        loop = asyncio.get_running_loop()
        deadline = None
        while True:
            msg = self._messages[0] if self._messages else None
            if msg is not None and msg.head_done:
                break
            if self._error is not None:
                await self._refuse(self._error)
            if self._eof or self._upgraded:
                if msg is None:
                    self._close()
                    return None
                await self._refuse(HttpError(400, "the client closed the connection inside a request head"))
            if msg is not None and deadline is None:
                deadline = loop.time() + self.header_timeout
            try:
                await self._fill(self.idle_timeout if deadline is None else max(0.0, deadline - loop.time()))
            except TimeoutError:
                if msg is None and not self._messages:
                    self._close()
                    return None
                await self._refuse(HttpError(408, f"request head not complete within {self.header_timeout} s"))
        problem = self._check_head(msg)
        if problem is not None:
            await self._refuse(problem)
        self._current = Http1Request(self, msg)
        self._answered = False
        self.response_sent = False
        return self._current

    async def _drain_bounded(self, req: Http1Request) -> bool:
        left = req.header("content-length")
        if left is not None and left.strip().isdigit() and int(left) - req._consumed > DRAIN_LIMIT:
            return False
        discarded = 0
        async for chunk in req.body():
            discarded += len(chunk)
            if discarded > DRAIN_LIMIT:
                return False
        return True

    def client_ended(self) -> bool:
        """The client ended its side (or the connection broke) with nothing more sent
        after its last request."""
        reader = self._reader
        return self._eof or reader.exception() is not None or (
            reader._eof and not reader._buffer and not self._leftover)                  # noqa: SLF001

    def watch_end(self, callback) -> None:
        """`callback()` once the client ends its side or the connection breaks, unless
        it sent more first (pipelined requests are not a client leaving); None stops
        watching. Called at once if that already happened. The connection's reader must
        be a meshcore.l7.http1.WatchedReader."""
        reader = self._reader
        if callback is None:
            reader.on_end = None
            return
        if self.client_ended():
            callback()
            return
        reader.on_end = lambda: callback() if self.client_ended() else None

    async def client_gone(self) -> bool:
        """Reads ahead once: True when the client closed its side (or the connection
        broke). Whatever else it sent is kept, parsed as the requests that follow (or the
        bytes after an upgrade)."""
        if not self._eof and not self._closed:
            await self._fill(None)
        return self._eof

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        if self.write_timeout is None:
            await self._writer.drain()
        else:
            async with asyncio.timeout(self.write_timeout):
                await self._writer.drain()

    def _check_head(self, msg: _Message) -> HttpError | None:
        if msg.version not in ("1.0", "1.1"):
            return HttpError(505, f"HTTP/{msg.version} is not supported")
        names = [n.lower() for n, _ in msg.headers]
        hosts = names.count(b"host")
        if hosts > 1:
            return HttpError(400, "more than one Host header")
        if hosts == 0 and msg.version == "1.1":
            return HttpError(400, "an HTTP/1.1 request without Host")
        te = [v for n, v in msg.headers if n.lower() == b"transfer-encoding"]
        if te and msg.version == "1.0":
            return HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if te and b",".join(te).strip().lower() != b"chunked":
            # meshcore re-frames what it forwards, so any other coding would be lost
            return HttpError(501, f"transfer coding {b','.join(te).decode('latin-1')!r} is not supported")
        if msg.method == "CONNECT":
            return HttpError(self.connect_status, "CONNECT is not proxied over HTTP/1.1")
        if msg.upgrade and (te or any(n == b"content-length" and v.strip() != b"0" for n, v in
                                      ((n.lower(), v) for n, v in msg.headers))):
            # llhttp hands everything after an upgrade request's head over as raw bytes,
            # body included: were the upgrade declined, that body would read as requests
            return HttpError(400, "an upgrade request with a body")
        return None

    async def _refuse(self, err: HttpError):
        self._error = err
        if not self._closed:
            body = f"{err.reason}\n".encode("latin-1", "replace")
            phrase = _reason(err.status)
            try:
                await self._write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                                  b"connection: close\r\n\r\n%s" % (err.status, phrase, len(body), body))
                await self._linger()
            except (ConnectionError, OSError):
                pass
            self._close()
        raise err

    async def _linger(self) -> None:
        # closing with unread bytes in the socket sends a reset, which can destroy the
        # refusal before the client reads it: half-close, then discard what still comes
        # for a moment (bounded in time and bytes)
        if self._writer.can_write_eof():
            self._writer.write_eof()
        discarded = 0
        loop = asyncio.get_running_loop()
        until = loop.time() + self.LINGER_SECONDS
        while not self._eof and discarded < self.LINGER_BYTES and loop.time() < until:
            try:
                async with asyncio.timeout(max(0.0, until - loop.time())):
                    data = await self._reader.read(READ_SIZE)
            except TimeoutError:
                return
            if not data:
                return
            discarded += len(data)

    async def respond(self, status: int, headers: Iterable[tuple[str, str]], body: Body = b"", *,
                      close: bool = False, trailers: Trailers = None, reason: str | None = None) -> None:
        """Answers the current request. Framing is meshcore's: content-length for bytes (or
        as given in ``headers`` for a stream), chunked for a stream of unknown length to
        an HTTP/1.1 client, the close otherwise. A 101 switches protocols: take_over()
        then gives the connection back."""
        req = self._current
        if req is None or self._answered:
            raise UsageError("no request is waiting for a response")
        if self._closed:
            raise UsageError("the connection is closed")
        headers = list(headers)
        interim = 100 <= status < 200 and status != 101
        if status == 101 and req.upgrade is None:
            raise UsageError("101 Switching Protocols answers only an upgrade request")
        given_length = _announced_length(headers)
        out = [(n, v) for n, v in headers if n.lower() not in _FRAMING]
        no_body = req.method == "HEAD" or status < 200 or status in _NO_BODY_STATUS
        length: int | None = None
        chunked = False
        if status == 101:
            upgrade = next((v for n, v in headers if n.lower() == "upgrade"), req.upgrade)
            out = [(n, v) for n, v in out if n.lower() != "upgrade"]
            out += [("connection", "upgrade"), ("upgrade", upgrade)]
        elif not interim:
            if isinstance(body, (bytes, bytearray, memoryview)) or body is None:
                length = len(body) if body else (given_length if req.method == "HEAD" else 0)
            else:
                length = given_length
            if status == 304 or status == 204:
                # 304 may repeat the length of what it validates; 204 never has one
                if status == 304 and given_length is not None:
                    out.append(("content-length", str(given_length)))
            elif length is not None:
                out.append(("content-length", str(length)))
            elif req.method == "HEAD":
                pass
            elif req.version == "1.1":
                chunked = True
                out.append(("transfer-encoding", "chunked"))
            else:
                close = True
            if req.expect_continue and not req._continue_sent and not req.body_complete:
                # the client may or may not send the body it offered: its bytes could
                # not be told apart from a next request, so the connection ends here
                close = True
            if req.upgrade is not None:
                # llhttp took everything after the head as the upgraded protocol's
                close = True
            if close or not req.keep_alive or self._broken:
                self._closing = True
                out.append(("connection", "close"))
            elif req.version == "1.0":
                out.append(("connection", "keep-alive"))
        phrase = reason if reason is not None else _reason(status).decode("latin-1")
        head = _head(f"HTTP/1.1 {status} {phrase}", out)
        if interim:
            await self._write(bytes(head))
            return
        self._answered = True
        try:
            if no_body:
                await self._write(bytes(head))
            else:
                self._writer.write(bytes(head))
                await _write_body(self, body, chunked, length, trailers)
        except BaseException:
            self._broken = True
            self._close()
            raise
        self.response_sent = True
        if status == 101:
            self._switched = True
        elif self._closing:
            # the response said close: half-close and let the client end its side first, as
            # for a refusal (a close under unread bytes resets the connection, and a tunnel
            # closed while its client still sends is cancelled)
            try:
                await self._linger()
            except (ConnectionError, OSError):
                pass
            self._close()

    def take_over(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """After a 101: the raw reader and writer, and the bytes the client sent after its
        request head that were already read. meshcore no longer touches either."""
        if not self._switched:
            raise UsageError("take_over() only after a 101 response")
        return self._take_over()

    def close(self) -> None:
        self._close()


class Http1ClientConnection(_Reader):
    """The client side of one upstream connection: one request at a time."""

    _parser_type = httptools.HttpResponseParser
    _error_status = 502

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 max_header_bytes: int = 64 * 1024, response_timeout: float | None = None,
                 idle_timeout: float | None = None):
        super().__init__(reader, writer, max_header_bytes)
        self.response_timeout = response_timeout
        self._body_timeout = idle_timeout
        self._broken = False
        self._response: Http1Response | None = None
        self._sender: asyncio.Task | None = None
        self._head_only = False
        self._busy = False

    def _on_head(self, msg: _Message) -> None:
        msg.status = self._parser.get_status_code()
        msg.no_body = msg.status < 200 or msg.status in _NO_BODY_STATUS or self._head_only
        if self._head_only and msg.status >= 200:
            self._stop_head = True
            raise _StopHead

    def _feed(self, data: bytes) -> None:
        if not self._head_only:
            super()._feed(data)
            return
        # llhttp cannot be told a response answers HEAD: its head is fed line by line so
        # that where it ends is known, and it is stopped there
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end + 1
            piece = data[start:end]
            start = end
            try:
                super()._feed(piece)
            finally:
                if self._stop_head:
                    self._stop_head = False
                    self._head_only = False
                    self._error = None
                    self._messages[-1].complete = True
                    self._leftover = data[start:]
                    if self._leftover:
                        self._broken = True
            if self._error is not None or self._upgraded or not self._head_only:
                return

    def _translate(self, exc: Exception) -> HttpError:
        return HttpError(502, f"malformed response from upstream: {exc}")

    @property
    def reusable(self) -> bool:
        """Whether another request can go on this connection: the last response allowed
        it, was read to its end, and the request was sent whole."""
        if self._closed or self._broken or self._eof or self._error is not None or self._upgraded:
            return False
        # an idle connection the upstream closed, or one it sent unasked bytes on (which
        # would read as the next response)
        if self._leftover or self._reader.at_eof() or self._reader.exception() is not None \
                or getattr(self._reader, "_buffer", None):
            return False
        if self._sender is not None and (not self._sender.done() or self._sender.cancelled()
                                         or self._sender.exception() is not None):
            return False
        resp = self._response
        if resp is None:
            return True
        return resp.keep_alive and resp.body_complete and len(self._messages) == 1

    async def request(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: Body = None, *,
                      trailers: Trailers = None) -> Http1Response:
        """Sends a request and returns the final response once its head arrived (1xx
        interim responses are skipped, a 101 is returned). The body goes out alongside,
        so an upstream answering while it uploads is read at once."""
        if self._busy:
            raise UsageError("a request is already under way on this connection")
        if not self.reusable:
            raise UsageError("this upstream connection cannot take another request")
        self._busy = True
        try:
            return await self._request(method, target, list(headers), body, trailers)
        finally:
            self._busy = False

    @property
    def nothing_received(self) -> bool:
        """No byte of a response to the last request arrived."""
        return self._received == 0

    async def abandon(self, linger: float = 0.0) -> None:
        """Closes the connection and waits until the request's sender has stopped, so that
        whatever it read the request body from has one reader again. ``linger``: a
        request sent whole is ended as a client that leaves ends it, half-closed and
        given that long to end its side, so the upstream sees a client gone rather than
        a broken connection."""
        sender = self._sender
        if linger > 0 and not self._closed and sender is not None and sender.done() and not sender.cancelled() \
                and sender.exception() is None and self._writer.can_write_eof():
            try:
                self._writer.write_eof()
                async with asyncio.timeout(linger):
                    while await self._reader.read(READ_SIZE):
                        pass
            except (TimeoutError, ConnectionError, OSError):
                pass
        self.close()
        if sender is not None and not sender.done():
            await asyncio.wait({sender})

    async def _request(self, method, target, headers, body, trailers) -> Http1Response:
        self._received = 0
        self._messages.clear()
        self._response = None
        self._new_parser()
        self._head_only = method == "HEAD"
        given_length = _announced_length(headers)
        # Connection stays the caller's (an upgrade needs it); framing is meshcore's
        out = [(n, v) for n, v in headers if n.lower() not in ("content-length", "transfer-encoding")]
        chunked = False
        length: int | None
        if body is None:
            length = 0
            if method in ("POST", "PUT", "PATCH"):
                out.append(("content-length", "0"))
        elif isinstance(body, (bytes, bytearray, memoryview)):
            length = len(body)
            if length or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                out.append(("content-length", str(length)))
        elif given_length is not None:
            length = given_length
            out.append(("content-length", str(length)))
        else:
            length = None
            chunked = True
            out.append(("transfer-encoding", "chunked"))
        head = bytes(_head(f"{method} {target} HTTP/1.1", out))

        if body is None:
            # nothing to stream: the head goes out now, without a task of its own
            self._writer.write(head)
            self._sender = asyncio.get_running_loop().create_future()
            self._sender.set_result(None)
        else:
            async def send():
                self._writer.write(head)
                await _write_body(self, body, chunked, length, trailers)
                await self._writer.drain()

            self._sender = asyncio.ensure_future(send())
            self._sender.add_done_callback(_quiet)
        while True:
            while self._messages and self._messages[0].complete and 100 <= self._messages[0].status < 200 \
                    and self._messages[0].status != 101:
                self._messages.popleft()
            msg = self._messages[0] if self._messages else None
            if msg is not None and msg.head_done and (msg.status >= 200 or msg.status == 101):
                break
            if self._error is not None:
                self._close()
                raise self._error
            if self._eof:
                self._close()
                if self._sender.done() and not self._sender.cancelled() and self._sender.exception() is not None:
                    exc = self._sender.exception()
                    if isinstance(exc, UsageError):
                        raise exc
                raise HttpError(502, "the upstream closed the connection before its response head")
            if self._sender.done() and not self._sender.cancelled() and isinstance(self._sender.exception(),
                                                                                   UsageError):
                self._close()
                raise self._sender.exception()
            try:
                await self._fill(self.response_timeout)
            except TimeoutError:
                self._close()
                raise HttpError(504, "no response head from upstream in time") from None
        self._response = Http1Response(self, msg)
        return self._response

    def take_over(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """After a 101 response: the raw reader and writer, and the bytes the upstream sent
        after the 101's head that were already read."""
        if self._response is None or self._response.status != 101:
            raise UsageError("take_over() only after a 101 response")
        return self._take_over()

    def close(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        self._close()

    async def aclose(self, timeout: float = 1.0) -> None:
        """End an idle connection as a client ends one it keeps alive: half-close, let the
        server end its side (bounded by `timeout`), then close. A connection in the
        middle of an exchange is closed at once."""
        if self._closed:
            return
        if self._busy or not self.reusable or not self._writer.can_write_eof():
            self.close()
            return
        try:
            self._writer.write_eof()
            async with asyncio.timeout(timeout):
                while await self._reader.read(READ_SIZE):
                    pass                      # anything now is not an answer to a request
        except (TimeoutError, ConnectionError, OSError):
            pass
        self.close()


def _quiet(task: asyncio.Task) -> None:
    # a send cut short by the upstream closing shows as the response's own error
    if not task.cancelled():
        task.exception()


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("latin-1")
    except ValueError:
        return b"Unknown"
