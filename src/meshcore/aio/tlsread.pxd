# Reading a TLS connection into a protocol's buffer, record by record, in C; the
# Python entry point is read_into(sslobj, fd, buf) -> (bytes read, eof).

cdef extern from "sys/ioctl.h":
    int ioctl(int fd, unsigned long request, ...) nogil
    unsigned long FIONREAD

# True when the socket's receive queue is empty (False when that cannot be told)
cdef bint socket_empty(int fd) noexcept nogil
