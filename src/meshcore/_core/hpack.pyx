"""HPACK (RFC 7541).

Decoding enforces the header-list size limit while it decodes: a block whose
decoded list would exceed `max_header_list_size` (name + value + 32 per field)
is refused before any string past the limit is allocated (CVE-2016-6581).
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t

from meshcore._core.huffman cimport (
    huffman_encoded_length, huffman_encode_into, huffman_decode_bytes)
from meshcore.errors import CompressionError, HeaderListTooLarge

# RFC 7541 Appendix A
STATIC_TABLE = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"),
    (b":status", b"200"), (b":status", b"204"), (b":status", b"206"), (b":status", b"304"),
    (b":status", b"400"), (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"), (b"accept-language", b""), (b"accept-ranges", b""),
    (b"accept", b""), (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""),
    (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""),
    (b"from", b""), (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""),
    (b"if-none-match", b""), (b"if-range", b""), (b"if-unmodified-since", b""),
    (b"last-modified", b""), (b"link", b""), (b"location", b""), (b"max-forwards", b""),
    (b"proxy-authenticate", b""), (b"proxy-authorization", b""), (b"range", b""),
    (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
)
cdef enum:
    STATIC_LEN = 61
    ENTRY_OVERHEAD = 32
    DEFAULT_TABLE_SIZE = 4096

cdef dict _STATIC_FIELD = {}
cdef dict _STATIC_NAME = {}
for _i, (_n, _v) in enumerate(STATIC_TABLE, 1):
    _STATIC_FIELD.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)

# Credentials are never indexed (RFC 7541 7.1.3); values unique per connection or
# per request would only churn the dynamic table.
NEVER_INDEXED = frozenset((b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"))
UNINDEXED = frozenset((b"traceparent", b"tracestate", b"forwarded", b"x-request-id",
                       b"content-length", b":path", b"date", b"etag"))


cdef inline bytes _as_bytes(object s):
    if type(s) is bytes:
        return <bytes>s
    if isinstance(s, str):
        return (<str>s).encode("utf-8")
    return bytes(s)


cdef inline void _put_int(bytearray out, uint64_t value, int prefix_bits, int first):
    cdef uint64_t limit = (1 << prefix_bits) - 1
    if value < limit:
        out.append(first | value)
        return
    out.append(first | limit)
    value -= limit
    while value >= 128:
        out.append((value & 0x7f) | 0x80)
        value >>= 7
    out.append(value)


cdef void _put_string(bytearray out, bytes s, bint huffman):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s), hlen
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
    cdef bytes enc
    if huffman and n:
        hlen = huffman_encoded_length(p, n)
        if hlen < n:
            enc = PyBytes_FromStringAndSize(NULL, hlen)
            huffman_encode_into(p, n, <unsigned char*>PyBytes_AS_STRING(enc))
            _put_int(out, hlen, 7, 0x80)
            out += enc
            return
    _put_int(out, n, 7, 0)
    out += s


cdef class HeaderEncoder:
    """Encodes header lists into HPACK blocks, keeping the peer's decoder in step."""

    def __init__(self, Py_ssize_t max_table_size=DEFAULT_TABLE_SIZE, bint huffman=True):
        self._entries = []
        self._size = 0
        self._max_size = DEFAULT_TABLE_SIZE
        self._inserted = 0
        self._by_field = {}
        self._by_name = {}
        self._update_min = -1
        self._update_pending = False
        self.huffman = huffman
        self.never_indexed_names = NEVER_INDEXED
        self.unindexed_names = UNINDEXED
        if max_table_size != DEFAULT_TABLE_SIZE:
            self.max_table_size = max_table_size

    @property
    def table_size(self):
        return self._size

    @property
    def max_table_size(self):
        return self._max_size

    @max_table_size.setter
    def max_table_size(self, Py_ssize_t value):
        """Follow the peer's SETTINGS_HEADER_TABLE_SIZE; announced in the next block."""
        if value < 0:
            raise ValueError("table size must be >= 0")
        self._update_min = value if self._update_min < 0 else min(self._update_min, value)
        self._update_pending = True
        self._max_size = value
        self._evict_to(value)

    cdef void _evict_to(self, Py_ssize_t limit):
        cdef Py_ssize_t k = 0, oldest = self._inserted - len(self._entries)
        cdef tuple e
        while self._size > limit:
            e = <tuple>self._entries[k]
            self._size -= len(<bytes>e[0]) + len(<bytes>e[1]) + ENTRY_OVERHEAD
            # forget index entries that point at this copy, so the dicts stay bounded
            if self._by_field.get(e) == oldest + k:
                del self._by_field[e]
            if self._by_name.get(e[0]) == oldest + k:
                del self._by_name[e[0]]
            k += 1
        if k:
            del self._entries[:k]

    cdef void _insert(self, bytes name, bytes value):
        cdef Py_ssize_t size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > self._max_size:
            self._evict_to(0)   # RFC 7541 4.4: an oversized entry empties the table
            return
        self._evict_to(self._max_size - size)
        self._entries.append((name, value))
        self._size += size
        self._by_field[(name, value)] = self._inserted
        self._by_name[name] = self._inserted
        self._inserted += 1

    cdef Py_ssize_t _dynamic_index(self, dict index, object key):
        """HPACK index (62...) of key's newest copy still in the table, or 0."""
        cdef object absolute = index.get(key)
        cdef Py_ssize_t age
        if absolute is None:
            return 0
        age = self._inserted - 1 - <Py_ssize_t>absolute
        if age >= len(self._entries):
            return 0
        return STATIC_LEN + 1 + age

    cpdef bytes encode(self, object headers):
        """`headers`: iterable of (name, value) or (name, value, never_index); str or bytes."""
        cdef bytearray out = bytearray()
        cdef bytes name, value
        cdef Py_ssize_t idx, name_idx
        cdef bint sensitive
        if self._update_pending:
            if self._update_min < self._max_size:
                _put_int(out, self._update_min, 5, 0x20)
            _put_int(out, self._max_size, 5, 0x20)
            self._update_pending = False
            self._update_min = -1
        for field in headers:
            name = _as_bytes(field[0])
            value = _as_bytes(field[1])
            sensitive = (len(field) > 2 and field[2]) or name in self.never_indexed_names
            if not sensitive:
                idx = _STATIC_FIELD.get((name, value), 0)
                if idx == 0:
                    idx = self._dynamic_index(self._by_field, (name, value))
                if idx:
                    _put_int(out, idx, 7, 0x80)
                    continue
            name_idx = _STATIC_NAME.get(name, 0)
            if name_idx == 0:
                name_idx = self._dynamic_index(self._by_name, name)
            if sensitive:
                _put_int(out, name_idx, 4, 0x10)
            elif name in self.unindexed_names:
                _put_int(out, name_idx, 4, 0x00)
            else:
                _put_int(out, name_idx, 6, 0x40)
            if name_idx == 0:
                _put_string(out, name, self.huffman)
            _put_string(out, value, self.huffman)
            if not sensitive and name not in self.unindexed_names:
                self._insert(name, value)
        return bytes(out)


cdef class HeaderDecoder:
    """Decodes HPACK blocks into lists of (name, value) bytes pairs."""

    def __init__(self, Py_ssize_t max_header_list_size=65536,
                 Py_ssize_t max_allowed_table_size=DEFAULT_TABLE_SIZE):
        self._entries = []
        self._size = 0
        self._max_size = max_allowed_table_size
        self.max_allowed_table_size = max_allowed_table_size
        self.max_header_list_size = max_header_list_size

    @property
    def table_size(self):
        return self._size

    @property
    def table(self):
        """Dynamic table, newest first (HPACK index 62 first)."""
        return list(reversed(self._entries))

    cdef void _insert(self, bytes name, bytes value):
        cdef Py_ssize_t size = len(name) + len(value) + ENTRY_OVERHEAD
        self._evict_to(self._max_size - size)      # an oversized entry empties the table
        if size <= self._max_size:
            self._entries.append((name, value))
            self._size += size

    cdef void _evict_to(self, Py_ssize_t limit):
        cdef Py_ssize_t k = 0
        cdef tuple e
        while self._size > limit and k < len(self._entries):
            e = <tuple>self._entries[k]
            self._size -= len(<bytes>e[0]) + len(<bytes>e[1]) + ENTRY_OVERHEAD
            k += 1
        if k:
            del self._entries[:k]

    cdef tuple _field(self, Py_ssize_t index):
        cdef Py_ssize_t age
        if index <= 0:
            raise CompressionError("header field index 0")
        if index <= STATIC_LEN:
            return <tuple>STATIC_TABLE[index - 1]
        age = index - STATIC_LEN - 1
        if age >= len(self._entries):
            raise CompressionError(
                f"header field index {index} beyond the table ({STATIC_LEN} static + "
                f"{len(self._entries)} dynamic entries)")
        return <tuple>self._entries[len(self._entries) - 1 - age]

    cpdef list decode(self, object block):
        cdef const unsigned char[:] mv = memoryview(block).cast("B")
        if len(mv) == 0:
            return []
        return self.decode_raw(&mv[0], len(mv))

    cdef list decode_raw(self, const unsigned char* p, Py_ssize_t n):
        cdef list headers = []
        cdef Py_ssize_t pos = 0, budget = self.max_header_list_size, slen
        cdef Py_ssize_t value
        cdef unsigned char b
        cdef bint fields_seen = False, huff
        cdef int kind
        cdef bytes name, val
        cdef tuple field
        while pos < n:
            b = p[pos]
            if b & 0x80:                      # indexed field
                value = _get_int(p, n, &pos, 7)
                field = self._field(value)
                name = <bytes>field[0]
                val = <bytes>field[1]
            elif (b & 0xe0) == 0x20:          # dynamic table size update
                if fields_seen:
                    raise CompressionError("dynamic table size update after a header field")
                value = _get_int(p, n, &pos, 5)
                if value > self.max_allowed_table_size:
                    raise CompressionError(
                        f"dynamic table size update to {value} exceeds the allowed "
                        f"{self.max_allowed_table_size}")
                self._max_size = value
                self._evict_to(value)       # a smaller maximum evicts at once (RFC 7541 4.3)
                continue
            else:
                if b & 0x40:
                    kind = 1                  # with incremental indexing
                    value = _get_int(p, n, &pos, 6)
                else:
                    kind = 0                  # without indexing / never indexed
                    value = _get_int(p, n, &pos, 4)
                if value:
                    name = <bytes>self._field(value)[0]
                else:
                    name = _get_string(p, n, &pos, budget)
                val = _get_string(p, n, &pos, budget - len(name))
                if kind == 1:
                    self._insert(name, val)
            fields_seen = True
            budget -= len(name) + len(val) + ENTRY_OVERHEAD
            if budget < 0:
                raise HeaderListTooLarge(
                    f"decoded header list exceeds {self.max_header_list_size} bytes "
                    f"(name + value + 32 per field)")
            headers.append((name, val))
        return headers


cdef Py_ssize_t _get_int(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                         int prefix_bits) except -1:
    cdef Py_ssize_t limit = (1 << prefix_bits) - 1
    cdef Py_ssize_t value = p[pos[0]] & limit
    cdef int shift = 0
    cdef unsigned char b
    pos[0] += 1
    if value < limit:
        return value
    while True:
        if pos[0] >= n:
            raise CompressionError("header block ends inside an integer")
        b = p[pos[0]]
        pos[0] += 1
        value += (<Py_ssize_t>(b & 0x7f)) << shift
        shift += 7
        if not b & 0x80:
            return value
        if shift > 28:
            raise CompressionError("HPACK integer longer than 2^32")


cdef bytes _get_string(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos, Py_ssize_t budget):
    if pos[0] >= n:
        raise CompressionError("header block ends before a string")
    cdef bint huff = (p[pos[0]] & 0x80) != 0
    cdef Py_ssize_t length = _get_int(p, n, pos, 7)
    cdef Py_ssize_t start = pos[0]
    if length > n - start:
        raise CompressionError(
            f"string of {length} bytes runs past the end of the header block")
    # a Huffman string decodes to at least 8/30 of its length: refuse before allocating
    if (length * 8) // 30 > budget if huff else length > budget:
        raise HeaderListTooLarge(f"header string of {length} encoded bytes exceeds the "
                                 "header list size limit")
    pos[0] = start + length
    if huff:
        return huffman_decode_bytes(p + start, length)
    return PyBytes_FromStringAndSize(<const char*>(p + start), length)
