# Receive buffers for asyncio BufferedProtocols: the event loop reads straight into a
# reused bytearray, so a read costs no allocation (a fresh 256 KiB bytes object per
# read is an mmap + page faults + munmap in glibc, the largest cost of a relay hop).

# Chunks at least this large are handed on as views of the buffer they were read into;
# smaller ones are copied into bytes (a view of a few bytes must not pin 256 KiB).
cdef enum:
    ZERO_COPY_MIN = 64 * 1024
    # Pinned buffers remembered for reuse once released: one per stream blocked on its
    # window is typical, and a fresh 256 KiB buffer costs page faults and cold cache.
    MAX_SPARE_BUFFERS = 8

cdef class ReadBuffer:
    cdef bytearray _buf
    cdef list _spares                      # earlier buffers, pinned when last seen
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t replaced      # reads that needed a new buffer (old one still referenced)
    cdef readonly Py_ssize_t reused        # reads that went into a released spare instead

    cdef bytearray _unreferenced_buffer(self)

    cdef int _check_read(self, Py_ssize_t n) except -1
    cpdef object get_buffer(self, Py_ssize_t sizehint=*)
    cpdef object filled(self, Py_ssize_t n)
    # The buffer the last read went into (its first `n` bytes are that read), for a
    # receiver that parses them in place: no view is made
    cdef bytearray last_read(self, Py_ssize_t n)
    cpdef object take(self, Py_ssize_t n)
