"""One HBONE stream as an asyncio Transport.

Whatever speaks asyncio's Protocol interface can sit on a tunnel: a
StreamReaderProtocol (the in-process API's reader/writer), or a Splice that copies
to a TCP socket (the proxies). Flow control becomes transport flow control:

- write() sends what the HTTP/2 windows allow and keeps the rest (at most what the
  caller wrote); above the high-water mark the protocol is told to pause_writing(),
  and WindowOpened resumes it. As with uvloop's transports, a written payload of
  64 KiB or more is not copied: do not modify it after write().
- Received data is handed to the protocol and acknowledged at once, which opens the
  peer's window again. pause_reading() stops the acknowledgements, so the peer stalls
  once the window is spent, and data already in flight (never more than one window)
  waits here until resume_reading().
"""
from __future__ import annotations

import asyncio
from collections import deque

from meshcore._core.buffers import ZERO_COPY_MIN_BYTES
from meshcore.errors import ErrorCode, StreamClosedError

HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


def _held(data):
    """What write() keeps of `data` until the windows open: large payloads as given
    (the no-modify contract above), small views copied so they pin no read buffer."""
    if type(data) is bytes or len(data) >= ZERO_COPY_MIN_BYTES:
        return data
    return bytes(data)


class StreamTransport(asyncio.Transport):
    def __init__(self, connection, stream_id: int, extra: dict | None = None):
        super().__init__(extra)
        self._connection = connection          # meshcore.aio.connection.HboneConnection
        self.stream_id = stream_id
        self._protocol: asyncio.BaseProtocol | None = None
        self._pending: deque = deque()         # bytes not yet within the windows
        self._pending_size = 0
        self._eof_pending = False              # write_eof() waits for _pending to drain
        self._local_closed = False             # END_STREAM sent (or reset)
        self._remote_closed = False            # END_STREAM received (or reset)
        self._reading_paused = False
        self._inbox: deque = deque()           # data received while reading is paused
        self._inbox_eof = False
        self._writing_paused = False
        self._closing = False
        self._lost = False
        self._high, self._low = HIGH_WATER, LOW_WATER

    # ----------------------------------------------------------- asyncio.Transport

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._lost

    def get_write_buffer_size(self) -> int:
        return self._pending_size

    def get_write_buffer_limits(self):
        return self._low, self._high

    def set_write_buffer_limits(self, high=None, low=None):
        self._high = HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def can_write_eof(self) -> bool:
        return True

    def write(self, data) -> None:
        if self._local_closed or self._eof_pending or self._lost:
            if self._lost:
                return          # like a socket transport: writes after loss are dropped
            raise StreamClosedError(f"stream {self.stream_id}: write after write_eof/close",
                                    self.stream_id)
        if not data:
            return
        if self._pending:
            self._pending.append(_held(data))
            self._pending_size += len(data)
        else:
            sent = self._connection.send_stream_data(self.stream_id, data)
            if sent < len(data):
                rest = _held(memoryview(data)[sent:])
                self._pending.append(rest)
                self._pending_size += len(rest)
        if self._pending_size > self._high:
            self._check_high_water()

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        """Half-close: END_STREAM once everything written has been sent."""
        if self._local_closed or self._eof_pending or self._lost:
            return
        self._eof_pending = True
        self._flush_pending()

    def close(self) -> None:
        """Finish sending, half-close, and stop receiving: if the peer is still
        sending once our side is done, the stream is cancelled."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._reading_paused = True
        self._inbox.clear()
        self.write_eof()
        self._maybe_finish()

    def abort(self, error_code: int = ErrorCode.CANCEL) -> None:
        """RST_STREAM now (CANCEL, or e.g. CONNECT_ERROR when the TCP side behind the
        tunnel was reset, RFC 9113 8.5); queued data is dropped."""
        if self._lost:
            return
        self._pending.clear()
        self._pending_size = 0
        self._connection.reset_stream(self.stream_id, error_code)
        self._connection_lost(None)

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused or self._closing:
            return
        self._reading_paused = False
        while self._inbox and not self._reading_paused:
            chunk = self._inbox.popleft()
            self._protocol.data_received(chunk)
            self._connection.acknowledge(self.stream_id, len(chunk))
        if self._inbox_eof and not self._inbox and not self._reading_paused:
            self._inbox_eof = False
            self._deliver_eof()

    # ------------------------------------------------- called by the connection

    def _on_data(self, data) -> None:
        # called while the connection handles a read: its flush at the end of the read
        # sends any WINDOW_UPDATE, so the core is told directly
        if self._closing:
            self._connection.h2.acknowledge_received_data(self.stream_id, len(data))
            return
        if self._reading_paused:
            self._inbox.append(bytes(data))
            return
        self._protocol.data_received(data)
        self._connection.h2.acknowledge_received_data(self.stream_id, len(data))

    def _on_end(self) -> None:
        self._remote_closed = True
        if self._reading_paused and self._inbox:
            self._inbox_eof = True
        elif not self._closing:
            self._deliver_eof()
        self._maybe_finish()

    def _deliver_eof(self) -> None:
        keep_open = self._protocol.eof_received() if hasattr(self._protocol, "eof_received") else None
        if not keep_open and not self._local_closed:
            self.close()
        self._maybe_finish()

    def _on_window(self) -> None:
        self._flush_pending()

    def _on_reset(self, error_code: int, remote: bool) -> None:
        """RST_STREAM NO_ERROR/CANCEL from the peer reads as end of stream
        (HBONE.md 4); any other reset, or one of ours for a peer error, is a failure."""
        if self._lost:
            return
        self._pending.clear()
        self._pending_size = 0
        self._local_closed = True
        if remote and error_code in (ErrorCode.NO_ERROR, ErrorCode.CANCEL):
            if not self._remote_closed:
                self._remote_closed = True
                if not self._closing and hasattr(self._protocol, "eof_received"):
                    self._protocol.eof_received()
            self._connection_lost(None)
        else:
            name = ErrorCode(error_code).name if error_code in ErrorCode._value2member_map_ else error_code
            self._connection_lost(ConnectionResetError(
                f"HBONE stream {self.stream_id} reset with {name}"))

    def _connection_lost(self, exc) -> None:
        if self._lost:
            return
        self._lost = True
        self._local_closed = self._remote_closed = True
        self._connection.forget_stream(self.stream_id)
        if self._protocol is not None:
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, exc)

    # ----------------------------------------------------------------- internal

    def _flush_pending(self) -> None:
        while self._pending and not self._lost:
            chunk = self._pending[0]
            sent = self._connection.send_stream_data(self.stream_id, chunk)
            self._pending_size -= sent
            if sent < len(chunk):
                self._pending[0] = _held(memoryview(chunk)[sent:])
                break
            self._pending.popleft()
        if not self._pending and self._eof_pending and not self._local_closed and not self._lost:
            self._eof_pending = False
            self._local_closed = True
            self._connection.end_stream(self.stream_id)
            self._maybe_finish()
        self._check_low_water()

    def _check_high_water(self) -> None:
        if not self._writing_paused and self._pending_size > self._high and self._protocol:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _check_low_water(self) -> None:
        if self._writing_paused and self._pending_size <= self._low and self._protocol:
            self._writing_paused = False
            self._protocol.resume_writing()

    def _maybe_finish(self) -> None:
        if self._lost:
            return
        if self._local_closed and self._remote_closed:
            self._connection_lost(None)
        elif self._closing and self._local_closed and not self._remote_closed:
            # we are done and no longer read: stop the peer
            self._connection.reset_stream(self.stream_id, ErrorCode.CANCEL)
            self._connection_lost(None)
