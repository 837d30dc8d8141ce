# meshcore's TLS engine: libssl driven directly over a connection's socket.
# TlsContext is an SSL_CTX built from PEM (credentials and trust bundle);
# TlsConnection is one SSL on a non-blocking socket that reads ahead (one recv()
# carries many records) and decrypts straight into the caller's buffer, and that
# encrypts into its own outbox, sent with one send() per write.
from meshcore.aio.libssl cimport SSL, SSL_CTX


# Encrypted bytes not yet taken by the socket. Allocated on demand, freed when empty,
# so an idle connection holds no write buffer.
cdef struct Outbox:
    char *data
    size_t start                # first byte not yet sent
    size_t end                  # end of the bytes written
    size_t cap


cdef class TlsContext:
    cdef SSL_CTX *ctx
    cdef readonly bint server_side
    cdef bytes _alpn            # the server's protocols, ALPN wire format (the select callback reads it)


cdef class TlsConnection:
    cdef SSL *ssl
    cdef TlsContext _context     # the ALPN callback's data lives in it
    cdef Outbox _out
    cdef int _fd
    cdef readonly bint server_side
    cdef readonly bint eof       # the peer has ended the stream (close_notify, or a FIN without it)
    cdef bint _failed            # a fatal error happened: OpenSSL must not send close_notify now
    cdef bint _blocked           # the socket refused the outbox's last send
    cdef object _deferred        # a read's failure after it had decrypted bytes: raised by the next read

    cdef int _check_open(self) except -1
    cdef int _flush(self) except -1
    cdef object _error(self, int ret, int saved_errno)
