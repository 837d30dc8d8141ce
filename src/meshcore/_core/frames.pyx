# cython: freethreading_compatible = False
"""HTTP/2 frames (RFC 9113 sections 4 and 6): decode and encode every frame type.

The connection state machine uses the cdef functions declared in frames.pxd on
raw pointers; the Python-level `Frame`, `FrameDecoder` and `encode_*` functions
are the public codec (used for tooling, tests and hand-built peers).
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint32_t

from meshcore.errors import ProtocolError, FrameSizeError

FRAME_TYPE_NAMES = {
    DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
    SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
    WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION",
}


cdef int check_frame_header(const FrameHeader* h, uint32_t max_frame_size) except -1:
    cdef uint32_t t = h.type, n = h.length, sid = h.stream_id
    if n > max_frame_size:
        raise FrameSizeError(
            f"{_name(t)} frame of {n} bytes exceeds SETTINGS_MAX_FRAME_SIZE {max_frame_size}")
    if t == DATA or t == HEADERS or t == CONTINUATION or t == PUSH_PROMISE:
        if sid == 0:
            raise ProtocolError(f"{_name(t)} frame on stream 0")
    elif t == PRIORITY:
        if sid == 0:
            raise ProtocolError("PRIORITY frame on stream 0")
        if n != 5:
            raise FrameSizeError(f"PRIORITY frame of {n} bytes (must be 5)", stream_id=sid)
    elif t == RST_STREAM:
        if sid == 0:
            raise ProtocolError("RST_STREAM frame on stream 0")
        if n != 4:
            raise FrameSizeError(f"RST_STREAM frame of {n} bytes (must be 4)")
    elif t == SETTINGS:
        if sid != 0:
            raise ProtocolError(f"SETTINGS frame on stream {sid}")
        if h.flags & FLAG_ACK and n != 0:
            raise FrameSizeError(f"SETTINGS ACK with a {n}-byte payload")
        if n % 6:
            raise FrameSizeError(f"SETTINGS frame of {n} bytes (not a multiple of 6)")
    elif t == PING:
        if sid != 0:
            raise ProtocolError(f"PING frame on stream {sid}")
        if n != 8:
            raise FrameSizeError(f"PING frame of {n} bytes (must be 8)")
    elif t == GOAWAY:
        if sid != 0:
            raise ProtocolError(f"GOAWAY frame on stream {sid}")
        if n < 8:
            raise FrameSizeError(f"GOAWAY frame of {n} bytes (at least 8)")
    elif t == WINDOW_UPDATE:
        if n != 4:
            raise FrameSizeError(f"WINDOW_UPDATE frame of {n} bytes (must be 4)")
    return 0


cdef inline str _name(uint32_t t):
    return FRAME_TYPE_NAMES.get(t, f"unknown(0x{t:x})")


cdef int _strip_padding(const FrameHeader* h, const unsigned char* p, FrameBody* body,
                        Py_ssize_t fixed) except -1:
    """Sets body.start/end/pad_length for a frame with `fixed` bytes of fields after
    the optional pad-length byte."""
    cdef Py_ssize_t n = h.length, pad = 0, start = 0
    if h.flags & FLAG_PADDED:
        if n < 1 + fixed:
            raise FrameSizeError(f"padded {_name(h.type)} frame of {n} bytes is too short")
        pad = p[0]
        start = 1
        if pad > n - 1 - fixed:
            raise ProtocolError(
                f"{_name(h.type)} padding of {pad} bytes exceeds the {n}-byte payload")
    elif n < fixed:
        raise FrameSizeError(f"{_name(h.type)} frame of {n} bytes is too short")
    body.pad_length = pad
    body.start = start + fixed
    body.end = n - pad
    return 0


cdef inline void _read_priority(const unsigned char* p, FrameBody* body) noexcept:
    cdef uint32_t v = read_u32(p)
    body.has_priority = True
    body.exclusive = (v >> 31) != 0
    body.depends_on = v & 0x7fffffff
    body.weight = <uint32_t>p[4] + 1


cdef int parse_frame_body(const FrameHeader* h, const unsigned char* p,
                          FrameBody* body) except -1:
    cdef uint32_t t = h.type
    body.start = 0
    body.end = h.length
    body.pad_length = 0
    body.has_priority = False
    body.exclusive = False
    body.depends_on = 0
    body.weight = 0
    body.value = 0
    body.error_code = 0
    if t == DATA:
        _strip_padding(h, p, body, 0)
    elif t == HEADERS:
        if h.flags & FLAG_PRIORITY:
            _strip_padding(h, p, body, 5)
            _read_priority(p + body.start - 5, body)
        else:
            _strip_padding(h, p, body, 0)
    elif t == PRIORITY:
        _read_priority(p, body)
        body.start = body.end = 5
    elif t == RST_STREAM:
        body.value = read_u32(p)
        body.start = body.end = 4
    elif t == PUSH_PROMISE:
        _strip_padding(h, p, body, 4)
        body.value = read_u32(p + body.start - 4) & 0x7fffffff
    elif t == GOAWAY:
        body.value = read_u32(p) & 0x7fffffff
        body.error_code = read_u32(p + 4)
        body.start = 8
    elif t == WINDOW_UPDATE:
        body.value = read_u32(p) & 0x7fffffff
        body.start = body.end = 4
    return 0


cdef bytes build_frame_header(uint32_t length, uint8_t ftype, uint8_t flags, uint32_t stream_id):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, FRAME_HEADER_SIZE)
    write_frame_header(<unsigned char*>PyBytes_AS_STRING(out), length, ftype, flags, stream_id)
    return out


cdef bytes build_frame(uint8_t ftype, uint8_t flags, uint32_t stream_id,
                       const unsigned char* payload, Py_ssize_t length):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, FRAME_HEADER_SIZE + length)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    write_frame_header(p, <uint32_t>length, ftype, flags, stream_id)
    if length:
        memcpy(p + FRAME_HEADER_SIZE, payload, length)
    return out


cdef bytes build_rst_stream(uint32_t stream_id, uint32_t error_code):
    cdef unsigned char buf[4]
    write_u32(buf, error_code)
    return build_frame(RST_STREAM, 0, stream_id, buf, 4)


cdef bytes build_window_update(uint32_t stream_id, uint32_t increment):
    cdef unsigned char buf[4]
    write_u32(buf, increment & 0x7fffffff)
    return build_frame(WINDOW_UPDATE, 0, stream_id, buf, 4)


cdef bytes build_ping(const unsigned char* opaque, bint ack):
    return build_frame(PING, FLAG_ACK if ack else 0, 0, opaque, 8)


cdef bytes build_goaway(uint32_t last_stream_id, uint32_t error_code, bytes debug_data):
    cdef Py_ssize_t n = len(debug_data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, FRAME_HEADER_SIZE + 8 + n)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    write_frame_header(p, <uint32_t>(8 + n), GOAWAY, 0, 0)
    write_u32(p + 9, last_stream_id & 0x7fffffff)
    write_u32(p + 13, error_code)
    if n:
        memcpy(p + 17, PyBytes_AS_STRING(debug_data), n)
    return out


cdef bytes build_settings(list pairs, bint ack):
    cdef Py_ssize_t n = 0 if ack else 6 * len(pairs), i = 0
    cdef bytes out = PyBytes_FromStringAndSize(NULL, FRAME_HEADER_SIZE + n)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    cdef uint32_t ident
    write_frame_header(p, <uint32_t>n, SETTINGS, FLAG_ACK if ack else 0, 0)
    if not ack:
        for ident, value in pairs:
            p[9 + i] = (ident >> 8) & 0xff
            p[10 + i] = ident & 0xff
            write_u32(p + 11 + i, <uint32_t>value)
            i += 6
    return out


# ---------------------------------------------------------------- public codec

cdef class Frame:
    """One decoded frame. Payload fields are memoryviews into the decoded buffer."""
    cdef readonly int type
    cdef readonly int flags
    cdef readonly unsigned int stream_id
    cdef readonly unsigned int length
    cdef readonly object payload          # memoryview of the whole payload
    cdef FrameBody _body

    def __repr__(self):
        return (f"<Frame {_name(self.type)} stream={self.stream_id} flags=0x{self.flags:02x} "
                f"length={self.length}>")

    @property
    def type_name(self):
        return _name(self.type)

    @property
    def data(self):
        """DATA payload without padding."""
        return self.payload[self._body.start:self._body.end] if self.type == DATA else None

    @property
    def header_block(self):
        """Header block fragment of HEADERS, PUSH_PROMISE or CONTINUATION."""
        if self.type in (HEADERS, PUSH_PROMISE, CONTINUATION):
            return self.payload[self._body.start:self._body.end]
        return None

    @property
    def pad_length(self):
        return self._body.pad_length if self.flags & FLAG_PADDED and self.type in (
            DATA, HEADERS, PUSH_PROMISE) else None

    @property
    def priority(self):
        """(depends_on, weight 1..256, exclusive) or None."""
        if not self._body.has_priority:
            return None
        return (self._body.depends_on, self._body.weight, bool(self._body.exclusive))

    @property
    def error_code(self):
        if self.type == RST_STREAM:
            return self._body.value
        if self.type == GOAWAY:
            return self._body.error_code
        return None

    @property
    def last_stream_id(self):
        return self._body.value if self.type == GOAWAY else None

    @property
    def additional_data(self):
        return bytes(self.payload[8:]) if self.type == GOAWAY else None

    @property
    def window_increment(self):
        return self._body.value if self.type == WINDOW_UPDATE else None

    @property
    def promised_stream_id(self):
        return self._body.value if self.type == PUSH_PROMISE else None

    @property
    def opaque_data(self):
        return bytes(self.payload) if self.type == PING else None

    @property
    def settings(self):
        """SETTINGS as a list of (identifier, value) in wire order."""
        if self.type != SETTINGS:
            return None
        cdef const unsigned char[:] p = self.payload
        return [((p[i] << 8) | p[i + 1], read_u32(&p[i + 2])) for i in range(0, self.length, 6)]

    @property
    def end_stream(self):
        return bool(self.flags & FLAG_END_STREAM) and self.type in (DATA, HEADERS)

    @property
    def end_headers(self):
        return bool(self.flags & FLAG_END_HEADERS) and self.type in (
            HEADERS, PUSH_PROMISE, CONTINUATION)

    @property
    def ack(self):
        return bool(self.flags & FLAG_ACK) and self.type in (SETTINGS, PING)


cdef class FrameDecoder:
    """Splits a byte stream into validated `Frame`s; keeps partial frames between feeds."""
    cdef bytearray _buf
    cdef public unsigned int max_frame_size

    def __init__(self, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        if not DEFAULT_MAX_FRAME_SIZE <= max_frame_size <= MAX_FRAME_SIZE_LIMIT:
            raise ValueError(f"max_frame_size {max_frame_size} outside 16384..16777215")
        self._buf = bytearray()
        self.max_frame_size = max_frame_size

    def feed(self, data):
        """Returns the frames completed by `data`. Raises ProtocolError on a bad frame.
        Frames wholly inside `data` are views of it (no copy); only a trailing partial
        frame is kept."""
        cdef bytes buf
        if self._buf:
            self._buf += data
            buf = bytes(self._buf)
            self._buf.clear()
        else:
            buf = data if type(data) is bytes else bytes(data)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t pos = 0, n = len(buf)
        cdef FrameHeader h
        cdef Frame f
        cdef object view = memoryview(buf)
        frames = []
        try:
            while n - pos >= FRAME_HEADER_SIZE:
                h = read_frame_header(p + pos)
                check_frame_header(&h, self.max_frame_size)
                if n - pos - FRAME_HEADER_SIZE < h.length:
                    break
                f = Frame.__new__(Frame)
                f.type = h.type
                f.flags = h.flags
                f.stream_id = h.stream_id
                f.length = h.length
                f.payload = view[pos + FRAME_HEADER_SIZE:pos + FRAME_HEADER_SIZE + h.length]
                if h.type < KNOWN_FRAME_TYPES:
                    parse_frame_body(&h, p + pos + FRAME_HEADER_SIZE, &f._body)
                    if f._body.has_priority and f._body.depends_on == h.stream_id:
                        raise ProtocolError(f"stream {h.stream_id} depends on itself",
                                            stream_id=h.stream_id)
                else:
                    f._body.start = 0
                    f._body.end = h.length
                frames.append(f)
                pos += FRAME_HEADER_SIZE + h.length
        finally:
            if pos < n:
                self._buf += view[pos:]
        return frames


def _padding(pad_length):
    if pad_length is None:
        return 0, b"", b""
    if not 0 <= pad_length <= 255:
        raise ValueError(f"pad_length {pad_length} outside 0..255")
    return FLAG_PADDED, bytes((pad_length,)), bytes(pad_length)


def encode_frame(int frame_type, int flags, unsigned int stream_id, payload=b""):
    """Any frame, including unknown types, from a raw payload."""
    cdef const unsigned char[:] mv = memoryview(payload).cast("B")
    return build_frame(frame_type, flags, stream_id, &mv[0] if len(mv) else NULL, len(mv))


def encode_data(unsigned int stream_id, data, bint end_stream=False, pad_length=None):
    cdef const unsigned char[:] mv
    if pad_length is None:
        mv = memoryview(data).cast("B")
        return build_frame(DATA, FLAG_END_STREAM if end_stream else 0, stream_id,
                           &mv[0] if len(mv) else NULL, len(mv))
    pflag, pre, post = _padding(pad_length)
    return encode_frame(DATA, pflag | (FLAG_END_STREAM if end_stream else 0), stream_id,
                        pre + bytes(data) + post)


def _priority_bytes(priority):
    depends_on, weight, exclusive = priority
    if not 1 <= weight <= 256:
        raise ValueError(f"weight {weight} outside 1..256")
    return (((1 << 31) if exclusive else 0) | depends_on).to_bytes(4, "big") + bytes((weight - 1,))


def encode_headers(unsigned int stream_id, block, bint end_stream=False, bint end_headers=True,
                   pad_length=None, priority=None):
    """HEADERS; `priority` is (depends_on, weight 1..256, exclusive) or None."""
    pflag, pre, post = _padding(pad_length)
    flags = pflag | (FLAG_END_STREAM if end_stream else 0) | (FLAG_END_HEADERS if end_headers else 0)
    prio = b""
    if priority is not None:
        flags |= FLAG_PRIORITY
        prio = _priority_bytes(priority)
    return encode_frame(HEADERS, flags, stream_id, pre + prio + bytes(block) + post)


def encode_priority(unsigned int stream_id, unsigned int depends_on, int weight=16,
                    bint exclusive=False):
    return encode_frame(PRIORITY, 0, stream_id, _priority_bytes((depends_on, weight, exclusive)))


def encode_rst_stream(unsigned int stream_id, unsigned int error_code):
    return build_rst_stream(stream_id, error_code)


def encode_settings(settings=(), bint ack=False):
    """SETTINGS from a dict or (identifier, value) pairs; order is kept."""
    pairs = list(settings.items()) if isinstance(settings, dict) else list(settings)
    return build_settings(pairs, ack)


def encode_push_promise(unsigned int stream_id, unsigned int promised_stream_id, block,
                        bint end_headers=True, pad_length=None):
    pflag, pre, post = _padding(pad_length)
    return encode_frame(PUSH_PROMISE, pflag | (FLAG_END_HEADERS if end_headers else 0), stream_id,
                        pre + (promised_stream_id & 0x7fffffff).to_bytes(4, "big")
                        + bytes(block) + post)


def encode_ping(bytes opaque_data=b"\0" * 8, bint ack=False):
    if len(opaque_data) != 8:
        raise ValueError("PING opaque data must be 8 bytes")
    return build_ping(<const unsigned char*>PyBytes_AS_STRING(opaque_data), ack)


def encode_goaway(unsigned int last_stream_id, unsigned int error_code, additional_data=b""):
    return build_goaway(last_stream_id, error_code, bytes(additional_data))


def encode_window_update(unsigned int stream_id, unsigned int increment):
    return build_window_update(stream_id, increment)


def encode_continuation(unsigned int stream_id, block, bint end_headers=True):
    return encode_frame(CONTINUATION, FLAG_END_HEADERS if end_headers else 0, stream_id, bytes(block))
