# cython: freethreading_compatible = False
"""Receive buffers for BufferedProtocols (see buffers.pxd for why).

Data read into a ReadBuffer is handed on as a memoryview. Whoever receives it may keep
it: uvloop, for one, queues the views given to transport.write() until the end of the
loop iteration or, when the socket is full, until the peer reads. A buffer that is
still referenced is never read into again: get_buffer() then switches to a spare
buffer whose views are all gone, or allocates a new one. Up to MAX_SPARE_BUFFERS
pinned buffers are remembered as spares; beyond that an old buffer lives only as long
as its views do.

To keep such pinning cheap, small chunks are copied (take(), and the HTTP/2 core's DATA
chunks): only chunks of at least ZERO_COPY_MIN bytes are views, so a pinned buffer is
never more than 256 KiB / 64 KiB = 4 times the data it holds, and flow control (which
counts that data) bounds the total.
"""
import threading

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_FromStringAndSize

cdef extern from "Python.h":
    ctypedef struct PyByteArrayObject:
        Py_ssize_t ob_exports

DEFAULT_SIZE = 256 * 1024
ZERO_COPY_MIN_BYTES = ZERO_COPY_MIN
SPARE_BUFFERS = MAX_SPARE_BUFFERS


cdef inline bint _referenced(bytearray buf):
    # ob_exports counts live buffer exports: memoryviews on it (and views of those)
    return (<PyByteArrayObject*>buf).ob_exports != 0


cdef class ReadBuffer:
    """A reusable bytearray for BufferedProtocol.get_buffer()/buffer_updated()."""

    def __init__(self, Py_ssize_t size=DEFAULT_SIZE):
        if size <= 0:
            raise ValueError(f"buffer size must be positive, not {size}")
        self.size = size
        self._buf = PyByteArray_FromStringAndSize(NULL, size)    # no need to zero it
        self._spares = []
        self.replaced = 0
        self.reused = 0

    cdef int _check_read(self, Py_ssize_t n) except -1:
        if n < 0 or n > self.size:
            raise ValueError(f"read of {n} bytes into a {self.size}-byte buffer")
        return 0

    cpdef object get_buffer(self, Py_ssize_t sizehint=-1):
        """Where the next read goes: the whole buffer, or a new one if views of the
        previous reads are still alive somewhere."""
        if _referenced(self._buf):
            self._buf = self._unreferenced_buffer()
        return memoryview(self._buf)

    cdef bytearray _unreferenced_buffer(self):
        cdef Py_ssize_t i
        cdef bytearray spare
        for i in range(len(self._spares)):
            spare = <bytearray>self._spares[i]
            if not _referenced(spare):
                self._spares[i] = self._buf
                self.reused += 1
                return spare
        if len(self._spares) < MAX_SPARE_BUFFERS:
            self._spares.append(self._buf)
        self.replaced += 1
        return PyByteArray_FromStringAndSize(NULL, self.size)

    cpdef object filled(self, Py_ssize_t n):
        """The `n` bytes the last read put into the buffer."""
        self._check_read(n)
        return memoryview(self._buf)[:n]

    cdef bytearray last_read(self, Py_ssize_t n):
        self._check_read(n)
        return self._buf

    cpdef object take(self, Py_ssize_t n):
        """The `n` bytes just read, in a form the receiver may keep: a view when
        large, a bytes copy when small."""
        self._check_read(n)
        if n < ZERO_COPY_MIN:
            return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._buf), n)
        return memoryview(self._buf)[:n]


_local = threading.local()


def thread_read_buffer():
    """The ReadBuffer shared by every protocol of this thread's event loop: reads are
    sequential, so one buffer serves them all (10,000 relayed connections must not
    cost 256 KiB each, as uvloop's one receive buffer per loop does not either)."""
    try:
        return _local.buffer
    except AttributeError:
        _local.buffer = ReadBuffer()
        return _local.buffer
