"""The sans-IO HTTP/2 connection state machine: HBONE CONNECT tunnels, and requests
with their responses (what an L7 proxy carries).

    conn = H2Connection(client=True)
    sid = conn.open_tunnel("10.0.0.7:8080", [(b"forwarded", b'for="10.0.0.5:4711"')])
    sid = conn.send_request("GET", "https", "reviews:9080", "/ratings/7", end_stream=True)
    sock.sendall(conn.data_to_send())
    for event in conn.receive_data(sock.recv(65536)): ...

A CONNECT stream is a tunnel: its DATA is bytes, with no content rules. Every other
request and response is held to RFC 9113 section 8: its header sections are checked
(headers.pyx) and its DATA must add up to a declared content-length.

Peer misbehaviour never raises out of receive_data(): a stream error resets that
stream (RST_STREAM + StreamReset(remote=False)), a connection error queues GOAWAY
and returns ConnectionTerminated(remote=False); the caller writes the pending
bytes and closes. Caller misuse raises meshcore.errors.UsageError subclasses.
"""
import os
from enum import IntEnum
import time

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, int64_t
from libc.string cimport memcpy, memcmp

from meshcore._core.buffers cimport ZERO_COPY_MIN
from meshcore._core.frames cimport (
    FrameHeader, FrameBody, read_frame_header, read_u32, check_frame_header, parse_frame_body,
    build_frame, build_frame_header, build_rst_stream, build_window_update, build_ping,
    build_goaway, build_settings,
    FRAME_HEADER_SIZE, DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT, MAX_WINDOW_SIZE,
    DEFAULT_WINDOW_SIZE, DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING,
    GOAWAY, WINDOW_UPDATE, CONTINUATION, KNOWN_FRAME_TYPES, FLAG_END_STREAM, FLAG_ACK,
    FLAG_END_HEADERS, FLAG_PADDED, FLAG_PRIORITY, SETTING_HEADER_TABLE_SIZE,
    SETTING_ENABLE_PUSH, SETTING_MAX_CONCURRENT_STREAMS, SETTING_INITIAL_WINDOW_SIZE,
    SETTING_MAX_FRAME_SIZE, SETTING_MAX_HEADER_LIST_SIZE, SETTING_ENABLE_CONNECT_PROTOCOL,
    NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED,
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM)
from meshcore._core.hpack cimport HeaderEncoder, HeaderDecoder
from meshcore._core.headers cimport (
    parse_request, parse_response, check_trailers, check_request_head, outgoing_fields,
    outgoing_content_length, outgoing_host)
from meshcore._core.events cimport (
    RequestReceived, TunnelRequested, ResponseReceived, TunnelAccepted, TunnelRefused,
    InformationalResponseReceived, DataReceived, StreamEnded, TrailersReceived, StreamReset,
    WindowOpened, SettingsChanged, SettingsAcknowledged, PingAcknowledged, ConnectionTerminated)

from meshcore.errors import (
    ProtocolError, StreamClosedError, WindowExceededError, TooManyStreamsError, UsageError,
    error_code_name)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
cdef const char* _PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
cdef enum:
    PREFACE_LEN = 24
    RECENTLY_RESET_KEPT = 1024
    # DATA payloads up to this size are built into one bytes with their frame header:
    # copying them twice (when other frames are joined with them) costs less than the
    # header's allocation and the join
    SMALL_DATA = 1024

# docs/hbone.md, HTTP/2 settings: ztunnel's settings
DEFAULT_STREAM_WINDOW = 4 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 16 * 1024 * 1024
DEFAULT_MAX_FRAME = 1024 * 1024
SERVER_MAX_CONCURRENT_STREAMS = 200
CLIENT_ASSUMED_MAX_CONCURRENT = 100        # before the server's SETTINGS arrive
CLIENT_MAX_HEADER_LIST = 16 * 1024
SERVER_MAX_HEADER_LIST = 64 * 1024

# RFC 9113 5.1 as a table: _NEXT[state][input] is the new state, -1 = not allowed.
cdef int _NEXT[N_STATES][N_INPUTS]


cdef void _build_table():
    cdef int s, i
    for s in range(N_STATES):
        for i in range(N_INPUTS):
            _NEXT[s][i] = -1
    _NEXT[IDLE][SEND_HEADERS] = OPEN
    _NEXT[IDLE][RECV_HEADERS] = OPEN
    for s in (OPEN, HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE):
        _NEXT[s][SEND_RST] = CLOSED
        _NEXT[s][RECV_RST] = CLOSED
    _NEXT[OPEN][SEND_HEADERS] = OPEN
    _NEXT[OPEN][RECV_HEADERS] = OPEN
    _NEXT[OPEN][SEND_DATA] = OPEN
    _NEXT[OPEN][RECV_DATA] = OPEN
    _NEXT[OPEN][SEND_END_STREAM] = HALF_CLOSED_LOCAL
    _NEXT[OPEN][RECV_END_STREAM] = HALF_CLOSED_REMOTE
    _NEXT[HALF_CLOSED_LOCAL][RECV_HEADERS] = HALF_CLOSED_LOCAL
    _NEXT[HALF_CLOSED_LOCAL][RECV_DATA] = HALF_CLOSED_LOCAL
    _NEXT[HALF_CLOSED_LOCAL][RECV_END_STREAM] = CLOSED
    _NEXT[HALF_CLOSED_REMOTE][SEND_HEADERS] = HALF_CLOSED_REMOTE
    _NEXT[HALF_CLOSED_REMOTE][SEND_DATA] = HALF_CLOSED_REMOTE
    _NEXT[HALF_CLOSED_REMOTE][SEND_END_STREAM] = CLOSED


_build_table()

STATE_NAMES = ("idle", "open", "half-closed (local)", "half-closed (remote)", "closed")


class StreamState(IntEnum):
    """RFC 9113 5.1 stream states, as state_of() answers them."""
    IDLE = 0
    OPEN = 1
    HALF_CLOSED_LOCAL = 2
    HALF_CLOSED_REMOTE = 3
    CLOSED = 4
INPUT_NAMES = ("send HEADERS", "receive HEADERS", "send DATA", "receive DATA",
               "send END_STREAM", "receive END_STREAM", "send RST_STREAM", "receive RST_STREAM")


def next_state(int state, int stream_input):
    """The transition table, for table tests: new state or -1."""
    if not (0 <= state < N_STATES and 0 <= stream_input < N_INPUTS):
        raise ValueError("state or input out of range")
    return _NEXT[state][stream_input]


cdef bytes _field_bytes(object value):
    if isinstance(value, str):
        return (<str>value).encode("latin-1")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise UsageError(f"a field value must be str or bytes, not {type(value).__name__}")


cdef class Stream:
    def __repr__(self):
        return f"<Stream {self.id} {STATE_NAMES[self.state]}>"


cdef class H2Connection:
    """One HTTP/2 connection carrying CONNECT tunnels and requests. See the module docstring."""

    def __init__(self, bint client, *, max_concurrent_streams=None,
                 initial_window_size=DEFAULT_STREAM_WINDOW,
                 connection_window_size=DEFAULT_CONNECTION_WINDOW,
                 max_frame_size=DEFAULT_MAX_FRAME, max_header_list_size=None,
                 header_table_size=4096, max_rapid_resets=20, rapid_reset_age=1.0,
                 max_local_resets=1024, max_continuation_frames=8,
                 max_pending_control_frames=1000, max_empty_frames=1, clock=time.monotonic,
                 enable_connect_protocol=False):
        if not DEFAULT_MAX_FRAME_SIZE <= max_frame_size <= MAX_FRAME_SIZE_LIMIT:
            raise ValueError(f"max_frame_size {max_frame_size} outside 16384..16777215")
        if not 0 <= initial_window_size <= MAX_WINDOW_SIZE:
            raise ValueError(f"initial_window_size {initial_window_size} outside 0..2^31-1")
        if not DEFAULT_WINDOW_SIZE <= connection_window_size <= MAX_WINDOW_SIZE:
            raise ValueError(f"connection_window_size {connection_window_size} outside 65535..2^31-1")
        if enable_connect_protocol and client:
            raise ValueError("enable_connect_protocol is a server setting (RFC 8441: the server "
                             "accepts extended CONNECT)")
        self.client = client
        self._local_connect_protocol = enable_connect_protocol
        self._remote_connect_protocol = False
        if max_concurrent_streams is None:
            max_concurrent_streams = CLIENT_ASSUMED_MAX_CONCURRENT if client else SERVER_MAX_CONCURRENT_STREAMS
        if max_header_list_size is None:
            max_header_list_size = CLIENT_MAX_HEADER_LIST if client else SERVER_MAX_HEADER_LIST
        self._local_max_frame_size = max_frame_size
        self._local_max_concurrent = max_concurrent_streams
        self._local_max_header_list = max_header_list_size
        self._local_initial_window = initial_window_size
        self._acked_initial_window = DEFAULT_WINDOW_SIZE
        self._remote_max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self._remote_max_concurrent = CLIENT_ASSUMED_MAX_CONCURRENT if client else 0xffffffff
        self._remote_initial_window = DEFAULT_WINDOW_SIZE
        self._remote_max_header_list = 0xffffffff
        self._remote_settings_seen = False
        self._send_window = DEFAULT_WINDOW_SIZE
        self._recv_window = connection_window_size
        self._recv_unacked = 0
        self._connection_window_target = connection_window_size
        self._streams = {}
        self._recently_reset = {}
        self._next_stream_id = 1 if client else 2
        self._highest_remote_id = 0
        self._open_local = self._open_remote = 0
        self._goaway_sent = self._goaway_received = self._terminated = False
        self._goaway_last_id_sent = 0
        self._rapid_resets = self._local_resets = self._empty_frames = self._pending_control = 0
        self.max_rapid_resets = max_rapid_resets
        self.rapid_reset_age = rapid_reset_age
        self.max_local_resets = max_local_resets
        self.max_continuation_frames = max_continuation_frames
        self.max_pending_control_frames = max_pending_control_frames
        self.max_empty_frames = max_empty_frames
        self._clock = clock
        self._encoder = HeaderEncoder()
        self._decoder = HeaderDecoder(max_header_list_size, header_table_size)
        self._phase = READ_FRAME_HEADER if client else READ_PREFACE
        self._hdr_have = 0
        self._payload = bytearray()
        self._preface_have = 0
        self._data_stream = None
        self._block = bytearray()
        self._block_stream = 0
        self._out = []
        self._out_bytes = 0
        # the connection preface: client magic, then SETTINGS, then the larger
        # connection window (docs/hbone.md, HTTP/2 settings: WINDOW_UPDATE on stream 0 after the preface)
        settings = [
            (SETTING_HEADER_TABLE_SIZE, header_table_size),
            (SETTING_ENABLE_PUSH, 0),
            (SETTING_MAX_CONCURRENT_STREAMS, max_concurrent_streams),
            (SETTING_INITIAL_WINDOW_SIZE, initial_window_size),
            (SETTING_MAX_FRAME_SIZE, max_frame_size),
            (SETTING_MAX_HEADER_LIST_SIZE, max_header_list_size),
        ]
        if enable_connect_protocol:
            settings.append((SETTING_ENABLE_CONNECT_PROTOCOL, 1))
        self._pending_local_settings = [settings]
        self._advertised = dict(settings)
        if client:
            self._append(PREFACE)
        self._append(build_settings(settings, False))
        if connection_window_size > DEFAULT_WINDOW_SIZE:
            self._append(build_window_update(0, connection_window_size - DEFAULT_WINDOW_SIZE))

    # ------------------------------------------------------------------ state

    @property
    def open_streams(self):
        """Number of streams not yet closed (ours + the peer's)."""
        return self._open_local + self._open_remote

    @property
    def open_local_streams(self):
        return self._open_local

    @property
    def remote_max_concurrent_streams(self):
        return self._remote_max_concurrent

    @property
    def remote_settings_received(self):
        return self._remote_settings_seen

    @property
    def peer_accepts_extended_connect(self):
        """The server sent SETTINGS_ENABLE_CONNECT_PROTOCOL = 1: open_tunnel() may carry
        a protocol (RFC 8441)."""
        return self._remote_connect_protocol

    @property
    def outbound_window(self):
        """Bytes the connection-level window still allows us to send."""
        return self._send_window

    @property
    def inbound_window(self):
        return self._recv_window

    @property
    def goaway_received(self):
        return self._goaway_received

    @property
    def goaway_sent(self):
        return self._goaway_sent

    @property
    def terminated(self):
        """True once a connection error (ours) ended the connection."""
        return self._terminated

    @property
    def highest_remote_stream_id(self):
        return self._highest_remote_id

    @property
    def pending_bytes(self):
        """Bytes queued for data_to_send()."""
        return self._out_bytes

    cpdef int state_of(self, uint32_t stream_id):
        """The stream's state (RFC 9113 5.1) as a StreamState value."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return (<Stream>stream).state
        return IDLE if self._is_idle(stream_id) else CLOSED

    cpdef bint can_send(self, uint32_t stream_id):
        """We may still send on it: open or half-closed (remote)."""
        cdef int state = self.state_of(stream_id)
        return state == OPEN or state == HALF_CLOSED_REMOTE

    cpdef bint can_receive(self, uint32_t stream_id):
        """The peer may still send on it: open or half-closed (local)."""
        cdef int state = self.state_of(stream_id)
        return state == OPEN or state == HALF_CLOSED_LOCAL

    def stream_state(self, uint32_t stream_id):
        """For people: 'idle', 'open', 'half-closed (local)', 'half-closed (remote)' or
        'closed'. Code asks state_of(), can_send() or can_receive()."""
        return STATE_NAMES[self.state_of(stream_id)]

    cdef bint _is_idle(self, uint32_t sid):
        if (sid & 1) == (1 if self.client else 0):     # ours
            return sid >= self._next_stream_id
        return sid > self._highest_remote_id

    # ---------------------------------------------------------------- output

    cdef inline void _append(self, bytes chunk):
        self._out.append(chunk)
        self._out_bytes += PyBytes_GET_SIZE(chunk)

    cpdef bytes data_to_send(self):
        """All bytes queued for the peer, in order; the queue is emptied."""
        cdef list out = self._out
        self._pending_control = 0
        if not out:
            return b""
        self._out = []
        self._out_bytes = 0
        return b"".join(out)      # a lone bytes item comes back as it is, uncopied

    cpdef list data_to_send_chunks(self):
        """data_to_send() for transport.writelines(): the queue as a list in which
        payloads of 64 KiB and more stand as they were given (no copy) and everything
        between them is joined (a small piece of its own would cost a TLS record)."""
        cdef list out = self._out, chunks, small
        self._pending_control = 0
        if not out:
            return []
        self._out = []
        self._out_bytes = 0
        if len(out) == 1:
            return out          # one frame: nothing to join
        chunks, small = [], []
        for item in out:
            if len(item) < ZERO_COPY_MIN:
                small.append(item)
            else:
                if small:
                    chunks.append(b"".join(small))
                    small = []
                chunks.append(item)
        if small:
            chunks.append(b"".join(small))
        return chunks

    cdef int _queue_control(self, bytes frame) except -1:
        """A frame sent in answer to the peer (ACKs, resets): counted, so a peer that
        makes us answer faster than we can write is cut off (CVE-2019-9512/9514/9515)."""
        self._append(frame)
        self._pending_control += 1
        if self._pending_control > self.max_pending_control_frames and not self._terminated:
            self._connection_error(
                ENHANCE_YOUR_CALM,
                f"more than {self.max_pending_control_frames} control frames queued unsent")
        return 0

    # --------------------------------------------------------------- commands

    cdef Stream _new_local_stream(self, bint tunnel):
        """A stream for a request we are about to send; registered by the caller once
        its header section has passed every check."""
        if not self.client:
            raise UsageError("only the client side opens streams (push is disabled)")
        if self._terminated or self._goaway_received or self._goaway_sent:
            raise StreamClosedError("the connection is going away; open a new one")
        if self._open_local >= self._remote_max_concurrent:
            raise TooManyStreamsError(
                f"the peer allows {self._remote_max_concurrent} concurrent streams")
        if self._next_stream_id > MAX_WINDOW_SIZE:
            raise StreamClosedError("stream ids exhausted on this connection; open a new one")
        cdef Stream stream = Stream.__new__(Stream)
        stream.id = self._next_stream_id
        stream.state = IDLE
        stream.local = True
        stream.send_window = self._remote_initial_window
        stream.recv_window = self._acked_initial_window
        stream.recv_unacked = 0
        stream.opened_at = 0.0
        stream.headers_received = False
        stream.tunnel = tunnel
        stream.recv_content_left = -1
        stream.send_content_left = -1
        return stream

    cdef int _start_local_stream(self, Stream stream, list fields, bint end_stream) except -1:
        self._next_stream_id += 2
        self._streams[stream.id] = stream
        self._open_local += 1
        self._transition(stream, SEND_HEADERS)
        self._send_headers(stream.id, fields, end_stream)
        if end_stream:
            self._transition(stream, SEND_END_STREAM)
        return 0

    def open_tunnel(self, authority, headers=(), *, protocol=None, scheme=None, path=None):
        """Client: send CONNECT for `authority` ("ip:port"); returns the new stream id.

        With `protocol` (and then `scheme` and `path`), an extended CONNECT (RFC 8441),
        which the server must have enabled (peer_accepts_extended_connect)."""
        cdef Stream stream = self._new_local_stream(True)
        if isinstance(authority, str):
            authority = authority.encode("latin-1")
        if not authority:
            raise UsageError("CONNECT needs an authority (host:port)")
        cdef list fields
        if protocol is None and scheme is None and path is None:
            fields = [(b":method", b"CONNECT"), (b":authority", bytes(authority))]
            fields.extend(outgoing_fields(headers))
        else:
            if protocol is None:
                raise UsageError("a CONNECT with :scheme or :path is an extended CONNECT: "
                                 "give its protocol too")
            if not self._remote_connect_protocol:
                raise UsageError("the server has not enabled extended CONNECT "
                                 "(SETTINGS_ENABLE_CONNECT_PROTOCOL)")
            if scheme is None or path is None:
                raise UsageError("an extended CONNECT needs a scheme and a path")
            fields = [(b":method", b"CONNECT"), (b":protocol", _field_bytes(protocol)),
                      (b":scheme", _field_bytes(scheme)), (b":authority", bytes(authority)),
                      (b":path", _field_bytes(path))]
            regular = outgoing_fields(headers)
            self._check_outgoing_request(b"CONNECT", fields[2][1], fields[3][1], fields[4][1],
                                         fields[1][1], regular)
            fields.extend(regular)
        self._start_local_stream(stream, fields, False)
        return stream.id

    def send_request(self, method, scheme, authority, path, headers=(), bint end_stream=False):
        """Client: send a request's header section (END_STREAM with it when there is no
        content); returns the new stream id. `authority` None leaves :authority out
        (a Host field may carry it then). A content-length among `headers` is held to:
        send_data() refuses more, and ending the stream with less."""
        cdef bytes m = _field_bytes(method)
        if m == b"CONNECT":
            raise UsageError("CONNECT opens a tunnel: use open_tunnel()")
        cdef Stream stream = self._new_local_stream(False)
        cdef bytes sch = _field_bytes(scheme)
        cdef bytes auth = None if authority is None else _field_bytes(authority)
        cdef bytes pth = _field_bytes(path)
        cdef list regular = outgoing_fields(headers)
        self._check_outgoing_request(m, sch, auth, pth, None, regular)
        cdef list fields = [(b":method", m), (b":scheme", sch)]
        if auth is not None:
            fields.append((b":authority", auth))
        fields.append((b":path", pth))
        fields.extend(regular)
        stream.head = m == b"HEAD"
        stream.send_content_left = outgoing_content_length(regular)
        if end_stream and stream.send_content_left > 0:
            raise UsageError(f"the request declares content-length {stream.send_content_left} "
                             "but ends with its header section")
        self._start_local_stream(stream, fields, end_stream)
        return stream.id

    cdef int _check_outgoing_request(self, bytes method, bytes scheme, bytes authority,
                                     bytes path, bytes protocol, list regular) except -1:
        try:
            check_request_head(method, scheme, authority, path, protocol, outgoing_host(regular),
                               True)
        except ProtocolError as exc:
            raise UsageError(f"refusing to send a malformed request: {exc.args[0]}") from None
        return 0

    cdef Stream _unanswered_stream(self, uint32_t stream_id):
        if self.client:
            raise UsageError("only the server side sends responses")
        cdef Stream stream = self._writable_stream(stream_id)
        if stream.answered:
            raise UsageError(f"stream {stream_id} already has its final response "
                             "(send_trailers() ends it with trailers)")
        if _NEXT[stream.state][SEND_HEADERS] < 0:
            raise StreamClosedError(
                f"stream {stream_id} is {STATE_NAMES[stream.state]}: cannot send a response",
                stream_id)
        return stream

    def send_informational(self, uint32_t stream_id, int status, headers=()):
        """Server: an informational (1xx) response; any number may precede the final
        one. 101 does not exist in HTTP/2 (RFC 9113 8.6)."""
        if not 100 <= status <= 199:
            raise UsageError(f"status {status} is not informational (1xx): use send_response()")
        if status == 101:
            raise UsageError("status 101 (Switching Protocols) does not exist in HTTP/2; "
                             "extended CONNECT replaces it")
        cdef Stream stream = self._unanswered_stream(stream_id)
        cdef list fields = [(b":status", str(status).encode())]
        fields.extend(outgoing_fields(headers))
        self._send_headers(stream_id, fields, False)

    def send_response(self, uint32_t stream_id, int status, headers=(), bint end_stream=False):
        """Server: the final response's header section. 200 accepts a tunnel; anything
        else refuses it (and by default ends the stream). On a request stream, a
        content-length among `headers` is held to (none is sent after HEAD, 204, 304)."""
        if not 200 <= status <= 999:
            if 100 <= status <= 199:
                raise UsageError(f"status {status} is informational: use send_informational()")
            raise UsageError(f"status {status} is not a three-digit final status (200-999)")
        cdef Stream stream = self._unanswered_stream(stream_id)
        cdef list fields = [(b":status", str(status).encode())]
        cdef list regular = outgoing_fields(headers)
        cdef int64_t length = outgoing_content_length(regular) if regular else -1
        if stream.tunnel:
            if length >= 0 and 200 <= status <= 299:
                raise UsageError("a 2xx response to CONNECT carries no content-length "
                                 "(RFC 9110 9.3.6): the tunnel's bytes are not content")
        else:
            if status == 204 and length >= 0:
                raise UsageError("a 204 response carries no content-length (RFC 9110 8.6)")
            stream.send_content_left = 0 if stream.head or status == 204 or status == 304 else length
            if end_stream and stream.send_content_left > 0:
                raise UsageError(f"the response declares content-length {length} "
                                 "but ends with its header section")
        fields.extend(regular)
        self._transition(stream, SEND_HEADERS)
        self._send_headers(stream_id, fields, end_stream)
        stream.answered = True
        stream.established = stream.tunnel and status < 300
        if end_stream:
            self._transition(stream, SEND_END_STREAM)

    def send_trailers(self, uint32_t stream_id, headers):
        """Either side: end the stream with a trailer section (HEADERS with END_STREAM,
        regular fields only), after the content."""
        cdef Stream stream = self._writable_stream(stream_id)
        if not self.client and not stream.answered:
            raise UsageError(f"stream {stream_id} has no final response yet: trailers come after it")
        if stream.tunnel:
            raise UsageError(f"stream {stream_id} is a CONNECT tunnel: only DATA may follow its "
                             "header sections (RFC 9113 8.5)")
        if _NEXT[stream.state][SEND_END_STREAM] < 0:
            raise StreamClosedError(
                f"stream {stream_id} is {STATE_NAMES[stream.state]}: cannot send trailers", stream_id)
        if stream.send_content_left > 0:
            raise UsageError(f"trailers would end stream {stream_id} with {stream.send_content_left} "
                             "bytes of its declared content-length unsent")
        cdef list fields = outgoing_fields(headers)
        self._transition(stream, SEND_HEADERS)
        self._send_headers(stream_id, fields, True)
        self._transition(stream, SEND_END_STREAM)

    def accept_tunnel(self, uint32_t stream_id, headers=()):
        """Server: 200 for a CONNECT; data may flow both ways from here."""
        self.send_response(stream_id, 200, headers)

    def refuse_tunnel(self, uint32_t stream_id, int status, headers=()):
        """Server: a final non-200 status with END_STREAM (docs/hbone.md, Responses: 400, 401, 503)."""
        if status == 200:
            raise UsageError("refuse_tunnel with 200; use accept_tunnel")
        self.send_response(stream_id, status, headers, True)

    cdef int _send_headers(self, uint32_t sid, list fields, bint end_stream) except -1:
        cdef bytes block = self._encoder.encode(fields)
        cdef Py_ssize_t n = len(block), chunk = self._remote_max_frame_size, pos
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(block)
        cdef uint8_t flags = FLAG_END_STREAM if end_stream else 0
        if n <= chunk:
            self._append(build_frame(HEADERS, flags | FLAG_END_HEADERS, sid, p, n))
            return 0
        self._append(build_frame(HEADERS, flags, sid, p, chunk))
        pos = chunk
        while pos < n:
            if n - pos <= chunk:
                self._append(build_frame(CONTINUATION, FLAG_END_HEADERS, sid, p + pos, n - pos))
            else:
                self._append(build_frame(CONTINUATION, 0, sid, p + pos, chunk))
            pos += chunk
        return 0

    cdef Stream _writable_stream(self, uint32_t sid):
        stream = self._streams.get(sid)
        if stream is None:
            raise StreamClosedError(f"stream {sid} is {self.stream_state(sid)}", sid)
        return <Stream>stream

    def declared_content_left(self, uint32_t stream_id):
        """Bytes of content still to send on this stream under what its header section
        declared: -1 when it declared no content-length, 0 after HEAD, 204 and 304."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(f"stream {stream_id} is {self.stream_state(stream_id)}", stream_id)
        return (<Stream>stream).send_content_left

    cpdef Py_ssize_t available_window(self, uint32_t stream_id) except -1:
        """How many bytes send_data() accepts on this stream right now."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        cdef int64_t w = (<Stream>stream).send_window
        if w > self._send_window:
            w = self._send_window
        return w if w > 0 else 0

    cpdef send_data(self, uint32_t stream_id, object data, bint end_stream=False):
        """Queue `data` on a stream, split to the peer's frame size. Raises
        WindowExceededError if it does not fit in the flow-control windows (see
        available_window()) and StreamClosedError if the stream cannot send.
        Payloads of 64 KiB and more are queued without a copy: like uvloop's
        transport.write(), the caller must not modify them until they are sent."""
        cdef Stream stream = self._writable_stream(stream_id)
        if _NEXT[stream.state][SEND_DATA] < 0:
            raise StreamClosedError(
                f"stream {stream_id} is {STATE_NAMES[stream.state]}: cannot send DATA", stream_id)
        if not stream.local and not stream.answered:
            raise UsageError(f"stream {stream_id} has no final response yet: content comes after it")
        cdef object payload
        cdef Py_ssize_t n, pos = 0, size
        if type(data) is bytes:
            payload = data
            n = PyBytes_GET_SIZE(data)
        else:
            payload = memoryview(data)
            if payload.itemsize != 1 or payload.ndim != 1:
                payload = payload.cast("B")
            n = payload.nbytes
            if n < ZERO_COPY_MIN:
                payload = bytes(payload)  # cheap, and the caller may reuse its buffer at once
        cdef Py_ssize_t frame_max = self._remote_max_frame_size
        if n > stream.send_window or n > self._send_window:
            raise WindowExceededError(
                f"{n} bytes exceed the flow-control window of stream {stream_id} "
                f"(stream {stream.send_window}, connection {self._send_window})")
        if stream.send_content_left >= 0:
            if n > stream.send_content_left:
                raise UsageError(
                    f"{n} bytes exceed what stream {stream_id} declared: {stream.send_content_left} "
                    "bytes of content left (content-length; none after HEAD, 204, 304)")
            if end_stream and n < stream.send_content_left:
                raise UsageError(
                    f"ending stream {stream_id} with {stream.send_content_left - n} bytes of its "
                    "declared content-length unsent")
            stream.send_content_left -= n
        stream.send_window -= n
        self._send_window -= n
        if 0 < n <= SMALL_DATA and n <= frame_max:
            # header and payload as one object: data_to_send_chunks() would copy the
            # payload anyway, and a lone small frame then goes out as it is (no header
            # object, no join)
            self._append(build_frame(DATA, FLAG_END_STREAM if end_stream else 0, stream_id,
                                     <const unsigned char*>PyBytes_AS_STRING(payload), n))
        elif n <= frame_max:
            self._append(build_frame_header(n, DATA, FLAG_END_STREAM if end_stream else 0, stream_id))
            if n:
                self._out.append(payload)
                self._out_bytes += n
        else:
            view = memoryview(payload)
            while pos < n:
                size = n - pos if n - pos < frame_max else frame_max
                self._append(build_frame_header(
                    size, DATA, FLAG_END_STREAM if end_stream and pos + size == n else 0, stream_id))
                self._out.append(view[pos:pos + size])
                self._out_bytes += size
                pos += size
        if end_stream:
            self._transition(stream, SEND_END_STREAM)

    def end_stream(self, uint32_t stream_id):
        """Half-close our side: an empty DATA frame with END_STREAM."""
        self.send_data(stream_id, b"", True)

    def reset_stream(self, uint32_t stream_id, uint32_t error_code=CANCEL):
        """Abort a stream with RST_STREAM (CANCEL by default)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise StreamClosedError(f"stream {stream_id} is idle", stream_id)
            return
        self._append(build_rst_stream(stream_id, error_code))
        self._transition(<Stream>stream, SEND_RST)
        self._remember_reset(stream_id)

    cpdef acknowledge_received_data(self, uint32_t stream_id, Py_ssize_t size):
        """The application consumed `size` bytes of DataReceived on this stream (acknowledge
        them even after the stream ended: the connection window needs them back)."""
        cdef int64_t outstanding = self._connection_window_target - self._recv_window - self._recv_unacked
        if size < 0 or size > outstanding:
            raise UsageError(f"acknowledging {size} bytes, but only {outstanding} are unacknowledged")
        self._credit(self._streams.get(stream_id), size)

    cdef int _credit(self, object stream_obj, int64_t size) except -1:
        """Consumed bytes go back to the peer in WINDOW_UPDATEs once half a window has
        accumulated: few frames, and the peer is never starved."""
        self._recv_unacked += size
        if self._recv_unacked >= self._connection_window_target // 2:
            self._append(build_window_update(0, <uint32_t>self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        if stream_obj is None:
            return 0
        cdef Stream s = <Stream>stream_obj
        if s.state == HALF_CLOSED_REMOTE:     # the peer sends no more: no window needed
            return 0
        s.recv_unacked += size
        if s.recv_unacked >= self._acked_initial_window // 2 and s.recv_unacked > 0:
            self._append(build_window_update(s.id, <uint32_t>s.recv_unacked))
            s.recv_window += s.recv_unacked
            s.recv_unacked = 0
        return 0

    def ping(self, opaque_data=None):
        """Send a PING; returns its 8 opaque bytes (PingAcknowledged carries them back)."""
        cdef bytes opaque = os.urandom(8) if opaque_data is None else bytes(opaque_data)
        if len(opaque) != 8:
            raise UsageError("PING opaque data must be 8 bytes")
        self._append(build_ping(<const unsigned char*>PyBytes_AS_STRING(opaque), False))
        return opaque

    def close(self, uint32_t error_code=NO_ERROR, last_stream_id=None, additional_data=b""):
        """Send GOAWAY. With NO_ERROR, streams up to last_stream_id (default: the last
        one the peer opened) may finish; the peer's later streams are refused."""
        cdef uint32_t last = self._highest_remote_id if last_stream_id is None else last_stream_id
        self._goaway_sent = True
        self._goaway_last_id_sent = last
        self._append(build_goaway(last, error_code, bytes(additional_data)))

    def local_settings(self):
        """Settings we advertised, {identifier: value}."""
        return dict(self._advertised)

    def remote_settings(self):
        return {
            SETTING_MAX_FRAME_SIZE: self._remote_max_frame_size,
            SETTING_MAX_CONCURRENT_STREAMS: self._remote_max_concurrent,
            SETTING_INITIAL_WINDOW_SIZE: self._remote_initial_window,
            SETTING_MAX_HEADER_LIST_SIZE: self._remote_max_header_list,
        }

    # ------------------------------------------------------------ stream life

    cdef int _transition(self, Stream stream, int event) except -1:
        cdef int new = _NEXT[stream.state][event]
        if new < 0:
            raise StreamClosedError(
                f"stream {stream.id}: cannot {INPUT_NAMES[event]} when {STATE_NAMES[stream.state]}",
                stream.id)
        stream.state = new
        if new == CLOSED:
            self._close_stream(stream)
        return 0

    cdef int _close_stream(self, Stream stream) except -1:
        if self._streams.pop(stream.id, None) is None:
            return 0
        if not self._streams:
            self._streams = {}      # an emptied dict keeps its table; an idle connection need not
        stream.state = CLOSED
        if stream.local:
            self._open_local -= 1
        else:
            self._open_remote -= 1
        return 0

    cdef int _remember_reset(self, uint32_t sid) except -1:
        self._recently_reset[sid] = None
        if len(self._recently_reset) > RECENTLY_RESET_KEPT:
            del self._recently_reset[next(iter(self._recently_reset))]
        return 0

    cdef int _stream_error(self, uint32_t sid, uint32_t code, str reason) except -1:
        """Reset one stream because of the peer; the rest of the connection goes on."""
        stream = self._streams.get(sid)
        self._queue_control(build_rst_stream(sid, code))
        if stream is not None:
            self._close_stream(<Stream>stream)
        self._remember_reset(sid)
        cdef StreamReset ev = StreamReset.__new__(StreamReset)
        ev.stream_id = sid
        ev.error_code = code
        ev.remote = False
        ev.reason = reason
        self._events.append(ev)
        # MadeYouReset (CVE-2025-8671): streams we had to reset count too
        self._local_resets += 1
        if self._local_resets > self.max_local_resets and not self._terminated:
            self._connection_error(ENHANCE_YOUR_CALM,
                                   f"more than {self.max_local_resets} streams reset for errors")
        return 0

    cdef int _connection_error(self, uint32_t code, str reason) except -1:
        if self._terminated:
            return 0
        self._terminated = True
        self._phase = READ_NOTHING
        self._append(build_goaway(self._highest_remote_id, code, reason.encode("utf-8")[:256]))
        self._goaway_sent = True
        self._goaway_last_id_sent = self._highest_remote_id
        cdef ConnectionTerminated ev = ConnectionTerminated.__new__(ConnectionTerminated)
        ev.error_code = code
        ev.last_stream_id = self._highest_remote_id
        ev.additional_data = b""
        ev.remote = False
        ev.reason = reason
        self._events.append(ev)
        return 0

    # ----------------------------------------------------------------- input

    cpdef list receive_data(self, object data, Py_ssize_t length=-1):
        """Feed bytes read from the peer (the first `length` bytes of `data` when it
        is given: a reused read buffer needs no view of its own per read); returns
        the events they complete."""
        cdef list events = []
        cdef Py_buffer view
        cdef Py_ssize_t n
        if self._terminated:
            return events
        # parsed where it lies (bytes, or the caller's reused read buffer); DATA
        # chunks reference it only when large (see _data_chunk)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        n = view.len
        if length >= 0:
            if length > n:
                PyBuffer_Release(&view)
                raise ValueError(f"{length} bytes to read from a buffer of {n}")
            n = length
        self._events = events
        self._input = data
        self._input_ptr = <const unsigned char*>view.buf
        self._input_view = None
        try:
            self._consume(self._input_ptr, n)
        except ProtocolError as exc:
            # stream errors are handled where they arise; whatever reaches here ends
            # the connection, since the reader's place in the byte stream is lost
            self._connection_error(exc.error_code, exc.args[0])
        except Exception as exc:
            # a bug of ours must not take the process down with it (tests assert it
            # never happens: INTERNAL_ERROR is their signal)
            self._connection_error(INTERNAL_ERROR, f"internal error: {exc!r}")
        finally:
            self._events = None
            self._input = None
            self._input_ptr = NULL
            self._input_view = None
            PyBuffer_Release(&view)
        return events

    cdef int _consume(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0, take, need
        cdef bytes whole
        while pos < n:
            phase = self._phase
            if phase == READ_DATA_BODY:
                take = n - pos if n - pos < self._data_left else self._data_left
                if take:
                    self._data_chunk(pos, take)
                    pos += take
                    self._data_left -= take
                if self._data_left == 0:
                    if self._pad_left:
                        self._phase = READ_DATA_PADDING
                    else:
                        self._end_data_frame()
            elif phase == READ_FRAME_HEADER:
                if self._hdr_have == 0 and n - pos >= FRAME_HEADER_SIZE:
                    self._frame = read_frame_header(p + pos)
                    pos += FRAME_HEADER_SIZE
                else:
                    take = FRAME_HEADER_SIZE - self._hdr_have
                    if take > n - pos:
                        take = n - pos
                    memcpy(self._hdr + self._hdr_have, p + pos, take)
                    self._hdr_have += take
                    pos += take
                    if self._hdr_have < FRAME_HEADER_SIZE:
                        break
                    self._hdr_have = 0
                    self._frame = read_frame_header(self._hdr)
                try:
                    self._begin_frame()
                except ProtocolError as exc:
                    if not exc.stream_id:
                        raise
                    self._skip_left = self._frame.length
                    self._phase = READ_SKIP if self._skip_left else READ_FRAME_HEADER
                    self._stream_error(exc.stream_id, exc.error_code, exc.args[0])
            elif phase == READ_PAYLOAD:
                need = self._frame.length - len(self._payload)
                if len(self._payload) == 0 and n - pos >= need:
                    self._phase = READ_FRAME_HEADER
                    self._process_frame(p + pos)
                    pos += need
                else:
                    take = need if need < n - pos else n - pos
                    self._payload += PyBytes_FromStringAndSize(<const char*>p + pos, take)
                    pos += take
                    if take < need:
                        break
                    whole = bytes(self._payload)
                    self._payload.clear()
                    self._phase = READ_FRAME_HEADER
                    self._process_frame(<const unsigned char*>PyBytes_AS_STRING(whole))
            elif phase == READ_DATA_PAD_LENGTH:
                self._pad_left = p[pos]
                pos += 1
                if self._pad_left > <int64_t>self._frame.length - 1:
                    raise ProtocolError(
                        f"DATA padding of {self._pad_left} bytes exceeds the "
                        f"{self._frame.length}-byte payload")
                self._data_left = self._frame.length - 1 - self._pad_left
                self._phase = READ_DATA_BODY
                if self._data_stream is not None:
                    # the pad-length byte and the padding are ours to consume, not the app's
                    self._credit(self._data_stream, 1 + self._pad_left)
                    if (self._data_stream.recv_content_left >= 0
                            and self._content_exceeded(self._data_stream, self._data_left)):
                        self._credit(None, self._data_left)
                        self._data_stream = None
                if self._data_left == 0 and self._pad_left == 0:
                    self._end_data_frame()
            elif phase == READ_DATA_PADDING or phase == READ_SKIP:
                if phase == READ_SKIP:
                    take = n - pos if n - pos < self._skip_left else self._skip_left
                    self._skip_left -= take
                    done = self._skip_left == 0
                else:
                    take = n - pos if n - pos < self._pad_left else self._pad_left
                    self._pad_left -= take
                    done = self._pad_left == 0
                pos += take
                if done:
                    if phase == READ_SKIP:
                        self._phase = READ_FRAME_HEADER
                    else:
                        self._end_data_frame()
            elif phase == READ_PREFACE:
                take = PREFACE_LEN - self._preface_have
                if take > n - pos:
                    take = n - pos
                if memcmp(p + pos, _PREFACE + self._preface_have, take) != 0:
                    raise ProtocolError("invalid connection preface (not an HTTP/2 client)")
                self._preface_have += take
                pos += take
                if self._preface_have == PREFACE_LEN:
                    self._phase = READ_FRAME_HEADER
            else:   # READ_NOTHING
                break
        return 0

    cdef int _begin_frame(self) except -1:
        cdef FrameHeader* h = &self._frame
        check_frame_header(h, self._local_max_frame_size)
        if not self._remote_settings_seen and h.type != SETTINGS:
            raise ProtocolError(f"first frame is {_type_name(h.type)}, not SETTINGS")
        if self._block_stream:
            if h.type != CONTINUATION or h.stream_id != self._block_stream:
                raise ProtocolError(
                    f"{_type_name(h.type)} on stream {h.stream_id} inside the header block "
                    f"of stream {self._block_stream} (CONTINUATION expected)")
        elif h.type == CONTINUATION:
            raise ProtocolError(f"CONTINUATION on stream {h.stream_id} without a header block")
        if h.type == DATA:
            return self._begin_data()
        if h.type == HEADERS or h.type == CONTINUATION:
            if len(self._block) + h.length > self._local_max_header_list:
                raise ProtocolError(
                    f"header block on stream {h.stream_id} exceeds {self._local_max_header_list} "
                    "bytes", ENHANCE_YOUR_CALM)
        if h.type >= KNOWN_FRAME_TYPES and h.length:
            self._skip_left = h.length         # ignored (RFC 9113 4.1): never buffered
            self._phase = READ_SKIP
        elif h.length == 0:
            self._process_frame(NULL)
        else:
            self._phase = READ_PAYLOAD
        return 0

    cdef int _begin_data(self) except -1:
        cdef FrameHeader* h = &self._frame
        cdef uint32_t sid = h.stream_id
        cdef Stream stream = None
        if h.length > self._recv_window:
            raise ProtocolError(
                f"DATA of {h.length} bytes on stream {sid} exceeds the connection window "
                f"({self._recv_window})", FLOW_CONTROL_ERROR)
        self._recv_window -= h.length
        self._data_stream = None
        obj = self._streams.get(sid)
        if obj is None:
            if self._is_idle(sid):
                raise ProtocolError(f"DATA on idle stream {sid}")
            # closed: the whole frame is dropped, its connection window returned
            self._credit(None, h.length)
            if sid not in self._recently_reset:
                self._stream_error(sid, STREAM_CLOSED, f"DATA on closed stream {sid}")
        else:
            stream = <Stream>obj
            if _NEXT[stream.state][RECV_DATA] < 0:
                self._credit(None, h.length)
                self._stream_error(sid, STREAM_CLOSED,
                                   f"DATA on {STATE_NAMES[stream.state]} stream {sid}")
            elif not stream.headers_received:
                self._credit(None, h.length)
                self._stream_error(sid, PROTOCOL_ERROR, f"DATA before HEADERS on stream {sid}")
            elif h.length > stream.recv_window:
                self._credit(None, h.length)
                self._stream_error(
                    sid, FLOW_CONTROL_ERROR,
                    f"DATA of {h.length} bytes exceeds the window of stream {sid} ({stream.recv_window})")
            else:
                stream.recv_window -= h.length
                self._data_stream = stream
                # content is counted before any of it is delivered (padded: once the
                # padding is known), so the application never sees more than declared
                if (stream.recv_content_left >= 0 and not h.flags & FLAG_PADDED
                        and self._content_exceeded(stream, h.length)):
                    self._credit(None, h.length)
                    self._data_stream = None
        if h.flags & FLAG_PADDED:
            if h.length == 0:
                raise ProtocolError("padded DATA frame of 0 bytes", FRAME_SIZE_ERROR)
            self._phase = READ_DATA_PAD_LENGTH
        else:
            self._pad_left = 0
            self._data_left = h.length
            self._phase = READ_DATA_BODY
            if h.length == 0:
                self._end_data_frame()
        return 0

    cdef int _data_chunk(self, Py_ssize_t pos, Py_ssize_t length) except -1:
        if self._data_stream is None:
            return 0
        cdef DataReceived ev = DataReceived.__new__(DataReceived)
        ev.stream_id = self._data_stream.id
        if length < ZERO_COPY_MIN:
            # one small allocation, and the receiver may keep it without pinning the
            # caller's buffer
            ev.data = PyBytes_FromStringAndSize(<const char*>self._input_ptr + pos, length)
        else:
            if self._input_view is None:
                self._input_view = memoryview(self._input)
            ev.data = self._input_view[pos:pos + length]
        self._events.append(ev)
        return 0

    cdef int _end_data_frame(self) except -1:
        cdef Stream stream = self._data_stream
        self._phase = READ_FRAME_HEADER
        self._data_stream = None
        if stream is not None and self._frame.flags & FLAG_END_STREAM:
            if stream.recv_content_left > 0:
                self._stream_error(stream.id, PROTOCOL_ERROR,
                                   f"malformed message: {_short_content(stream)}")
            else:
                self._transition(stream, RECV_END_STREAM)
                ev = StreamEnded.__new__(StreamEnded)
                (<StreamEnded>ev).stream_id = stream.id
                self._events.append(ev)
        # CVE-2019-9518 counts frames that cost the peer nothing: a zero-length frame
        # on the wire. A frame dropped because we reset its stream is not one of them
        # (RFC 9113 5.1: in-flight DATA after our RST_STREAM is ignored, not punished).
        self._count_empty(self._frame.length == 0 and not self._frame.flags & FLAG_END_STREAM)
        return 0

    cdef int _content_exceeded(self, Stream stream, int64_t size) except -1:
        """1 when `size` more bytes of DATA overrun the content the peer declared (RFC 9113
        8.1.1): the stream is reset, a stream error and never the connection's."""
        if size <= stream.recv_content_left:
            stream.recv_content_left -= size
            return 0
        self._stream_error(
            stream.id, PROTOCOL_ERROR,
            f"malformed message: {size} bytes of DATA on stream {stream.id} overrun its declared "
            f"content ({stream.recv_content_left} bytes left; content-length, or none after "
            "HEAD, 204, 304)")
        return 1

    cdef int _count_empty(self, bint empty) except -1:
        if not empty:
            self._empty_frames = 0
            return 0
        self._empty_frames += 1
        if self._empty_frames > self.max_empty_frames:
            raise ProtocolError(
                f"{self._empty_frames} consecutive empty frames without END_STREAM",
                ENHANCE_YOUR_CALM)
        return 0

    cdef int _process_frame(self, const unsigned char* payload) except -1:
        cdef FrameHeader* h = &self._frame
        cdef FrameBody body
        cdef uint32_t t = h.type
        if t == HEADERS:
            return self._on_headers(payload)
        if t == CONTINUATION:
            return self._on_continuation(payload)
        if t == SETTINGS:
            if h.flags & FLAG_ACK:
                return self._on_settings_ack()
            return self._on_settings(payload)
        if t == WINDOW_UPDATE:
            return self._on_window_update(h.stream_id, read_u32(payload) & 0x7fffffff)
        if t == PING:
            return self._on_ping(payload)
        if t == RST_STREAM:
            return self._on_rst_stream(h.stream_id, read_u32(payload))
        if t == GOAWAY:
            return self._on_goaway(payload)
        if t == PRIORITY:
            parse_frame_body(h, payload, &body)
            if body.depends_on == h.stream_id:
                self._stream_error(h.stream_id, PROTOCOL_ERROR,
                                   f"stream {h.stream_id} depends on itself")
            return 0
        if t == PUSH_PROMISE:
            raise ProtocolError("PUSH_PROMISE received, but push is disabled")
        return 0   # unknown frame types are ignored (RFC 9113 4.1)

    # ---------------------------------------------------------- header blocks

    cdef int _on_headers(self, const unsigned char* payload) except -1:
        cdef FrameHeader* h = &self._frame
        cdef FrameBody body
        parse_frame_body(h, payload, &body)
        cdef bint self_dep = body.has_priority and body.depends_on == h.stream_id
        if h.flags & FLAG_END_HEADERS:
            self._count_empty(body.end == body.start and not h.flags & FLAG_END_STREAM)
            return self._on_header_block(h.stream_id, h.flags, payload + body.start,
                                         body.end - body.start, self_dep)
        self._block_stream = h.stream_id
        self._block_flags = h.flags
        self._block_frames = 0
        self._block_self_dependent = self_dep
        self._block.clear()
        self._block += (payload + body.start)[:body.end - body.start]
        return 0

    cdef int _on_continuation(self, const unsigned char* payload) except -1:
        cdef FrameHeader* h = &self._frame
        self._block_frames += 1
        if self._block_frames > self.max_continuation_frames:
            raise ProtocolError(
                f"more than {self.max_continuation_frames} CONTINUATION frames on stream "
                f"{h.stream_id}", ENHANCE_YOUR_CALM)
        self._count_empty(h.length == 0)
        if h.length:
            self._block += payload[:h.length]
        if not h.flags & FLAG_END_HEADERS:
            return 0
        cdef bytes block = bytes(self._block)
        self._block.clear()
        cdef uint32_t sid = self._block_stream
        self._block_stream = 0
        return self._on_header_block(sid, self._block_flags,
                                     <const unsigned char*>PyBytes_AS_STRING(block), len(block),
                                     self._block_self_dependent)

    cdef int _on_header_block(self, uint32_t sid, uint8_t flags, const unsigned char* block,
                              Py_ssize_t n, bint self_dependent) except -1:
        # decode first, whatever happens to the stream: the HPACK tables must stay in
        # step with the peer's (errors here are connection errors)
        cdef list fields = self._decoder.decode_raw(block, n) if n else []
        cdef Stream stream
        obj = self._streams.get(sid)
        if obj is None:
            if self._is_idle(sid) and (sid & 1) != (1 if self.client else 0):
                return self._on_new_remote_stream(sid, flags, fields, self_dependent)
            if self._is_idle(sid):
                raise ProtocolError(f"HEADERS on stream {sid}, which we have not opened")
            if sid in self._recently_reset:
                return 0
            raise ProtocolError(f"HEADERS on closed stream {sid}", STREAM_CLOSED)
        stream = <Stream>obj
        if self_dependent:
            return self._stream_error(sid, PROTOCOL_ERROR, f"stream {sid} depends on itself")
        if _NEXT[stream.state][RECV_HEADERS] < 0:
            return self._stream_error(sid, STREAM_CLOSED,
                                      f"HEADERS on {STATE_NAMES[stream.state]} stream {sid}")
        try:
            if not stream.headers_received:       # client: the response
                status, regular, length = parse_response(fields)
                if status < 200:
                    if flags & FLAG_END_STREAM:
                        raise ProtocolError(f"informational response {status} with END_STREAM")
                    ev = InformationalResponseReceived.__new__(InformationalResponseReceived)
                    (<InformationalResponseReceived>ev).stream_id = sid
                    (<InformationalResponseReceived>ev).status = status
                    (<InformationalResponseReceived>ev).headers = regular
                    self._events.append(ev)
                    return 0
                stream.headers_received = True
                if stream.tunnel:
                    stream.established = status < 300
                    ev = (TunnelAccepted.__new__(TunnelAccepted) if stream.established
                          else TunnelRefused.__new__(TunnelRefused))
                else:
                    ev = ResponseReceived.__new__(ResponseReceived)
                    stream.recv_content_left = (0 if stream.head or status == 204 or status == 304
                                                else length)
                (<ResponseReceived>ev).stream_id = sid
                (<ResponseReceived>ev).status = status
                (<ResponseReceived>ev).headers = regular
            else:                                 # trailers
                if stream.established:
                    raise ProtocolError(f"HEADERS on established CONNECT tunnel {sid}: only DATA "
                                        "may follow its answer (RFC 9113 8.5)")
                if not flags & FLAG_END_STREAM:
                    raise ProtocolError("a header section after the first without END_STREAM "
                                        "(trailers end the stream)")
                ev = TrailersReceived.__new__(TrailersReceived)
                (<TrailersReceived>ev).stream_id = sid
                (<TrailersReceived>ev).headers = check_trailers(fields)
            if flags & FLAG_END_STREAM and stream.recv_content_left > 0:
                raise ProtocolError(_short_content(stream))
        except ProtocolError as exc:
            return self._stream_error(sid, PROTOCOL_ERROR, f"malformed message: {exc.args[0]}")
        self._events.append(ev)
        if flags & FLAG_END_STREAM:
            self._transition(stream, RECV_END_STREAM)
            end = StreamEnded.__new__(StreamEnded)
            (<StreamEnded>end).stream_id = sid
            self._events.append(end)
        return 0

    cdef int _on_new_remote_stream(self, uint32_t sid, uint8_t flags, list fields,
                                   bint self_dependent) except -1:
        if self.client:
            raise ProtocolError(f"server opened stream {sid} (push is disabled)")
        self._highest_remote_id = sid
        if self._goaway_sent:
            self._remember_reset(sid)
            self._queue_control(build_rst_stream(sid, REFUSED_STREAM))
            return 0
        if self._open_remote >= self._local_max_concurrent:
            return self._stream_error(
                sid, REFUSED_STREAM,
                f"stream {sid} over the limit of {self._local_max_concurrent} concurrent streams")
        cdef Stream stream = Stream.__new__(Stream)
        stream.id = sid
        stream.state = OPEN
        stream.local = False
        stream.send_window = self._remote_initial_window
        stream.recv_window = self._acked_initial_window
        stream.recv_unacked = 0
        stream.opened_at = self._clock()
        stream.headers_received = True
        stream.recv_content_left = -1
        stream.send_content_left = -1
        self._streams[sid] = stream
        self._open_remote += 1
        if self_dependent:
            return self._stream_error(sid, PROTOCOL_ERROR, f"stream {sid} depends on itself")
        cdef int64_t length
        try:
            method, scheme, authority, path, protocol, regular, length = parse_request(
                fields, self._local_connect_protocol)
            if flags & FLAG_END_STREAM and length > 0:
                raise ProtocolError(f"END_STREAM on the header section of a request that declares "
                                    f"content-length {length}")
        except ProtocolError as exc:
            return self._stream_error(sid, PROTOCOL_ERROR, f"malformed request: {exc.args[0]}")
        if method == "CONNECT":
            ev = TunnelRequested.__new__(TunnelRequested)
            stream.tunnel = True
        else:
            ev = RequestReceived.__new__(RequestReceived)
            stream.head = method == "HEAD"
            stream.recv_content_left = length
        (<RequestReceived>ev).stream_id = sid
        (<RequestReceived>ev).method = method
        (<RequestReceived>ev).scheme = scheme
        (<RequestReceived>ev).authority = authority
        (<RequestReceived>ev).path = path
        (<RequestReceived>ev).protocol = protocol
        (<RequestReceived>ev).headers = regular
        self._events.append(ev)
        if flags & FLAG_END_STREAM:
            self._transition(stream, RECV_END_STREAM)
            end = StreamEnded.__new__(StreamEnded)
            (<StreamEnded>end).stream_id = sid
            self._events.append(end)
        return 0

    # -------------------------------------------------------- control frames

    cdef int _on_settings(self, const unsigned char* p) except -1:
        cdef uint32_t n = self._frame.length, i, ident, value
        cdef int64_t delta
        cdef dict changed = {}
        cdef Stream stream
        for i in range(0, n, 6):
            ident = (<uint32_t>p[i] << 8) | p[i + 1]
            value = read_u32(p + i + 2)
            if ident == SETTING_ENABLE_PUSH:
                if value > 1:
                    raise ProtocolError(f"SETTINGS_ENABLE_PUSH = {value}")
                if value == 1 and self.client:
                    raise ProtocolError("server sent SETTINGS_ENABLE_PUSH = 1")
            elif ident == SETTING_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW_SIZE:
                    raise ProtocolError(f"SETTINGS_INITIAL_WINDOW_SIZE = {value} > 2^31-1",
                                        FLOW_CONTROL_ERROR)
            elif ident == SETTING_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise ProtocolError(f"SETTINGS_MAX_FRAME_SIZE = {value} outside 16384..16777215")
            elif ident == SETTING_ENABLE_CONNECT_PROTOCOL:
                if value > 1:
                    raise ProtocolError(f"SETTINGS_ENABLE_CONNECT_PROTOCOL = {value}")
                if value == 0 and self._remote_connect_protocol:
                    raise ProtocolError("SETTINGS_ENABLE_CONNECT_PROTOCOL went back from 1 to 0")
            changed[ident] = value
        settings_ev = SettingsChanged.__new__(SettingsChanged)
        (<SettingsChanged>settings_ev).changed = changed
        self._events.append(settings_ev)      # before the WindowOpened events it causes
        for ident, value in changed.items():
            if ident == SETTING_HEADER_TABLE_SIZE:
                # we never use more than the default 4096 for the peer's decoder
                self._encoder.max_table_size = value if value < 4096 else 4096
            elif ident == SETTING_MAX_CONCURRENT_STREAMS:
                self._remote_max_concurrent = value
            elif ident == SETTING_INITIAL_WINDOW_SIZE:
                delta = <int64_t>value - self._remote_initial_window
                self._remote_initial_window = value
                for obj in self._streams.values():
                    stream = <Stream>obj
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW_SIZE:
                        raise ProtocolError(
                            f"SETTINGS_INITIAL_WINDOW_SIZE change overflows stream {stream.id}'s window",
                            FLOW_CONTROL_ERROR)
                if delta > 0:
                    for obj in self._streams.values():
                        ev = WindowOpened.__new__(WindowOpened)
                        (<WindowOpened>ev).stream_id = (<Stream>obj).id
                        (<WindowOpened>ev).delta = delta
                        self._events.append(ev)
            elif ident == SETTING_MAX_FRAME_SIZE:
                self._remote_max_frame_size = value
            elif ident == SETTING_MAX_HEADER_LIST_SIZE:
                self._remote_max_header_list = value
            elif ident == SETTING_ENABLE_CONNECT_PROTOCOL:
                if self.client:
                    self._remote_connect_protocol = value == 1
        self._remote_settings_seen = True
        self._queue_control(build_settings([], True))
        return 0

    cdef int _on_settings_ack(self) except -1:
        if not self._pending_local_settings:
            raise ProtocolError("SETTINGS ACK without outstanding SETTINGS")
        cdef list applied = self._pending_local_settings.pop(0)
        cdef int64_t delta
        cdef Stream stream
        for ident, value in applied:
            if ident == SETTING_INITIAL_WINDOW_SIZE:
                delta = <int64_t>value - self._acked_initial_window
                self._acked_initial_window = value
                for obj in self._streams.values():
                    stream = <Stream>obj
                    stream.recv_window += delta
        self._events.append(SettingsAcknowledged.__new__(SettingsAcknowledged))
        return 0

    cdef int _on_window_update(self, uint32_t sid, uint32_t increment) except -1:
        cdef Stream stream
        if sid == 0:
            if increment == 0:
                raise ProtocolError("WINDOW_UPDATE of 0 on the connection")
            if self._send_window + increment > MAX_WINDOW_SIZE:
                raise ProtocolError("WINDOW_UPDATE overflows the connection window past 2^31-1",
                                    FLOW_CONTROL_ERROR)
            self._send_window += increment
        else:
            obj = self._streams.get(sid)
            if obj is None:
                if self._is_idle(sid):
                    raise ProtocolError(f"WINDOW_UPDATE on idle stream {sid}")
                return 0      # closed: a late update is harmless
            stream = <Stream>obj
            if increment == 0:
                return self._stream_error(sid, PROTOCOL_ERROR, f"WINDOW_UPDATE of 0 on stream {sid}")
            if stream.send_window + increment > MAX_WINDOW_SIZE:
                return self._stream_error(
                    sid, FLOW_CONTROL_ERROR, f"WINDOW_UPDATE overflows stream {sid}'s window past 2^31-1")
            stream.send_window += increment
        ev = WindowOpened.__new__(WindowOpened)
        (<WindowOpened>ev).stream_id = sid
        (<WindowOpened>ev).delta = increment
        self._events.append(ev)
        return 0

    cdef int _on_ping(self, const unsigned char* p) except -1:
        if self._frame.flags & FLAG_ACK:
            ev = PingAcknowledged.__new__(PingAcknowledged)
            (<PingAcknowledged>ev).data = (<const char*>p)[:8]
            self._events.append(ev)
        else:
            self._queue_control(build_ping(p, True))
        return 0

    cdef int _on_rst_stream(self, uint32_t sid, uint32_t code) except -1:
        obj = self._streams.get(sid)
        if obj is None:
            if self._is_idle(sid):
                raise ProtocolError(f"RST_STREAM on idle stream {sid}")
            return 0
        cdef Stream stream = <Stream>obj
        self._transition(stream, RECV_RST)
        self._remember_reset(sid)
        ev = StreamReset.__new__(StreamReset)
        (<StreamReset>ev).stream_id = sid
        (<StreamReset>ev).error_code = code
        (<StreamReset>ev).remote = True
        (<StreamReset>ev).reason = f"peer reset stream {sid} with {error_code_name(code)}"
        self._events.append(ev)
        # Rapid Reset (CVE-2023-44487): requests the peer opens and cancels before they are
        # answered, at a rate. Counted per window of rapid_reset_age: over a long-lived
        # pooled connection, clients that hang up early now and then are not an attack,
        # and a tunnel already answered cost its work and is a client's ordinary end.
        cdef double now
        if not stream.local and not stream.answered:
            now = self._clock()
            if now - stream.opened_at < self.rapid_reset_age:
                if now - self._rapid_window_start >= self.rapid_reset_age:
                    self._rapid_window_start = now
                    self._rapid_resets = 0
                self._rapid_resets += 1
                if self._rapid_resets > self.max_rapid_resets:
                    raise ProtocolError(
                        f"more than {self.max_rapid_resets} requests reset by the peer before their "
                        f"answer within {self.rapid_reset_age:g} s", ENHANCE_YOUR_CALM)
        return 0

    cdef int _on_goaway(self, const unsigned char* p) except -1:
        cdef uint32_t last = read_u32(p) & 0x7fffffff, code = read_u32(p + 4)
        cdef Stream stream
        self._goaway_received = True
        ev = ConnectionTerminated.__new__(ConnectionTerminated)
        (<ConnectionTerminated>ev).error_code = code
        (<ConnectionTerminated>ev).last_stream_id = last
        (<ConnectionTerminated>ev).additional_data = (<const char*>p + 8)[:self._frame.length - 8]
        (<ConnectionTerminated>ev).remote = True
        (<ConnectionTerminated>ev).reason = f"peer sent GOAWAY {error_code_name(code)}"
        self._events.append(ev)
        # our streams above `last` were never processed: they are safe to retry
        for obj in list(self._streams.values()):
            stream = <Stream>obj
            if stream.local and stream.id > last:
                self._close_stream(stream)
                reset = StreamReset.__new__(StreamReset)
                (<StreamReset>reset).stream_id = stream.id
                (<StreamReset>reset).error_code = REFUSED_STREAM
                (<StreamReset>reset).remote = True
                (<StreamReset>reset).reason = f"stream {stream.id} above GOAWAY last stream {last}"
                self._events.append(reset)
        return 0


cdef str _short_content(Stream stream):
    return (f"stream {stream.id} ended with {stream.recv_content_left} bytes of its declared "
            "content-length missing")


cdef str _type_name(uint32_t t):
    names = ("DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING",
             "GOAWAY", "WINDOW_UPDATE", "CONTINUATION")
    return names[t] if t < KNOWN_FRAME_TYPES else f"frame type 0x{t:x}"
