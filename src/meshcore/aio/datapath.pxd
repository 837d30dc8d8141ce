# The per-chunk data path of the asyncio shell, compiled: every relayed chunk passes
# through these three classes, so a hop costs C calls instead of Python frames.
# They do no I/O of their own: the event loop calls them (BufferedProtocol methods)
# and they call transports. Lifecycle (dialing, events other than DATA, keepalive,
# splice setup and teardown) stays in the Python subclasses in meshcore/aio/.
cimport cython
from libc.stdint cimport uint32_t

from meshcore._core.buffers cimport ReadBuffer
from meshcore._core.h2conn cimport H2Connection


cdef class ConnectionBase:
    # The HBONE connection's hot half; meshcore.aio.connection.HboneConnection
    # (also an asyncio.BufferedProtocol) is the rest.
    cdef public H2Connection h2
    cdef public object transport           # the TLS transport
    cdef public object loop
    cdef public dict streams               # stream id -> StreamTransport
    cdef public set _blocked               # streams waiting for window or for the transport (None: none)
    cdef public bint _batching             # inside a read: output waits for its end
    cdef public bint _write_paused         # the transport's buffer is full
    cdef public bint _flush_scheduled      # deferred output waits for _deferred_flush()
    cdef public object defer_output        # the shell's: True if it will call _deferred_flush() soon
    cdef public Py_ssize_t _reads          # reads so far (the keepalive timer compares)
    cdef ReadBuffer _rbuf

    cdef int _receive(self, object data, Py_ssize_t length) except -1
    cdef Py_ssize_t _send(self, uint32_t stream_id, object data, bint now) except -1
    cdef int _block(self, uint32_t stream_id) except -1
    cdef int _acknowledge(self, uint32_t stream_id, Py_ssize_t size) except -1
    cdef int _output_queued(self, bint now) except -1
    cdef int _write_output(self) except -1
    cdef int _wake(self) except -1


@cython.final
cdef class StreamTransport:
    # One HBONE stream with asyncio.Transport's interface (not its subclass: that class
    # has an instance layout a compiled class cannot share).
    cdef readonly uint32_t stream_id
    cdef ConnectionBase _connection
    cdef dict _extra
    cdef object _protocol
    cdef SpliceSide _side                  # _protocol when it is a splice side: called in C
    cdef object _pending                   # deque of data not yet within the windows
    cdef Py_ssize_t _pending_size
    cdef Py_ssize_t _high, _low
    cdef object _inbox                     # deque of data received while reading is paused
                                           # (or before the tunnel was accepted), unacknowledged
    cdef bint _inbox_eof
    cdef bint _eof_pending                 # write_eof() waits for _pending to drain
    cdef bint _local_closed                # END_STREAM sent (or reset)
    cdef bint _remote_closed               # END_STREAM received (or reset)
    cdef readonly bint cut_by_peer         # the peer's NO_ERROR/CANCEL reset came before its END_STREAM
    cdef bint _reading_paused
    cdef bint _writing_paused
    cdef bint _closing
    cdef bint _lost

    cpdef write(self, object data)
    cdef int _write(self, object data, bint now) except -1
    cdef int _on_data(self, object data) except -1
    cdef int _flush_pending(self) except -1
    cdef int _discard_inbox(self) except -1
    cdef int _deliver(self, object data) except -1


cdef class SpliceSide:
    # One side of a Splice (meshcore.aio.splice): what it reads is written to the
    # peer side's transport.
    cdef public object splice
    cdef public object transport
    cdef public SpliceSide peer
    cdef public unsigned long long received   # bytes read from this side's transport
    cdef public bint eof                   # this side will send no more
    cdef public bint lost
    cdef public list _early                # read before the other side existed
    cdef public bint _early_eof
    cdef ReadBuffer _rbuf

    cdef int _forward(self, object data, bint now) except -1
