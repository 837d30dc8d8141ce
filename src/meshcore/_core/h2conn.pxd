# The sans-IO HTTP/2 connection (RFC 9113), client or server: CONNECT tunnels (HBONE)
# and requests with responses.
# Bytes in -> events; commands -> bytes out. No sockets, no timers, no clock of
# its own (a clock callable is injected for the Rapid Reset rule).
from libc.stdint cimport uint8_t, uint32_t, int64_t

from meshcore._core.frames cimport FrameHeader
from meshcore._core.hpack cimport HeaderEncoder, HeaderDecoder

# stream states, RFC 9113 5.1 (reserved states are unreachable: push is disabled)
cdef enum:  # StreamState
    IDLE = 0
    OPEN = 1
    HALF_CLOSED_LOCAL = 2
    HALF_CLOSED_REMOTE = 3
    CLOSED = 4
    N_STATES = 5

# what happens to a stream; the transition table maps (state, input) -> state
cdef enum:  # StreamInput
    SEND_HEADERS = 0
    RECV_HEADERS = 1
    SEND_DATA = 2
    RECV_DATA = 3
    SEND_END_STREAM = 4
    RECV_END_STREAM = 5
    SEND_RST = 6
    RECV_RST = 7
    N_INPUTS = 8

# where the reader is inside the byte stream
cdef enum:  # ReadPhase
    READ_PREFACE = 0
    READ_FRAME_HEADER = 1
    READ_PAYLOAD = 2          # a non-DATA frame, buffered until complete
    READ_DATA_PAD_LENGTH = 3
    READ_DATA_BODY = 4        # DATA payload, delivered as it arrives
    READ_DATA_PADDING = 5
    READ_SKIP = 6             # payload of a frame already refused
    READ_NOTHING = 7          # after a connection error


cdef class Stream:
    cdef readonly uint32_t id
    cdef readonly int state
    cdef readonly bint local               # we opened it
    cdef int64_t send_window
    cdef int64_t recv_window               # what the peer may still send
    cdef int64_t recv_unacked              # consumed, not yet returned by WINDOW_UPDATE
    cdef double opened_at
    cdef bint headers_received             # request (server) / final response (client) seen
    cdef bint answered                     # server: our final response headers went out
    cdef bint tunnel                       # a CONNECT: DATA is tunnel bytes, not content
    cdef bint established                  # a CONNECT answered 2xx: only DATA may follow (8.5)
    cdef bint head                         # the request was HEAD: its response has no content
    cdef int64_t recv_content_left         # content the peer declared and has not sent (-1: none)
    cdef int64_t send_content_left         # content we declared and have not sent (-1: none)


cdef class H2Connection:
    cdef readonly bint client
    # settings we advertise; `_acked_*` are in force (the peer has ACKed them)
    cdef uint32_t _local_max_frame_size
    cdef uint32_t _local_max_concurrent
    cdef uint32_t _local_max_header_list
    cdef int64_t _local_initial_window     # advertised
    cdef int64_t _acked_initial_window     # in force
    cdef list _pending_local_settings      # SETTINGS sent, not yet ACKed: [list of pairs]
    cdef dict _advertised                  # every setting we advertised
    cdef bint _local_connect_protocol      # we accept extended CONNECT (RFC 8441)
    # the peer's settings
    cdef uint32_t _remote_max_frame_size
    cdef uint32_t _remote_max_concurrent
    cdef int64_t _remote_initial_window
    cdef uint32_t _remote_max_header_list
    cdef bint _remote_settings_seen
    cdef bint _remote_connect_protocol     # the server accepts extended CONNECT
    # connection-level flow control
    cdef int64_t _send_window
    cdef int64_t _recv_window
    cdef int64_t _recv_unacked
    cdef int64_t _connection_window_target
    # streams
    cdef dict _streams                     # id -> Stream, open or half-closed only
    cdef dict _recently_reset              # ids we reset, in order: frames on them are dropped
    cdef uint32_t _next_stream_id
    cdef uint32_t _highest_remote_id
    cdef uint32_t _open_local
    cdef uint32_t _open_remote
    # shutdown
    cdef bint _goaway_sent
    cdef bint _goaway_received
    cdef uint32_t _goaway_last_id_sent
    cdef bint _terminated                  # a connection error ended this connection
    # hardening counters
    cdef uint32_t _rapid_resets            # within the window that began at _rapid_window_start
    cdef double _rapid_window_start
    cdef uint32_t _local_resets
    cdef uint32_t _empty_frames
    cdef uint32_t _pending_control
    cdef public uint32_t max_rapid_resets
    cdef public double rapid_reset_age
    cdef public uint32_t max_local_resets
    cdef public uint32_t max_continuation_frames
    cdef public uint32_t max_pending_control_frames
    cdef public uint32_t max_empty_frames
    cdef object _clock
    # HPACK
    cdef HeaderEncoder _encoder
    cdef HeaderDecoder _decoder
    # reader
    cdef int _phase
    cdef unsigned char _hdr[9]
    cdef int _hdr_have
    cdef FrameHeader _frame                # the frame being read
    cdef bytearray _payload                # partial non-DATA payload
    cdef Py_ssize_t _preface_have
    cdef int64_t _data_left
    cdef int64_t _pad_left
    cdef int64_t _skip_left
    cdef Stream _data_stream               # None: the DATA frame is being discarded
    # header block being assembled (HEADERS + CONTINUATION)
    cdef bytearray _block
    cdef uint32_t _block_stream
    cdef uint8_t _block_flags
    cdef uint32_t _block_frames
    cdef bint _block_self_dependent
    # per receive_data call
    cdef list _events
    cdef object _input                     # the buffer being parsed (bytes or a view)
    cdef const unsigned char* _input_ptr
    cdef object _input_view                # memoryview of it, created lazily
    # output
    cdef list _out
    cdef Py_ssize_t _out_bytes

    cpdef list receive_data(self, object data, Py_ssize_t length=*)
    cpdef bytes data_to_send(self)
    cpdef list data_to_send_chunks(self)
    cpdef send_data(self, uint32_t stream_id, object data, bint end_stream=*)
    cpdef acknowledge_received_data(self, uint32_t stream_id, Py_ssize_t size)
    cpdef Py_ssize_t available_window(self, uint32_t stream_id) except -1
    cpdef int state_of(self, uint32_t stream_id)          # IDLE .. CLOSED above
    cpdef bint can_send(self, uint32_t stream_id)         # open or half-closed (remote)
    cpdef bint can_receive(self, uint32_t stream_id)      # open or half-closed (local)

    cdef int _consume(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _begin_frame(self) except -1
    cdef int _begin_data(self) except -1
    cdef int _data_chunk(self, Py_ssize_t pos, Py_ssize_t length) except -1
    cdef int _end_data_frame(self) except -1
    cdef int _process_frame(self, const unsigned char* payload) except -1
    cdef int _on_headers(self, const unsigned char* payload) except -1
    cdef int _on_continuation(self, const unsigned char* payload) except -1
    cdef int _on_header_block(self, uint32_t sid, uint8_t flags, const unsigned char* block,
                              Py_ssize_t n, bint self_dependent) except -1
    cdef int _on_new_remote_stream(self, uint32_t sid, uint8_t flags, list fields,
                                   bint self_dependent) except -1
    cdef int _on_settings(self, const unsigned char* payload) except -1
    cdef int _on_settings_ack(self) except -1
    cdef int _on_rst_stream(self, uint32_t sid, uint32_t code) except -1
    cdef int _on_window_update(self, uint32_t sid, uint32_t increment) except -1
    cdef int _on_goaway(self, const unsigned char* payload) except -1
    cdef int _on_ping(self, const unsigned char* payload) except -1
    cdef int _transition(self, Stream stream, int event) except -1
    cdef int _stream_error(self, uint32_t sid, uint32_t code, str reason) except -1
    cdef int _connection_error(self, uint32_t code, str reason) except -1
    cdef int _close_stream(self, Stream stream) except -1
    cdef int _remember_reset(self, uint32_t sid) except -1
    cdef int _queue_control(self, bytes frame) except -1
    cdef int _count_empty(self, bint empty) except -1
    cdef int _credit(self, object stream, int64_t size) except -1
    cdef int _content_exceeded(self, Stream stream, int64_t size) except -1
    cdef Stream _new_local_stream(self, bint tunnel)
    cdef int _start_local_stream(self, Stream stream, list fields, bint end_stream) except -1
    cdef int _check_outgoing_request(self, bytes method, bytes scheme, bytes authority,
                                     bytes path, bytes protocol, list regular) except -1
    cdef Stream _unanswered_stream(self, uint32_t stream_id)
    cdef void _append(self, bytes chunk)
    cdef int _send_headers(self, uint32_t sid, list fields, bint end_stream) except -1
    cdef bint _is_idle(self, uint32_t sid)
    cdef Stream _writable_stream(self, uint32_t sid)
