"""HPACK Huffman coding.

The code of RFC 7541 Appendix B is canonical (codes are assigned in order of
length, then symbol), so the 257 code lengths below define it completely. At
import the codes are rebuilt from them, and decoding uses a finite automaton
that consumes 4 bits per step: 256 states (the inner nodes of the code tree)
x 16 nibbles. Each step emits at most one symbol because no code is shorter
than 5 bits.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from meshcore.errors import CompressionError

# RFC 7541 Appendix B, code length in bits of symbols 0..255 and EOS (256).
CODE_LENGTHS = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
)

cdef enum:
    EOS = 256
    N_STATES = 256
    # automaton flags
    EMIT = 1        # this step produced `symbol`
    ACCEPT = 2      # stopping after this step leaves only valid padding (<= 7 one-bits)
    FAIL = 4        # EOS or an impossible path

ctypedef struct Step:
    uint8_t next
    uint8_t flags
    uint8_t symbol

cdef uint32_t _codes[257]
cdef uint8_t _lengths[257]
cdef Step _steps[N_STATES * 16]


cdef void _build() except *:
    cdef int sym, i, node, bit, depth
    cdef uint32_t code = 0
    cdef int prev = 0
    # canonical code assignment
    order = sorted(range(257), key=lambda s: (CODE_LENGTHS[s], s))
    for i, sym in enumerate(order):
        if i:
            code = (code + 1) << (CODE_LENGTHS[sym] - prev)
        prev = CODE_LENGTHS[sym]
        _codes[sym] = code
        _lengths[sym] = CODE_LENGTHS[sym]
    # code tree: inner nodes numbered in creation order (root = 0); a child entry
    # >= 0 is an inner node, -1 - sym is a leaf
    children = [[None, None]]
    depth_of = [0]
    ones_only = [True]
    for sym in range(257):
        node = 0
        for i in range(_lengths[sym] - 1, -1, -1):
            bit = (_codes[sym] >> i) & 1
            if i == 0:
                children[node][bit] = -1 - sym
            else:
                if children[node][bit] is None:
                    children[node][bit] = len(children)
                    children.append([None, None])
                    depth_of.append(depth_of[node] + 1)
                    ones_only.append(ones_only[node] and bit == 1)
                node = children[node][bit]
    assert len(children) == N_STATES
    cdef int state, nibble, cur, flags, emitted, child
    for state in range(N_STATES):
        for nibble in range(16):
            cur = state
            flags = 0
            emitted = 0
            for i in range(3, -1, -1):
                child = children[cur][(nibble >> i) & 1]
                if child is None:
                    flags = FAIL
                    break
                if child < 0:
                    if -1 - child == EOS:
                        flags = FAIL
                        break
                    flags |= EMIT
                    emitted = -1 - child
                    cur = 0
                else:
                    cur = child
            if not flags & FAIL and (cur == 0 or (ones_only[cur] and depth_of[cur] <= 7)):
                flags |= ACCEPT
            _steps[state * 16 + nibble].next = cur if not flags & FAIL else 0
            _steps[state * 16 + nibble].flags = flags
            _steps[state * 16 + nibble].symbol = emitted


_build()


cdef Py_ssize_t huffman_encoded_length(const unsigned char* src, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t bits = 0, i
    for i in range(n):
        bits += _lengths[src[i]]
    return (bits + 7) >> 3


cdef Py_ssize_t huffman_encode_into(const unsigned char* src, Py_ssize_t n,
                                    unsigned char* dst) noexcept nogil:
    cdef uint64_t acc = 0
    cdef int nbits = 0
    cdef Py_ssize_t i, j = 0
    cdef uint8_t c
    for i in range(n):
        c = src[i]
        acc = (acc << _lengths[c]) | _codes[c]
        nbits += _lengths[c]
        while nbits >= 8:
            nbits -= 8
            dst[j] = <unsigned char>(acc >> nbits)
            j += 1
    if nbits:
        # pad with the most significant bits of EOS (all ones)
        dst[j] = <unsigned char>((acc << (8 - nbits)) | (0xff >> nbits))
        j += 1
    return j


cdef bytes huffman_decode_bytes(const unsigned char* src, Py_ssize_t n):
    # each 5-bit-minimum symbol: at most 8n/5 output bytes
    cdef Py_ssize_t cap = (n * 8) // 5 + 1, j = 0, i
    cdef unsigned char* out = <unsigned char*>PyMem_Malloc(cap)
    cdef uint8_t state = 0, flags = ACCEPT
    cdef const Step* s
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            s = &_steps[state * 16 + (src[i] >> 4)]
            if s.flags & FAIL:
                raise CompressionError(f"invalid Huffman code at byte {i} (EOS or unknown code)")
            if s.flags & EMIT:
                out[j] = s.symbol
                j += 1
            s = &_steps[s.next * 16 + (src[i] & 0xf)]
            if s.flags & FAIL:
                raise CompressionError(f"invalid Huffman code at byte {i} (EOS or unknown code)")
            if s.flags & EMIT:
                out[j] = s.symbol
                j += 1
            state = s.next
            flags = s.flags
        if not flags & ACCEPT:
            raise CompressionError("invalid Huffman padding (not EOS prefix or longer than 7 bits)")
        return PyBytes_FromStringAndSize(<char*>out, j)
    finally:
        PyMem_Free(out)


def encode(data):
    """Huffman-encodes bytes (RFC 7541 5.2)."""
    cdef const unsigned char[:] mv = memoryview(data).cast("B")
    cdef Py_ssize_t n = len(mv)
    if n == 0:
        return b""
    cdef Py_ssize_t size = huffman_encoded_length(&mv[0], n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    huffman_encode_into(&mv[0], n, <unsigned char*>PyBytes_AS_STRING(out))
    return out


def decode(data):
    """Decodes a Huffman string; raises CompressionError on invalid input."""
    cdef const unsigned char[:] mv = memoryview(data).cast("B")
    if len(mv) == 0:
        return b""
    return huffman_decode_bytes(&mv[0], len(mv))


def code_of(int symbol):
    """(code, length in bits) of a symbol 0..256, for tests and tools."""
    if not 0 <= symbol <= 256:
        raise ValueError("symbol outside 0..256")
    return _codes[symbol], _lengths[symbol]
