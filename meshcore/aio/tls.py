"""TLS for HBONE connections: meshcore drives OpenSSL itself over a non-blocking socket.

The TLS engine is meshcore.aio.openssl, a binding of libssl's public API: one SSL per
connection on the socket's descriptor, with its own SSL_CTX built from the same
credentials, trust bundle and settings as the ssl.SSLContext it is given (see
meshcore.identity.tls.HboneContext). OpenSSL reads ahead, so one recv() carries many
records, and decrypts straight into the protocol's buffer (the thread's shared
ReadBuffer), record after record in C until the socket has nothing more (after a
small read: until OpenSSL holds nothing more); a write's records are encrypted into
an outbox and leave in one send(). Neither the event loop's TLS layer nor Python's
ssl is on this path: the loop's layer keeps a 256 KiB read buffer and two memory
BIOs per connection (a connection that once carried a large transfer stays at
~560 KiB while idle, and a node proxy keeps a connection to every peer node), and
Python's ssl reads every record in two recv() calls and builds Python objects per
record. Here an idle connection holds no TLS buffers at all (both
the read-ahead buffer and the outbox are freed when empty): measured with
benchmarks/connection_memory.py (1,000 connections, all layers), 30.2 KiB per idle
HBONE connection, 31.6 KiB after each carried a 1 MiB tunnel.

`start_tls()` handshakes with a deadline (add_reader/add_writer while OpenSSL waits)
and hands the connection to an asyncio (Buffered)Protocol through `TlsTransport`,
which has asyncio.Transport's interface. Its "ssl_object" is the
meshcore.aio.openssl.TlsConnection, which answers what the checks after the
handshake ask (getpeercert(), selected_alpn_protocol(), cipher(), version()).
Handshake failures raise what Python's ssl raises for them, so the refusal reasons
of meshcore.identity.tls.handshake_error() are the same. A context without
meshcore's credentials (a plain ssl.SSLContext) is refused with a TypeError: there is
no fallback to Python's ssl.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import socket

from meshcore.aio.openssl import HANDSHAKE_DONE, WANT_READ, TlsConnection, TlsContext

log = logging.getLogger("meshcore.tls")

HIGH_WATER = 256 * 1024      # bytes the socket did not take: above this the protocol pauses
LOW_WATER = 64 * 1024
RECORD = 16 * 1024           # the most plaintext one TLS record carries
PLAIN_READ = 64 * 1024       # what one read gives a protocol that has no buffer of its own


def native_context(context) -> TlsContext:
    """The OpenSSL context meshcore's engine runs for `context`: a TlsContext as it
    is, or the one an HboneContext (meshcore.identity's contexts) builds."""
    if isinstance(context, TlsContext):
        return context
    native = getattr(context, "native", None)
    if native is None:
        raise TypeError(f"meshcore's TLS needs a context from meshcore.identity (server_context(), "
                        f"client_context(), a CertificateStore) or a meshcore.aio.openssl.TlsContext, "
                        f"not {type(context).__name__}")
    return native()


async def start_tls(loop: asyncio.AbstractEventLoop, sock: socket.socket, context,
                    protocol_factory, *, server_side: bool, timeout: float):
    """TLS handshake on the connected non-blocking `sock`, then `protocol_factory()`
    connected to a TlsTransport: (transport, protocol). `context` is an HboneContext
    (what meshcore.identity makes) or a TlsContext. On failure the socket is closed
    and the error raised: ssl.SSLError, OSError, or TimeoutError after `timeout` s."""
    try:
        tls = TlsConnection(native_context(context), sock.fileno(), server_side)
    except BaseException:
        sock.close()
        raise
    try:
        await asyncio.wait_for(_handshake(loop, sock.fileno(), tls), timeout)
    except asyncio.TimeoutError:
        tls.free()
        sock.close()
        raise TimeoutError(f"TLS handshake did not complete within {timeout:g} s") from None
    except BaseException:
        tls.free()
        sock.close()
        raise
    try:
        protocol = protocol_factory()
        transport = TlsTransport(loop, sock, tls, context, protocol)
    except BaseException:
        tls.free()
        sock.close()
        raise
    transport._start()
    return transport, protocol


async def _handshake(loop, fd: int, tls: TlsConnection) -> None:
    while True:
        state = tls.handshake()
        if state == HANDSHAKE_DONE:
            return
        if state == WANT_READ:
            add, remove = loop.add_reader, loop.remove_reader
        else:
            add, remove = loop.add_writer, loop.remove_writer
        ready = loop.create_future()
        add(fd, _set_ready, ready)
        try:
            await ready
        finally:
            remove(fd)


def _set_ready(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _record_pieces(chunks):
    """Small pieces (frame headers, small frames) travel with the start of the large
    payload after them, so every TLS record but a write's last is full: no tiny
    records."""
    small = []
    size = 0
    for chunk in chunks:
        if size + len(chunk) <= RECORD:
            small.append(chunk)
            size += len(chunk)
            continue
        if small:
            head = RECORD - size
            small.append(chunk[:head])
            yield b"".join(small)
            chunk = memoryview(chunk)[head:]
            small, size = [], 0
        if len(chunk) >= RECORD:
            yield chunk
        else:
            small, size = [chunk], len(chunk)
    if small:
        yield small[0] if len(small) == 1 else b"".join(small)


CLOSE_TIMEOUT = 1.0      # seconds a graceful close waits for the peer's close_notify or EOF


class TlsTransport(asyncio.Transport):
    """A TLS connection with asyncio.Transport's interface (TLS has no half-close:
    can_write_eof() is False)."""

    def __init__(self, loop, sock: socket.socket, tls: TlsConnection, context, protocol):
        super().__init__({"socket": sock, "ssl_object": tls, "sslcontext": context,
                          "peername": sock.getpeername(), "sockname": sock.getsockname()})
        self._loop = loop
        self._sock = sock
        self._tls = tls
        self._fd = sock.fileno()
        self._protocol = protocol
        self._buffered = hasattr(protocol, "get_buffer")
        # plaintext not yet taken by the engine (the socket is full); made on demand
        # (an empty deque is 0.6 KiB)
        self._backlog: collections.deque | None = None
        self._backlog_size = 0
        self._high, self._low = HIGH_WATER, LOW_WATER
        self._reading = False           # the reader is registered
        self._read_paused = False
        self._writing = False           # the writer is registered
        self._protocol_paused = False
        self._closing = False
        self._lost = False
        self._close_timer = None

    def get_extra_info(self, name, default=None):
        if name == "peercert":              # parsed on request: a dict per connection otherwise
            return self._tls.getpeercert() if not self._lost else default
        if name == "cipher":
            return self._tls.cipher() if not self._lost else default
        return self._extra.get(name, default)

    def _start(self) -> None:
        self._protocol.connection_made(self)
        if not self._closing and not self._read_paused:
            self._add_reader()

    # ------------------------------------------------------------- reading

    def _add_reader(self) -> None:
        if not self._reading and not self._lost:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)
            if self._tls.has_pending():     # read ahead already: no readiness event will tell
                self._loop.call_soon(self._read_ready)

    def _remove_reader(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _read_ready(self) -> None:
        if not self._reading or self._closing:     # a call queued before close() began
            return
        protocol = self._protocol
        buffered = self._buffered
        buf = protocol.get_buffer(-1) if buffered else bytearray(PLAIN_READ)
        tls = self._tls
        try:
            # a small read is not drained to an empty recv(): the reader is registered,
            # and readiness comes again for what the socket holds (OpenSSL holds nothing then)
            got = tls.read_into(buf, False)
        except OSError as exc:                      # ssl.SSLError included
            self._fatal(exc)
            return
        if got:
            if buffered:
                protocol.buffer_updated(got)
            else:
                protocol.data_received(bytes(buf[:got]))
            if self._lost:
                return
        if tls.unsent and not self._lost:
            self._want_write()                      # what OpenSSL answered while reading, when the socket was full
        if tls.eof:
            self._remove_reader()
            if not self._closing and not protocol.eof_received():
                self.close()
        elif got == len(buf) and self._reading and tls.has_pending():
            self._loop.call_soon(self._read_ready)

    def pause_reading(self) -> None:
        self._read_paused = True
        self._remove_reader()

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if not self._closing:
                self._add_reader()

    def is_reading(self) -> bool:
        return self._reading

    # ------------------------------------------------------------- writing

    def write(self, data) -> None:
        if self._lost or not data:
            return                  # like the loop's transports: writes after loss are dropped
        if not self._backlog:
            tls = self._tls
            try:                    # _send() inline: every relayed chunk comes this way
                taken = tls.write(data)
            except OSError as exc:                  # ssl.SSLError included
                self._fatal(exc)
                return
            if taken == len(data):
                if tls.unsent:
                    self._want_write()
                return
            data = memoryview(data)[taken:]
        self._queue(data)
        self._want_write()

    def writelines(self, chunks) -> None:
        """The pieces' records leave together, in as few send() calls as the socket
        allows."""
        if self._lost:
            return
        pieces = list(_record_pieces(chunks))
        if not pieces:
            return
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            if self._lost:
                return                  # pause_writing() had the protocol abort
            if self._backlog:
                self._queue(piece)
                continue
            taken = self._send(piece, i < last)
            if taken < 0:
                return
            if taken < len(piece):
                self._queue(memoryview(piece)[taken:])
        if self._backlog or self._tls.unsent:
            self._want_write()

    def _queue(self, data) -> None:
        if self._backlog is None:
            self._backlog = collections.deque()
        self._backlog.append(data)
        self._backlog_size += len(data)
        if self._backlog_size > self._high and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _want_write(self) -> None:
        if not self._writing and not self._lost:
            self._writing = True
            self._loop.add_writer(self._fd, self._write_ready)

    def _send(self, data, more: bool) -> int:
        """Encrypt and send until the socket is full: bytes taken, or -1 on failure."""
        try:
            return self._tls.write(data, more)
        except OSError as exc:                      # ssl.SSLError included
            self._fatal(exc)
            return -1

    def _write_ready(self) -> None:
        tls = self._tls
        try:
            left = tls.flush()
        except OSError as exc:
            self._fatal(exc)
            return
        while not left and self._backlog:
            chunk = self._backlog[0]
            taken = self._send(chunk, False)
            if taken < 0:
                return
            self._backlog_size -= taken
            if taken < len(chunk):
                self._backlog[0] = memoryview(chunk)[taken:]
                break
            self._backlog.popleft()
            left = tls.unsent
        if self._protocol_paused and self._backlog_size <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if not self._backlog and not tls.unsent and not self._lost:
            self._backlog = None
            if self._writing:
                self._writing = False
                self._loop.remove_writer(self._fd)
            if self._closing:
                self._shutdown()

    def get_write_buffer_size(self) -> int:
        return self._backlog_size + (self._tls.unsent if not self._lost else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    # ------------------------------------------------------------ lifecycle

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol
        self._buffered = hasattr(protocol, "get_buffer")

    def is_closing(self) -> bool:
        return self._closing or self._lost

    close_timeout = CLOSE_TIMEOUT

    def close(self) -> None:
        """Send what is queued, then close_notify, then close; a peer that has not taken
        the end within `close_timeout` (not reading, or never answering) is cut off, so
        its socket and buffers go now instead of when TCP gives up."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._remove_reader()
        self._close_timer = self._loop.call_later(self.close_timeout, self._close_expired)
        if not self._backlog and not self._tls.unsent:
            self._loop.call_soon(self._shutdown)

    def _close_expired(self) -> None:
        if not self._lost:
            log.debug("TLS peer %s did not end the connection within %.1f s: closing it",
                      self._extra.get("peername"), self.close_timeout)
            self._finish(None)

    def _shutdown(self) -> None:
        """close_notify and a half-close, then read (and discard) until the peer's EOF.
        Closing at once would reset the connection if anything of the peer's is still
        unread, and a reset makes the peer's kernel drop what we sent last."""
        if self._lost:
            return
        try:
            done = self._tls.shutdown()
        except OSError:
            self._finish(None)
            return
        if done and not self._tls.unsent:
            self._finish(None)              # the peer's close_notify was in already
            return
        if self._tls.unsent:                # close_notify waits for room in the socket
            self._writing = True
            self._loop.add_writer(self._fd, self._close_notify_ready)
            return
        self._half_close()

    def _close_notify_ready(self) -> None:
        try:
            left = self._tls.flush()
        except OSError:
            self._finish(None)
            return
        if not left:
            self._writing = False
            self._loop.remove_writer(self._fd)
            self._half_close()

    def _half_close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish(None)
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._discard_until_eof)

    def _discard_until_eof(self) -> None:
        try:
            data = self._sock.recv(65536)   # raw: past TLS, nothing to decrypt
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish(None)

    def abort(self) -> None:
        self._finish(None)

    def _fatal(self, exc: BaseException) -> None:
        log.debug("TLS connection %s failed: %r", self._extra.get("peername"), exc)
        self._finish(exc)

    def _finish(self, exc) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._remove_reader()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._backlog = None
        self._backlog_size = 0
        self._tls.free()                    # OpenSSL's state goes now, not with this object
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

