# cython: freethreading_compatible = False
"""meshcore's TLS engine: libssl driven directly, in C, over a non-blocking socket.

Python's ssl module reads each record with two recv() calls (header, then body) and
builds Python objects per record and per read. Here OpenSSL reads ahead into a
buffer of several records, so one recv() usually carries many, and a readiness event
is drained record after record into the protocol's buffer without a Python object per
record: the loop ends on SSL_ERROR_WANT_READ, which in C costs nothing (no exception
object), or, for a transport (which waits for readiness anyway), after a small read
that leaves OpenSSL holding nothing: the recv() that would only find the socket
empty is saved.
Draining what OpenSSL holds matters: with read-ahead it may hold bytes the socket no
longer shows, and no readiness event would come for them.

Writes are encrypted into the connection's outbox and sent with one send() for all
the records of a write, instead of one per record. Both the read-ahead buffer
(SSL_MODE_RELEASE_BUFFERS) and the outbox are freed when empty: an idle connection
holds neither.

Failures raise what Python's ssl raises for them (ssl.SSLError with `reason` and
`library`, ssl.SSLCertVerificationError with `verify_code` and `verify_message`,
ssl.SSLEOFError, OSError), so meshcore.identity.tls.handshake_error() names the same
refusal reasons for both.
"""
import ipaddress
import os
import ssl

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove

from meshcore.aio.libssl cimport *


cdef extern from "sys/socket.h" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    enum:
        MSG_NOSIGNAL
        MSG_DONTWAIT


cdef enum:
    RECORD = 16384 + 256            # the largest TLS record on the wire, with its overhead
    READ_AHEAD = 5 * RECORD         # what one recv() may bring in
    # A read of less plaintext than this that leaves OpenSSL holding nothing came
    # from a recv() far from filling the read-ahead buffer: the socket was empty then
    SMALL_READ = 16384
    WRITE_STEP = 128 * 1024         # plaintext encrypted before the socket is offered it
    OUTBOX_MIN = 4096

# what handshake() answers
HANDSHAKE_DONE = 0
WANT_READ = 1
WANT_WRITE = 2

TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"

cdef int _SSL_ERROR_EOF = ssl.SSL_ERROR_EOF
cdef int _CERT_REQUIRED = ssl.CERT_REQUIRED
cdef int _CERT_OPTIONAL = ssl.CERT_OPTIONAL


# ------------------------------------------------------------------ errors

cdef inline void _clear_errors() noexcept nogil:
    # SSL_get_error() needs an empty error queue before an I/O call. ERR_clear_error()
    # wipes all of the queue's slots even when it is empty (some 800 instructions, as
    # much as a small record's AES-GCM); empty, as SSL_get_error() judges it, is
    # ERR_peek_error() == 0, which is cheap: the queue is cleared only when it is not
    if ERR_peek_error() != 0:
        ERR_clear_error()


cdef object _ssl_error(unsigned long e, int code, str context=""):
    """The exception Python's ssl raises for OpenSSL error `e`."""
    cdef const char *text = ERR_reason_error_string(e)
    cdef const char *lib = ERR_lib_error_string(e)
    message = text.decode("ascii", "replace") if text != NULL else f"error {ERR_GET_REASON(e)}"
    reason = message.upper().replace(" ", "_")
    library = "SSL" if ERR_GET_LIB(e) == ERR_LIB_SSL else (lib.decode("ascii", "replace") if lib != NULL else None)
    exc = ssl.SSLError(code, f"{context}[{library}: {reason}] {message}")
    exc.reason, exc.library = reason, library
    return exc


cdef object _openssl_error(str what):
    """For a failed setup call: OpenSSL's last error, or `what`."""
    cdef unsigned long e = ERR_peek_last_error()
    ERR_clear_error()
    if e == 0:
        return ssl.SSLError(what)
    return _ssl_error(e, SSL_ERROR_SSL, f"{what}: ")


# ------------------------------------------------------------------ the outbox BIO

cdef int _outbox_write(BIO *bio, const char *data, int n) noexcept nogil:
    cdef Outbox *box = <Outbox *> BIO_get_data(bio)
    cdef size_t need, cap
    cdef char *grown
    if n <= 0:
        return 0
    if box.start and box.end + <size_t> n > box.cap:
        memmove(box.data, box.data + box.start, box.end - box.start)
        box.end -= box.start
        box.start = 0
    need = box.end + <size_t> n
    if need > box.cap:
        cap = box.cap * 2 if box.cap else OUTBOX_MIN
        while cap < need:
            cap *= 2
        grown = <char *> realloc(box.data, cap)
        if grown == NULL:
            return -1
        box.data, box.cap = grown, cap
    memcpy(box.data + box.end, data, n)
    box.end += n
    return n


cdef long _outbox_ctrl(BIO *bio, int cmd, long num, void *ptr) noexcept nogil:
    cdef Outbox *box = <Outbox *> BIO_get_data(bio)
    if cmd == BIO_CTRL_FLUSH:
        return 1                    # the connection sends the outbox after each call
    if cmd == BIO_CTRL_WPENDING:
        return <long> (box.end - box.start)
    return 0


cdef BIO_METHOD *_OUTBOX = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, b"meshcore outbox")
if _OUTBOX == NULL or not BIO_meth_set_write(_OUTBOX, _outbox_write) \
        or not BIO_meth_set_ctrl(_OUTBOX, _outbox_ctrl):
    raise ImportError("libssl refused meshcore's outbox BIO method")


# ------------------------------------------------------------------ ALPN (server)

cdef int _select_alpn(SSL *s, const unsigned char **out, unsigned char *outlen,
                      const unsigned char *inp, unsigned int inlen, void *arg) noexcept:
    # no common protocol: the handshake goes on without ALPN, and the check after it
    # refuses the peer with a reason of its own (as with Python's ssl)
    cdef bytes alpn = (<TlsContext> arg)._alpn
    cdef const unsigned char *ours = alpn
    cdef unsigned int ours_len = len(alpn)
    if SSL_select_next_proto(<unsigned char **> out, outlen, ours, ours_len, inp, inlen) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_NOACK
    return SSL_TLSEXT_ERR_OK


cdef bytes _alpn_wire(protocols):
    out = bytearray()
    for p in protocols:
        p = p.encode("ascii") if isinstance(p, str) else bytes(p)
        if not 0 < len(p) < 256:
            raise ValueError(f"ALPN protocol {p!r}: 1 to 255 bytes")
        out.append(len(p))
        out += p
    return bytes(out)


# ------------------------------------------------------------------ PEM loading

cdef int _add_roots(SSL_CTX *ctx, bytes pem) except -1:
    cdef BIO *bio = BIO_new_mem_buf(<const char *> pem, len(pem))
    cdef X509 *cert
    cdef X509_STORE *store = SSL_CTX_get_cert_store(ctx)
    cdef int count = 0
    if bio == NULL:
        raise MemoryError()
    try:
        while True:
            cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)
            if cert == NULL:
                break
            ok = X509_STORE_add_cert(store, cert)
            X509_free(cert)
            if not ok:
                raise _openssl_error("trust bundle certificate refused")
            count += 1
    finally:
        BIO_free(bio)
    ERR_clear_error()               # the end of the PEM reads as an error
    if not count:
        raise ssl.SSLError("no certificate in the trust bundle")
    return 0


cdef int _use_chain(SSL_CTX *ctx, bytes chain_pem, bytes key_pem) except -1:
    cdef BIO *bio = BIO_new_mem_buf(<const char *> chain_pem, len(chain_pem))
    cdef X509 *cert
    cdef EVP_PKEY *key
    cdef int count = 0
    if bio == NULL:
        raise MemoryError()
    try:
        while True:
            cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)
            if cert == NULL:
                break
            # the first is the leaf; the rest go out with it as its chain
            ok = SSL_CTX_use_certificate(ctx, cert) if count == 0 else SSL_CTX_add1_chain_cert(ctx, cert)
            X509_free(cert)
            if not ok:
                raise _openssl_error("certificate refused")
            count += 1
    finally:
        BIO_free(bio)
    ERR_clear_error()
    if not count:
        raise ssl.SSLError("no certificate in the credentials")
    bio = BIO_new_mem_buf(<const char *> key_pem, len(key_pem))
    if bio == NULL:
        raise MemoryError()
    key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
    BIO_free(bio)
    if key == NULL:
        raise _openssl_error("private key unreadable")
    ok = SSL_CTX_use_PrivateKey(ctx, key)
    EVP_PKEY_free(key)
    if not ok or not SSL_CTX_check_private_key(ctx):
        raise _openssl_error("private key refused (does it match the certificate?)")
    return 0


# ------------------------------------------------------------------ contexts

cdef class TlsContext:
    """An SSL_CTX for one side of mTLS: presents `chain_pem` (leaf first) with
    `key_pem`, verifies the peer against `roots_pem`. Versions are protocol numbers
    (0x0303 TLS 1.2, 0x0304 TLS 1.3; 0 for OpenSSL's bound). TLS 1.3 uses the AES-GCM
    suites only; `tls12_ciphers` is an OpenSSL cipher list for TLS 1.2. No session
    resumption on either side."""

    def __cinit__(self, bint server_side, bytes chain_pem, bytes key_pem, bytes roots_pem, *,
                  int min_version=TLS1_3_VERSION, int max_version=TLS1_3_VERSION,
                  bytes tls12_ciphers=None, bytes tls13_suites=TLS13_SUITES, alpn=("h2",),
                  int verify_mode=_CERT_REQUIRED, int tickets=0):
        self.server_side = server_side
        self.ctx = SSL_CTX_new(TLS_server_method() if server_side else TLS_client_method())
        if self.ctx == NULL:
            raise _openssl_error("SSL_CTX_new failed")
        ctx = self.ctx
        if not SSL_CTX_set_min_proto_version(ctx, min_version) or \
                not SSL_CTX_set_max_proto_version(ctx, max_version):
            raise _openssl_error("TLS version bounds refused")
        SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION)
        # Python's ssl contexts run at level 2 (no RSA keys under 2048 bits, no SHA-1
        # signatures): the same peers are refused by both stacks
        SSL_CTX_set_security_level(ctx, 2)
        if tls12_ciphers is not None and not SSL_CTX_set_cipher_list(ctx, tls12_ciphers):
            raise _openssl_error("TLS 1.2 cipher list refused")
        if not SSL_CTX_set_ciphersuites(ctx, tls13_suites):
            raise _openssl_error("TLS 1.3 cipher suites refused")
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)
        if server_side:
            SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE)
            SSL_CTX_set_num_tickets(ctx, tickets)
            if not tickets:
                SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET)
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        SSL_CTX_set_read_ahead(ctx, 1)
        SSL_CTX_set_default_read_buffer_len(ctx, READ_AHEAD)
        if verify_mode == _CERT_REQUIRED:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL)
        elif verify_mode == _CERT_OPTIONAL:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL)
        else:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL)
        _add_roots(ctx, roots_pem)
        _use_chain(ctx, chain_pem, key_pem)
        wire = _alpn_wire(alpn)
        if server_side:
            self._alpn = wire
            if wire:
                SSL_CTX_set_alpn_select_cb(ctx, _select_alpn, <void *> self)
        elif wire and SSL_CTX_set_alpn_protos(ctx, wire, len(wire)) != 0:
            raise _openssl_error("ALPN protocols refused")

    def __dealloc__(self):
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)      # connections still open keep their reference
            self.ctx = NULL


# ------------------------------------------------------------------ connections

cdef class TlsConnection:
    """One TLS connection over the connected non-blocking socket `fd`, which stays
    the caller's (never closed here). Also what the checks after the handshake read:
    getpeercert(), selected_alpn_protocol(), cipher(), version(), as ssl.SSLObject."""

    def __cinit__(self, TlsContext context, int fd, bint server_side):
        cdef BIO *rbio
        cdef BIO *wbio
        if server_side != context.server_side:
            raise ValueError("a server-side connection needs a server context" if server_side
                             else "a client-side connection needs a client context")
        self._context = context
        self._fd = fd
        self.server_side = server_side
        self.ssl = SSL_new(context.ctx)
        if self.ssl == NULL:
            raise _openssl_error("SSL_new failed")
        rbio = BIO_new_socket(fd, BIO_NOCLOSE)
        wbio = BIO_new(_OUTBOX)
        if rbio == NULL or wbio == NULL:
            if rbio != NULL:
                BIO_free(rbio)
            if wbio != NULL:
                BIO_free(wbio)
            raise _openssl_error("BIO_new failed")
        BIO_set_data(wbio, &self._out)
        BIO_set_init(wbio, 1)
        SSL_set_bio(self.ssl, rbio, wbio)
        if server_side:
            SSL_set_accept_state(self.ssl)
        else:
            SSL_set_connect_state(self.ssl)

    def __dealloc__(self):
        if self.ssl != NULL:
            SSL_free(self.ssl)
            self.ssl = NULL
        free(self._out.data)
        self._out.data = NULL

    def free(self) -> None:
        """Let go of OpenSSL's state now (the connection is over); the accessors
        answer None afterwards."""
        if self.ssl != NULL:
            SSL_free(self.ssl)
            self.ssl = NULL
        free(self._out.data)
        self._out.data = NULL
        self._out.start = self._out.end = self._out.cap = 0
        self._failed = True

    cdef int _check_open(self) except -1:
        if self.ssl == NULL:
            raise ValueError("TLS connection already closed")
        return 0

    # ------------------------------------------------------------ errors

    cdef object _error(self, int ret, int saved_errno):
        """The exception for a failed SSL_* call (its return value `ret`), or None
        when it only has to wait. Clears OpenSSL's error queue."""
        cdef int err = SSL_get_error(self.ssl, ret)
        cdef unsigned long e
        cdef long verify
        if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
            return None
        self._failed = True
        if err == SSL_ERROR_ZERO_RETURN:
            ERR_clear_error()
            return ssl.SSLZeroReturnError(err, "TLS/SSL connection has been closed (EOF)")
        e = ERR_peek_last_error()
        ERR_clear_error()
        if e == 0:
            if err == SSL_ERROR_SYSCALL and saved_errno:
                return OSError(saved_errno, os.strerror(saved_errno))
            return ssl.SSLEOFError(_SSL_ERROR_EOF, "EOF occurred in violation of protocol")
        if ERR_GET_LIB(e) == ERR_LIB_SSL:
            if ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING:
                return ssl.SSLEOFError(_SSL_ERROR_EOF, "[SSL: UNEXPECTED_EOF_WHILE_READING] "
                                                       "EOF occurred in violation of protocol")
            if ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED:
                verify = SSL_get_verify_result(self.ssl)
                text = X509_verify_cert_error_string(verify).decode("ascii", "replace")
                exc = ssl.SSLCertVerificationError(err, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                                        f"verify failed: {text}")
                exc.reason, exc.library = "CERTIFICATE_VERIFY_FAILED", "SSL"
                exc.verify_code, exc.verify_message = verify, text
                return exc
        return _ssl_error(e, err)

    # ------------------------------------------------------------ sending

    cdef int _flush(self) except -1:
        """Offer the outbox to the socket until it is empty or the socket is full."""
        cdef Outbox *box = &self._out
        cdef ssize_t n
        cdef int err
        while box.start < box.end:
            n = send(self._fd, box.data + box.start, box.end - box.start, MSG_NOSIGNAL | MSG_DONTWAIT)
            if n < 0:
                err = errno
                if err == EAGAIN:              # EWOULDBLOCK on Linux
                    self._blocked = True
                    return 0
                if err == EINTR:
                    continue
                self._failed = True
                raise OSError(err, os.strerror(err))
            box.start += n
        self._blocked = False
        free(box.data)
        box.data = NULL
        box.start = box.end = box.cap = 0
        return 0

    def flush(self) -> int:
        """Send what the outbox holds, as far as the socket takes it: bytes left."""
        if self.ssl != NULL:
            self._flush()
        return self._out.end - self._out.start

    @property
    def unsent(self) -> int:
        """Encrypted bytes the socket has not taken yet."""
        return self._out.end - self._out.start

    def write(self, data, bint more=False) -> int:
        """Encrypt `data` (any buffer) and send it: how many of its bytes were taken.
        Fewer than all only when the socket is full: the rest is for a later call,
        once the socket is writable. What is taken but not yet sent waits in the
        outbox (`unsent`). With more=True the records stay in the outbox (up to a
        bound) for the write that follows: the records of several writes then leave
        in one send()."""
        cdef Py_buffer view
        cdef size_t taken = 0, step, n
        cdef const char *p
        cdef int ret
        self._check_open()
        if self._blocked:
            self._flush()
            if self._blocked:
                return 0
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const char *> view.buf
            _clear_errors()
            while taken < <size_t> view.len:
                step = min(<size_t> view.len - taken, <size_t> WRITE_STEP)
                ret = SSL_write_ex(self.ssl, p + taken, step, &n)
                if ret <= 0:
                    exc = self._error(ret, errno)
                    if exc is None:
                        break
                    raise exc
                taken += n
                if not more or self._out.end - self._out.start >= WRITE_STEP:
                    self._flush()
                    if self._blocked:
                        break
        finally:
            PyBuffer_Release(&view)
        return taken

    # ------------------------------------------------------------ receiving

    def read_into(self, buf, bint drain=True) -> int:
        """Decrypt what the connection holds into `buf` (a writable buffer), until it
        is full or OpenSSL needs the socket to become readable again: bytes written.
        With drain=False it also stops after a small read (under 16 KiB) that leaves
        OpenSSL holding nothing (has_pending() is False): the socket was empty when
        OpenSSL read it, so the recv() that would only find it empty is saved, and the
        socket's readiness tells when more (or the end) comes; a caller that waits for
        readiness anyway (a transport) passes it. Larger reads go on as with drain.
        At the peer's end of stream `eof` becomes True (close_notify, or a TCP FIN
        without it, which Python's ssl reads as an end too). Raises ssl.SSLError or
        OSError when the connection fails."""
        cdef Py_buffer view
        cdef size_t got = 0, n
        cdef char *p
        cdef int ret, err, saved
        self._check_open()
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc
        if self.eof:
            return 0
        PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
        try:
            p = <char *> view.buf
            _clear_errors()
            while got < <size_t> view.len:
                ret = SSL_read_ex(self.ssl, p + got, <size_t> view.len - got, &n)
                if ret > 0:
                    got += n
                    if not drain and got < SMALL_READ and SSL_has_pending(self.ssl) != 1:
                        break
                    continue
                saved = errno
                err = SSL_get_error(self.ssl, ret)
                if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
                    break
                if err == SSL_ERROR_ZERO_RETURN:
                    ERR_clear_error()
                    self.eof = True
                    break
                exc = self._error(ret, saved)
                if isinstance(exc, ssl.SSLEOFError):
                    self.eof = True         # a FIN without close_notify: the end, as ssl reads it
                    break
                if got:
                    # what came before the failure (a peer's last frames, then its RST)
                    # is delivered first; the next read raises
                    self._deferred = exc
                    break
                raise exc
        finally:
            PyBuffer_Release(&view)
        if self._out.start < self._out.end:
            try:
                self._flush()               # an answer OpenSSL wrote while reading (a key update)
            except OSError:
                pass                        # what was read is delivered; the next write reports it
        return got

    def has_pending(self) -> bool:
        """OpenSSL holds bytes of the peer's that no readiness event will announce:
        decrypted, or records read ahead (or the start of one: then reading again
        finds nothing until the rest arrives)."""
        return self.ssl != NULL and not self.eof and SSL_has_pending(self.ssl) == 1

    # ------------------------------------------------------------ handshake and end

    def handshake(self) -> int:
        """One step of the handshake: HANDSHAKE_DONE, or what it waits for (WANT_READ,
        WANT_WRITE). Raises ssl.SSLError (ssl.SSLCertVerificationError for a refused
        certificate) or OSError."""
        cdef int ret, saved, err
        self._check_open()
        if self._out.start < self._out.end:
            self._flush()
            if self._out.start < self._out.end:
                return WANT_WRITE
        ERR_clear_error()
        ret = SSL_do_handshake(self.ssl)
        saved = errno
        if ret == 1:
            self._flush()
            return WANT_WRITE if self._out.start < self._out.end else HANDSHAKE_DONE
        err = SSL_get_error(self.ssl, ret)
        exc = self._error(ret, saved)
        # an alert OpenSSL wrote before failing goes to the peer, so it learns why
        try:
            self._flush()
        except OSError:
            pass
        if exc is not None:
            raise exc
        if self._out.start < self._out.end or err == SSL_ERROR_WANT_WRITE:
            return WANT_WRITE
        return WANT_READ

    def shutdown(self) -> bool:
        """Queue close_notify and send what the socket takes. True when the peer's
        close_notify had come too (nothing more to read); False otherwise, or when the
        connection failed (no close_notify may follow a failure)."""
        cdef int ret
        if self.ssl == NULL or self._failed:
            return False
        ERR_clear_error()
        ret = SSL_shutdown(self.ssl)
        if ret < 0:
            ERR_clear_error()
            return False
        self._flush()
        return ret == 1

    @property
    def peer_closed(self) -> bool:
        """The peer's close_notify has arrived."""
        return self.ssl != NULL and (SSL_get_shutdown(self.ssl) & SSL_RECEIVED_SHUTDOWN) != 0

    # ------------------------------------------------------------ what was agreed

    def getpeercert(self, binary_form=False):
        """The verified peer certificate: DER with binary_form, else the dict Python's
        ssl gives, with its version and subjectAltName entries (URI, DNS, IP Address)
        only; None without one."""
        cdef X509 *cert
        cdef unsigned char *der = NULL
        cdef int n
        if self.ssl == NULL:
            return None
        cert = SSL_get0_peer_certificate(self.ssl)
        # a certificate that did not verify (a context whose verification was turned
        # off) is no identity: none, as Python's ssl answers then
        if cert == NULL or SSL_get_verify_result(self.ssl) != X509_V_OK:
            return None
        if binary_form:
            n = i2d_X509(cert, &der)
            if n < 0:
                raise _openssl_error("certificate encoding failed")
            try:
                return der[:n]
            finally:
                OPENSSL_free(der)
        # never empty for a certificate (an empty dict reads as none presented)
        fields = {"version": X509_get_version(cert) + 1}
        sans = _subject_alt_names(cert)
        if sans is not None:
            fields["subjectAltName"] = sans
        return fields

    def selected_alpn_protocol(self):
        cdef const unsigned char *data = NULL
        cdef unsigned int n = 0
        if self.ssl == NULL:
            return None
        SSL_get0_alpn_selected(self.ssl, &data, &n)
        return data[:n].decode("ascii", "replace") if n else None

    def cipher(self):
        """(name, protocol version, secret bits), as ssl.SSLObject.cipher()."""
        cdef const SSL_CIPHER *c
        if self.ssl == NULL:
            return None
        c = SSL_get_current_cipher(self.ssl)
        if c == NULL:
            return None
        return (SSL_CIPHER_get_name(c).decode("ascii"), SSL_CIPHER_get_version(c).decode("ascii"),
                SSL_CIPHER_get_bits(c, NULL))

    def version(self):
        if self.ssl == NULL:
            return None
        return SSL_get_version(self.ssl).decode("ascii")

    def compression(self):
        return None


cdef object _subject_alt_names(X509 *cert):
    cdef GENERAL_NAMES *names = <GENERAL_NAMES *> X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL)
    cdef GENERAL_NAME *name
    cdef int i
    if names == NULL:
        ERR_clear_error()
        return None
    out = []
    try:
        for i in range(OPENSSL_sk_num(<OPENSSL_STACK *> names)):
            name = <GENERAL_NAME *> OPENSSL_sk_value(<OPENSSL_STACK *> names, i)
            if name.type == GEN_URI or name.type == GEN_DNS:
                value = (<const char *> ASN1_STRING_get0_data(name.d.ia5))[:ASN1_STRING_length(name.d.ia5)]
                out.append(("URI" if name.type == GEN_URI else "DNS", value.decode("ascii", "replace")))
            elif name.type == GEN_IPADD:
                value = (<const char *> ASN1_STRING_get0_data(name.d.ip))[:ASN1_STRING_length(name.d.ip)]
                out.append(("IP Address", _ip_text(value)))
    finally:
        GENERAL_NAMES_free(names)
    return tuple(out)


cdef str _ip_text(bytes raw):
    # ssl writes IPv6 addresses in full, uppercase, without shortening
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        return ipaddress.IPv6Address(raw).exploded.upper()
    return "<invalid>"
