"""TLS for HBONE connections, driven by meshcore over a non-blocking socket.

The event loop's own TLS layer (uvloop's, and asyncio's) keeps a 256 KiB read buffer
and two memory BIOs per connection, and the BIOs keep the size of the largest transfer
they saw: a connection that once carried a large transfer stays at ~560 KiB while idle,
and a node proxy keeps a connection to every peer node. Here OpenSSL reads the socket
into its own record buffer, which it releases when idle, and decrypts straight into
the protocol's buffer (the thread's shared ReadBuffer); writes are encrypted straight
into the socket. Measured (benchmarks/connection_memory.py): ~34 KiB per idle HBONE
connection after a 1 MiB tunnel, all layers, and less CPU per byte received than the
event loop's layer (no memory-BIO copies). Reads run in C (meshcore.aio.tlsread).

`start_tls()` handshakes with a deadline and hands the connection to an asyncio
(Buffered)Protocol through `TlsTransport`, which has asyncio.Transport's interface.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl

from meshcore.aio.tlsread import read_into

log = logging.getLogger("meshcore.tls")

HIGH_WATER = 256 * 1024      # bytes the socket did not take: above this the protocol pauses
LOW_WATER = 64 * 1024
RECORD = 16 * 1024           # the most plaintext one TLS record carries
_WAIT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


async def start_tls(loop: asyncio.AbstractEventLoop, sock: socket.socket, context: ssl.SSLContext,
                    protocol_factory, *, server_side: bool, timeout: float):
    """TLS handshake on the connected non-blocking `sock`, then `protocol_factory()`
    connected to a TlsTransport: (transport, protocol). On failure the socket is closed
    and the error raised: ssl.SSLError, OSError, or TimeoutError after `timeout` s."""
    try:
        ssock = context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False,
                                    server_hostname=None)
    except BaseException:
        sock.close()
        raise
    try:
        await asyncio.wait_for(_handshake(loop, ssock), timeout)
    except asyncio.TimeoutError:
        ssock.close()
        raise TimeoutError(f"TLS handshake did not complete within {timeout:g} s") from None
    except BaseException:
        ssock.close()
        raise
    protocol = protocol_factory()
    transport = TlsTransport(loop, ssock, protocol)
    transport._start()
    return transport, protocol


async def _handshake(loop, ssock: ssl.SSLSocket) -> None:
    fd = ssock.fileno()
    while True:
        try:
            ssock.do_handshake()
            return
        except ssl.SSLWantReadError:
            add, remove = loop.add_reader, loop.remove_reader
        except ssl.SSLWantWriteError:
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


CLOSE_TIMEOUT = 1.0      # seconds a graceful close waits for the peer's close_notify or EOF


class TlsTransport(asyncio.Transport):
    """A TLS connection with asyncio.Transport's interface (TLS has no half-close:
    can_write_eof() is False)."""

    def __init__(self, loop, ssock: ssl.SSLSocket, protocol):
        super().__init__({"socket": ssock, "ssl_object": ssock, "sslcontext": ssock.context,
                          "peername": ssock.getpeername(), "sockname": ssock.getsockname()})
        self._loop = loop
        self._sock = ssock
        # the C object under ssl.SSLSocket: its Python methods are frames around it,
        # on the path of every record
        self._sslobj = getattr(ssock, "_sslobj", None) or ssock
        self._fd = ssock.fileno()
        self._protocol = protocol
        # what the socket has not taken; made on demand (an empty deque is 0.6 KiB)
        self._backlog: collections.deque | None = None
        self._backlog_size = 0
        self._high, self._low = HIGH_WATER, LOW_WATER
        self._reading = False           # the reader is registered
        self._read_paused = False
        self._writing = False           # the writer is registered
        self._protocol_paused = False
        self._closing = False
        self._lost = False

    def get_extra_info(self, name, default=None):
        if name == "peercert":              # parsed on request: a dict per connection otherwise
            return self._sock.getpeercert() if not self._lost else default
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
            if self._sslobj.pending():     # decrypted bytes OpenSSL holds: no readiness event for them
                self._loop.call_soon(self._read_ready)

    def _remove_reader(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _read_ready(self) -> None:
        if not self._reading or self._closing:     # a call queued before close() began
            return
        protocol = self._protocol
        buf = protocol.get_buffer(-1)
        try:
            got, eof = read_into(self._sslobj, self._fd, buf)
        except (OSError, ssl.SSLError) as exc:
            self._fatal(exc)
            return
        if got:
            protocol.buffer_updated(got)
        if eof:
            self._remove_reader()
            if not protocol.eof_received():
                self.close()
        elif got == len(buf) and self._reading and self._sslobj.pending():
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
            sent = self._send(data)
            if sent < 0 or sent == len(data):
                return
            data = memoryview(data)[sent:]
            if self._backlog is None:
                self._backlog = collections.deque()
        self._backlog.append(data)
        self._backlog_size += len(data)
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._write_ready)
        if self._backlog_size > self._high and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def writelines(self, chunks) -> None:
        """Small pieces (frame headers, small frames) travel with the start of the large
        payload after them, so every TLS record but a write's last is full: no tiny
        records, fewer syscalls."""
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
                self.write(b"".join(small))
                chunk = memoryview(chunk)[head:]
                small, size = [], 0
            if len(chunk) >= RECORD:
                self.write(chunk)
            else:
                small, size = [chunk], len(chunk)
        if small:
            self.write(b"".join(small))

    def _send(self, data) -> int:
        """Encrypt into the socket until it is full: bytes taken, or -1 on failure.
        (With partial writes OpenSSL takes a record at a time; what it did not take is
        offered again, from the same position, when the socket is writable.)"""
        total = len(data)
        sent = 0
        view = None
        try:
            while sent < total:
                sent += self._sslobj.write(view[sent:] if sent else data)
                if view is None and sent < total:
                    view = memoryview(data)
        except _WAIT:
            pass
        except (OSError, ssl.SSLError) as exc:
            self._fatal(exc)
            return -1
        return sent

    def _write_ready(self) -> None:
        while self._backlog:
            chunk = self._backlog[0]
            sent = self._send(chunk)
            if sent < 0:
                return
            self._backlog_size -= sent
            if sent < len(chunk):
                self._backlog[0] = memoryview(chunk)[sent:]
                break
            self._backlog.popleft()
        if self._protocol_paused and self._backlog_size <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if not self._backlog:
            self._backlog = None
            if self._writing:
                self._writing = False
                self._loop.remove_writer(self._fd)
            if self._closing:
                self._shutdown()

    def get_write_buffer_size(self) -> int:
        return self._backlog_size

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
        if not self._backlog:
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
            self._sock.unwrap().close()     # the peer's close_notify was in already: done
            self._finish(None)
            return
        except (OSError, ssl.SSLError, ValueError):
            pass                            # ours is sent; theirs is still to come
        try:
            socket.socket.shutdown(self._sock, socket.SHUT_WR)
        except OSError:
            self._finish(None)
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._discard_until_eof)

    def _discard_until_eof(self) -> None:
        try:
            data = socket.socket.recv(self._sock, 65536)    # raw: past TLS, nothing to decrypt
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
        timer = getattr(self, "_close_timer", None)
        if timer is not None:
            timer.cancel()
            self._close_timer = None
        self._remove_reader()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._backlog = None
        self._backlog_size = 0
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)
