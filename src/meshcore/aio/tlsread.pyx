# cython: freethreading_compatible = False
"""Reading a TLS connection into a protocol's buffer, in C.

OpenSSL (as Python's ssl module drives it) never reads ahead of one record, so after
a short record this asks whether OpenSSL or the socket holds anything more, and stops
when neither does. Asking OpenSSL once more instead would end every read with
SSLWantReadError, an exception object _ssl builds and fills in at a cost of
microseconds, on the path of every round trip. After a full record it reads on: in a
bulk transfer the next one is usually there, and the question would cost a syscall
per record."""
import ssl

cdef enum:
    FULL_RECORD = 16384         # the most plaintext one TLS record carries

cdef object _WAIT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
cdef object _SSLError = ssl.SSLError
cdef int _SSL_ERROR_EOF = ssl.SSL_ERROR_EOF


cdef bint socket_empty(int fd) noexcept nogil:
    cdef int n = 0
    if ioctl(fd, FIONREAD, &n) < 0:
        return False            # unknown: let OpenSSL find out
    return n == 0


def read_into(object sslobj, int fd, object buf):
    """Decrypt what the connection holds into `buf` (a writable buffer): (bytes, eof).
    `sslobj` is the connection's _ssl object (or an ssl.SSLSocket: the same read and
    pending), `fd` its socket. EOF is close_notify, or a TCP FIN without it (as
    ssl.SSLSocket reads one). Raises OSError or ssl.SSLError on failure."""
    cdef Py_ssize_t size = len(buf)
    cdef Py_ssize_t got = 0
    cdef Py_ssize_t n
    cdef object view = None
    try:
        while got < size:
            if got:
                if view is None:
                    view = memoryview(buf)
                n = sslobj.read(size - got, view[got:])
            else:
                n = sslobj.read(size, buf)
            if n == 0:
                return got, True
            got += n
            # after a full record more usually follows (a bulk transfer): asking the
            # socket each time would cost a syscall per record; after a short one the
            # sender has likely paused, and asking spares the exception
            if n < FULL_RECORD and not sslobj.pending() and socket_empty(fd):
                break
    except _WAIT:
        pass
    except _SSLError as exc:
        if exc.args and exc.args[0] == _SSL_ERROR_EOF:
            return got, True
        raise
    return got, False
