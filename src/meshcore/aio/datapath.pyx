# cython: freethreading_compatible = False
"""The per-chunk data path of the asyncio shell (see datapath.pxd).

A relayed chunk crosses a proxy in C: the event loop hands it to a SpliceSide or to
ConnectionBase (BufferedProtocol methods), which passes it to a StreamTransport or
to the H2Connection core, which queues the frames that ConnectionBase writes to the
TLS transport. A profile of the same path as Python functions spent more time in the
interpreter than in HTTP/2 work.

Flow control becomes transport flow control:
- StreamTransport.write() sends what the HTTP/2 windows allow and keeps the rest;
  above the high-water mark (64 KiB: one read) the protocol is told to
  pause_writing(), and a WINDOW_UPDATE resumes it. As with uvloop's transports, a
  written payload of 64 KiB or more is not copied: do not modify it after write().
- Received data is handed to the protocol and acknowledged at once, which opens the
  peer's window again. pause_reading() stops the acknowledgements, so the peer stalls
  once the window is spent; data already in flight (never more than one window) waits
  in the stream until resume_reading().
- Output: what the events of one read cause leaves in one transport write at the end
  of that read; otherwise `defer_output()` (the shell's) may take it, to be written by
  `_deferred_flush()` at the loop's next turn (what a task sends in one step of its
  own, an HTTP response's head, body and end, then leaves as one TLS record and one
  send); else it is written at once.
"""
from collections import deque

from libc.stdint cimport uint32_t

from meshcore._core.buffers cimport ReadBuffer, ZERO_COPY_MIN
from meshcore._core.buffers import thread_read_buffer
from meshcore._core.events cimport DataReceived
from meshcore.errors import ErrorCode, StreamClosedError

cdef enum:
    HIGH_WATER = 64 * 1024     # a stream's write buffer: one read, then pause the writer
    LOW_WATER = 16 * 1024

cdef uint32_t _CANCEL = ErrorCode.CANCEL
cdef uint32_t _NO_ERROR = ErrorCode.NO_ERROR


cdef inline object _held(object data):
    """What is kept of written data until the windows open: large payloads as given
    (the no-modify contract), small views copied so they pin no read buffer."""
    if type(data) is bytes or len(data) >= ZERO_COPY_MIN:
        return data
    return bytes(data)


# ------------------------------------------------------------------ connection

cdef class ConnectionBase:
    """Reads into the thread's shared ReadBuffer, feeds the H2Connection, hands DATA
    to streams inline and everything else to `_dispatch()` (the subclass's)."""

    def __cinit__(self, *args, **kwargs):
        self.streams = {}
        self._blocked = None          # made when a stream first waits (an empty set is 0.2 KiB)
        self._rbuf = thread_read_buffer()

    # asyncio.BufferedProtocol
    def get_buffer(self, Py_ssize_t sizehint):
        return self._rbuf.get_buffer(sizehint)

    def buffer_updated(self, Py_ssize_t nbytes):
        self._receive(self._rbuf.last_read(nbytes), nbytes)

    def data_received(self, data):
        self._receive(data, -1)

    def pause_writing(self):
        # the peer does not read: stop producing (streams stall on their windows, and
        # control answers pile up in the core, which cuts off a flooding peer)
        self._write_paused = True

    def resume_writing(self):
        self._write_paused = False
        self._batching = True
        try:
            self._wake()
        finally:
            self._batching = False
        self._write_output()

    cdef int _receive(self, object data, Py_ssize_t length) except -1:
        # `length`: the first bytes of `data` that are the read (-1: all of it)
        cdef DataReceived d
        self._reads += 1
        self._batching = True
        try:
            for event in self.h2.receive_data(data, length):
                # one tunnel's failure (its protocol raised) ends that tunnel, never the
                # connection and every other tunnel on it
                try:
                    if type(event) is DataReceived:
                        d = <DataReceived>event
                        stream = self.streams.get(d.stream_id)
                        if stream is not None:
                            (<StreamTransport>stream)._on_data(d.data)
                        else:
                            self.h2.acknowledge_received_data(d.stream_id, len(d.data))
                    else:
                        self._dispatch(event)
                except Exception as exc:
                    self._stream_failed(getattr(event, "stream_id", 0), exc)
        finally:
            self._batching = False
        self._write_output()
        return 0

    # called by streams
    cdef Py_ssize_t _send(self, uint32_t stream_id, object data, bint now) except -1:
        """Sends as much of `data` as the windows allow now; returns how much. `now`:
        see _output_queued()."""
        if self._write_paused:
            self._block(stream_id)
            return 0
        cdef Py_ssize_t n = self.h2.available_window(stream_id)
        if n < len(data):
            self._block(stream_id)
            if n <= 0:
                return 0
            data = memoryview(data)[:n]
        else:
            n = len(data)
        self.h2.send_data(stream_id, data)
        self._output_queued(now)
        return n

    cdef int _acknowledge(self, uint32_t stream_id, Py_ssize_t size) except -1:
        self.h2.acknowledge_received_data(stream_id, size)
        self._output_queued(False)
        return 0

    def end_stream(self, uint32_t stream_id):
        if self.h2.can_send(stream_id):
            self.h2.end_stream(stream_id)
            self._output_queued(False)

    def reset_stream(self, uint32_t stream_id, uint32_t code):
        if self.h2.can_send(stream_id) or self.h2.can_receive(stream_id):
            self.h2.reset_stream(stream_id, code)
            self._output_queued(False)

    cdef int _block(self, uint32_t stream_id) except -1:
        if self._blocked is None:
            self._blocked = set()
        self._blocked.add(stream_id)
        return 0

    def forget_stream(self, uint32_t stream_id):
        if self.streams.pop(stream_id, None) is not None:
            if self._blocked is not None:
                self._blocked.discard(stream_id)
            self._stream_done(stream_id)

    cdef int _output_queued(self, bint now) except -1:
        # written at the end of the read being handled; else the shell may defer it (a
        # task's writes of one step leave as one TLS record and one send, not one each:
        # it calls _deferred_flush at the loop's next turn); else now. `now`: the event
        # loop itself handed over what is sent (a splice side's read), so no task runs
        # and the shell would not defer it: it is not asked
        if self._batching or self._flush_scheduled:
            return 0
        if not now and self.defer_output is not None and self.defer_output():
            self._flush_scheduled = True
        else:
            self._write_output()
        return 0

    def _deferred_flush(self):
        self._flush_scheduled = False
        self._write_output()

    def output_queued(self):
        """Output was queued in the core: written at the end of the read being handled,
        or at the loop's next turn."""
        self._output_queued(False)

    def _flush(self):
        self._write_output()

    cdef int _write_output(self) except -1:
        # most reads queue nothing (DATA in, WINDOW_UPDATEs only every half window):
        # then the transport is not asked anything
        if not self.h2._out:
            return 0
        if self._write_paused or self.transport is None or self.transport.is_closing():
            return 0
        cdef list chunks = self.h2.data_to_send_chunks()
        if chunks:
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)
        return 0

    cdef int _wake(self) except -1:
        blocked, self._blocked = self._blocked, None
        if blocked is None:
            return 0
        for sid in blocked:
            stream = self.streams.get(sid)
            if stream is not None:
                (<StreamTransport>stream)._flush_pending()
        return 0

    def _on_window(self, uint32_t stream_id):
        """WINDOW_UPDATE (or SETTINGS) opened a window: resume who waits for it."""
        if stream_id == 0:
            self._wake()
        elif self._blocked is not None and stream_id in self._blocked:
            self._blocked.discard(stream_id)
            stream = self.streams.get(stream_id)
            if stream is not None:
                (<StreamTransport>stream)._flush_pending()


# ---------------------------------------------------------------------- stream

cdef class StreamTransport:
    """One HBONE stream as an asyncio Transport, for any asyncio protocol: a
    StreamReaderProtocol (the in-process API), or a splice side (the proxies)."""

    def __init__(self, ConnectionBase connection, uint32_t stream_id, dict extra=None):
        self._connection = connection
        self.stream_id = stream_id
        self._extra = {} if extra is None else extra
        self._pending = deque()
        self._inbox = deque()
        self._high, self._low = HIGH_WATER, LOW_WATER

    # ----------------------------------------------------------- asyncio.Transport

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._side = protocol if isinstance(protocol, SpliceSide) else None

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closing or self._lost

    def is_reading(self):
        return not self._reading_paused and not self._lost

    def get_write_buffer_size(self):
        return self._pending_size

    def get_write_buffer_limits(self):
        return self._low, self._high

    def set_write_buffer_limits(self, high=None, low=None):
        self._high = HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low
        if self._low > self._high:
            raise ValueError(f"high ({self._high}) must be >= low ({self._low})")

    def can_write_eof(self):
        return True

    cpdef write(self, object data):
        self._write(data, False)

    cdef int _write(self, object data, bint now) except -1:
        # `now`: see ConnectionBase._output_queued()
        cdef Py_ssize_t sent
        if self._local_closed or self._eof_pending or self._lost:
            if self._lost:
                return 0        # like a socket transport: writes after loss are dropped
            raise StreamClosedError(f"stream {self.stream_id}: write after write_eof/close",
                                    self.stream_id)
        if not data:
            return 0
        if self._pending:
            self._pending.append(_held(data))
            self._pending_size += len(data)
        else:
            sent = self._connection._send(self.stream_id, data, now)
            if sent < len(data):
                rest = _held(memoryview(data)[sent:])
                self._pending.append(rest)
                self._pending_size += len(rest)
        if self._pending_size > self._high and not self._writing_paused and self._protocol is not None:
            self._writing_paused = True
            self._protocol.pause_writing()
        return 0

    def writelines(self, chunks):
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self):
        """Half-close: END_STREAM once everything written has been sent."""
        if self._local_closed or self._eof_pending or self._lost:
            return
        self._eof_pending = True
        self._flush_pending()

    def close(self):
        """Finish sending, half-close, and stop receiving: if the peer is still
        sending once our side is done, the stream is cancelled."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._reading_paused = True
        self._discard_inbox()
        self.write_eof()
        self._maybe_finish()

    def abort(self, error_code=_CANCEL):
        """RST_STREAM now (CANCEL, or e.g. CONNECT_ERROR when the TCP side behind the
        tunnel was reset, RFC 9113 8.5); queued data is dropped."""
        if self._lost:
            return
        self._pending.clear()
        self._pending_size = 0
        self._connection.reset_stream(self.stream_id, error_code)
        self._connection_lost(None)

    def pause_reading(self):
        self._reading_paused = True

    def resume_reading(self):
        if not self._reading_paused or self._closing:
            return
        self._reading_paused = False
        while self._inbox and not self._reading_paused:
            chunk = self._inbox.popleft()
            self._deliver(chunk)
            self._connection._acknowledge(self.stream_id, len(chunk))
        if self._inbox_eof and not self._inbox and not self._reading_paused:
            self._inbox_eof = False
            self._deliver_eof()
        self._maybe_finish()

    # ------------------------------------------------- called by the connection

    cdef int _on_data(self, object data) except -1:
        # called while the connection handles a read: its flush at the end of the read
        # sends any WINDOW_UPDATE, so the core is told directly
        if self._closing:
            self._connection.h2.acknowledge_received_data(self.stream_id, len(data))
        elif self._reading_paused:
            self._inbox.append(bytes(data))
        else:
            self._deliver(data)
            self._connection.h2.acknowledge_received_data(self.stream_id, len(data))
        return 0

    cdef int _deliver(self, object data) except -1:
        if self._side is not None:
            self._side._forward(data, False)
        else:
            self._protocol.data_received(data)
        return 0

    def _on_end(self):
        self._remote_closed = True
        if self._protocol is None or (self._reading_paused and self._inbox):
            self._inbox_eof = True
        elif not self._closing:
            self._deliver_eof()
        self._maybe_finish()

    def _deliver_eof(self):
        keep_open = self._protocol.eof_received() if hasattr(self._protocol, "eof_received") else None
        if not keep_open and not self._local_closed:
            self.close()
        self._maybe_finish()

    def _on_reset(self, uint32_t error_code, bint remote):
        """RST_STREAM NO_ERROR/CANCEL from the peer reads as end of stream
        (docs/hbone.md, A tunnel's life); any other reset, or one of ours for a peer error, is a failure."""
        if self._lost:
            return
        self._pending.clear()
        self._pending_size = 0
        self._local_closed = True
        if remote and (error_code == _NO_ERROR or error_code == _CANCEL):
            if not self._remote_closed:
                # read as the end of the stream, but what the peer was sending was cut
                # short: whoever relays it may tell that from an end of data
                self.cut_by_peer = True
                self._remote_closed = True
                if not self._closing and hasattr(self._protocol, "eof_received"):
                    self._protocol.eof_received()
            self._connection_lost(None)
        else:
            name = ErrorCode(error_code).name if error_code in ErrorCode._value2member_map_ else error_code
            self._connection_lost(ConnectionResetError(
                f"HBONE stream {self.stream_id} reset with {name}"))

    def _connection_lost(self, exc):
        if self._lost:
            return
        self._lost = True
        self._local_closed = self._remote_closed = True
        self._discard_inbox()
        self._connection.forget_stream(self.stream_id)
        if self._protocol is not None:
            self._connection.loop.call_soon(self._protocol.connection_lost, exc)

    # ----------------------------------------------------------------- internal

    cdef int _discard_inbox(self) except -1:
        # Unread data still holds connection window: give it back, or a few abandoned
        # streams would stall every other tunnel on the connection.
        cdef Py_ssize_t unread = 0
        for chunk in self._inbox:
            unread += len(chunk)
        self._inbox.clear()
        self._inbox_eof = False
        if unread:
            self._connection._acknowledge(self.stream_id, unread)
        return 0

    cdef int _flush_pending(self) except -1:
        cdef Py_ssize_t sent
        while self._pending and not self._lost:
            chunk = self._pending[0]
            sent = self._connection._send(self.stream_id, chunk, False)
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
        if self._writing_paused and self._pending_size <= self._low and self._protocol is not None:
            self._writing_paused = False
            self._protocol.resume_writing()
        return 0

    def _maybe_finish(self):
        if self._lost:
            return
        if self._local_closed and self._remote_closed:
            if self._inbox or self._inbox_eof:
                return          # finished once the paused protocol has taken it all
            self._connection_lost(None)
        elif self._closing and self._local_closed and not self._remote_closed:
            # we are done and no longer read: stop the peer
            self._connection.reset_stream(self.stream_id, _CANCEL)
            self._connection_lost(None)

    def __repr__(self):
        return f"<StreamTransport stream {self.stream_id}{' lost' if self._lost else ''}>"


# ---------------------------------------------------------------------- splice

cdef class SpliceSide:
    """Reads into the thread's shared ReadBuffer and writes what it read to the peer
    side's transport (copied only when small, see meshcore._core.buffers)."""

    def __cinit__(self, *args, **kwargs):
        self._rbuf = thread_read_buffer()
        self._early = []

    def get_buffer(self, Py_ssize_t sizehint):
        return self._rbuf.get_buffer(sizehint)

    def buffer_updated(self, Py_ssize_t nbytes):
        self._forward(self._rbuf.take(nbytes), True)

    def data_received(self, data):
        self._forward(data, True)

    cdef int _forward(self, object data, bint now) except -1:
        # `now`: the event loop called (a read), not a task: see ConnectionBase._output_queued()
        self.received += len(data)
        sink = self.peer.transport
        if sink is None:
            # nothing may be lost while the other side does not exist yet (an upstream
            # can speak before the tunnel is accepted)
            self._early.append(bytes(data))
            self.transport.pause_reading()
        elif type(sink) is StreamTransport:
            (<StreamTransport>sink)._write(data, now)
        else:
            sink.write(data)
        return 0
