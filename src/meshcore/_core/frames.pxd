# HTTP/2 frame layer (RFC 9113 sections 4 and 6): constants, the fixed 9-byte
# header, and a payload parser that yields offsets into the caller's buffer
# instead of copies.
from libc.stdint cimport uint8_t, uint32_t

cdef enum:
    FRAME_HEADER_SIZE = 9
    DEFAULT_MAX_FRAME_SIZE = 16384
    MAX_FRAME_SIZE_LIMIT = 16777215      # 2^24 - 1
    MAX_WINDOW_SIZE = 2147483647         # 2^31 - 1
    DEFAULT_WINDOW_SIZE = 65535

# frame types
cdef enum:
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9
    KNOWN_FRAME_TYPES = 10

# flags
cdef enum:
    FLAG_END_STREAM = 0x1
    FLAG_ACK = 0x1
    FLAG_END_HEADERS = 0x4
    FLAG_PADDED = 0x8
    FLAG_PRIORITY = 0x20

# settings identifiers (RFC 9113 6.5.2)
cdef enum:
    SETTING_HEADER_TABLE_SIZE = 0x1
    SETTING_ENABLE_PUSH = 0x2
    SETTING_MAX_CONCURRENT_STREAMS = 0x3
    SETTING_INITIAL_WINDOW_SIZE = 0x4
    SETTING_MAX_FRAME_SIZE = 0x5
    SETTING_MAX_HEADER_LIST_SIZE = 0x6
    SETTING_ENABLE_CONNECT_PROTOCOL = 0x8

# error codes (RFC 9113 section 7); meshcore.errors.ErrorCode is the Python view
cdef enum:
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xa
    ENHANCE_YOUR_CALM = 0xb

cdef struct FrameHeader:
    uint32_t length
    uint8_t type
    uint8_t flags
    uint32_t stream_id

# What a frame's payload holds, as offsets relative to the payload's first byte.
cdef struct FrameBody:
    Py_ssize_t start          # data / header block fragment / GOAWAY debug data / PING opaque
    Py_ssize_t end
    uint32_t pad_length       # padding bytes after `end` (PADDED frames)
    bint has_priority         # HEADERS with PRIORITY, or a PRIORITY frame
    bint exclusive
    uint32_t depends_on
    uint32_t weight           # 1..256 (wire value + 1)
    uint32_t value            # RST/GOAWAY error code, WINDOW_UPDATE increment,
                              # PUSH_PROMISE promised stream, GOAWAY last stream id
    uint32_t error_code       # GOAWAY error code

cdef inline uint32_t read_u32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline void write_u32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xff
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff

cdef inline FrameHeader read_frame_header(const unsigned char* p) noexcept nogil:
    cdef FrameHeader h
    h.length = (<uint32_t>p[0] << 16) | (<uint32_t>p[1] << 8) | p[2]
    h.type = p[3]
    h.flags = p[4]
    h.stream_id = read_u32(p + 5) & 0x7fffffff
    return h

cdef inline void write_frame_header(unsigned char* p, uint32_t length, uint8_t ftype,
                                    uint8_t flags, uint32_t stream_id) noexcept nogil:
    p[0] = (length >> 16) & 0xff
    p[1] = (length >> 8) & 0xff
    p[2] = length & 0xff
    p[3] = ftype
    p[4] = flags
    write_u32(p + 5, stream_id & 0x7fffffff)

# Checks everything the 9-byte header alone decides (size, stream-id rules,
# fixed lengths). Raises a meshcore.errors.ProtocolError subclass.
cdef int check_frame_header(const FrameHeader* h, uint32_t max_frame_size) except -1

# Parses a complete payload of a known frame type into `body` (padding, priority,
# fixed fields). Raises ProtocolError for malformed padding or short payloads.
cdef int parse_frame_body(const FrameHeader* h, const unsigned char* payload,
                          FrameBody* body) except -1

# Frame header plus a payload as one new bytes object.
cdef bytes build_frame(uint8_t ftype, uint8_t flags, uint32_t stream_id,
                       const unsigned char* payload, Py_ssize_t length)
cdef bytes build_frame_header(uint32_t length, uint8_t ftype, uint8_t flags, uint32_t stream_id)
cdef bytes build_rst_stream(uint32_t stream_id, uint32_t error_code)
cdef bytes build_window_update(uint32_t stream_id, uint32_t increment)
cdef bytes build_ping(const unsigned char* opaque, bint ack)
cdef bytes build_goaway(uint32_t last_stream_id, uint32_t error_code, bytes debug_data)
cdef bytes build_settings(list pairs, bint ack)
