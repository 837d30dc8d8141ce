# The parts of libssl's and libcrypto's public API (OpenSSL 3) that meshcore's TLS
# engine (meshcore.aio.openssl) uses. Declarations only: no code lives here.
# Macros are declared as the functions they expand to a call of.
from libc.stdint cimport uint64_t


cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_free(void *ptr)

    ctypedef struct OPENSSL_STACK:
        pass
    int OPENSSL_sk_num(const OPENSSL_STACK *st)
    void *OPENSSL_sk_value(const OPENSSL_STACK *st, int i)


cdef extern from "openssl/err.h" nogil:
    enum:
        ERR_LIB_SSL
    unsigned long ERR_get_error()
    unsigned long ERR_peek_error()
    unsigned long ERR_peek_last_error()
    void ERR_clear_error()
    int ERR_GET_LIB(unsigned long e)
    int ERR_GET_REASON(unsigned long e)
    const char *ERR_reason_error_string(unsigned long e)
    const char *ERR_lib_error_string(unsigned long e)


cdef extern from "openssl/bio.h" nogil:
    ctypedef struct BIO:
        pass
    ctypedef struct BIO_METHOD:
        pass
    enum:
        BIO_NOCLOSE
        BIO_TYPE_SOURCE_SINK
        BIO_CTRL_PENDING
        BIO_CTRL_FLUSH
        BIO_CTRL_WPENDING
    BIO *BIO_new(const BIO_METHOD *method)
    BIO *BIO_new_mem_buf(const void *buf, int len)
    BIO *BIO_new_socket(int sock, int close_flag)
    int BIO_free(BIO *a)
    int BIO_get_new_index()
    BIO_METHOD *BIO_meth_new(int type, const char *name)
    int BIO_meth_set_write(BIO_METHOD *biom, int (*write)(BIO *, const char *, int) noexcept nogil)
    int BIO_meth_set_ctrl(BIO_METHOD *biom, long (*ctrl)(BIO *, int, long, void *) noexcept nogil)
    void BIO_set_data(BIO *a, void *ptr)
    void *BIO_get_data(BIO *a)
    void BIO_set_init(BIO *a, int init)


cdef extern from "openssl/asn1.h" nogil:
    ctypedef struct ASN1_STRING:
        pass
    const unsigned char *ASN1_STRING_get0_data(const ASN1_STRING *x)
    int ASN1_STRING_length(const ASN1_STRING *x)


cdef extern from "openssl/x509.h" nogil:
    ctypedef struct X509:
        pass
    ctypedef struct X509_STORE:
        pass
    ctypedef struct EVP_PKEY:
        pass
    enum:
        X509_V_OK
    void X509_free(X509 *a)
    long X509_get_version(const X509 *x)
    int i2d_X509(X509 *a, unsigned char **out)
    void *X509_get_ext_d2i(const X509 *x, int nid, int *crit, int *idx)
    int X509_STORE_add_cert(X509_STORE *store, X509 *x)
    const char *X509_verify_cert_error_string(long n)
    void EVP_PKEY_free(EVP_PKEY *pkey)


cdef extern from "openssl/x509v3.h" nogil:
    enum:
        NID_subject_alt_name
        GEN_DNS
        GEN_URI
        GEN_IPADD
    ctypedef union GENERAL_NAME_value:
        ASN1_STRING *ia5                    # dNSName, uniformResourceIdentifier
        ASN1_STRING *ip                     # iPAddress: 4 or 16 octets
    ctypedef struct GENERAL_NAME:
        int type
        GENERAL_NAME_value d
    ctypedef struct GENERAL_NAMES:           # STACK_OF(GENERAL_NAME): read as an OPENSSL_STACK
        pass
    void GENERAL_NAMES_free(GENERAL_NAMES *names)


cdef extern from "openssl/pem.h" nogil:
    X509 *PEM_read_bio_X509(BIO *bp, X509 **x, void *cb, void *u)
    EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, void *cb, void *u)


cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_CIPHER:
        pass

    enum:
        TLS1_2_VERSION
        TLS1_3_VERSION
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        SSL_MODE_RELEASE_BUFFERS
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_SESS_CACHE_OFF
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_NOACK
        OPENSSL_NPN_NEGOTIATED
        SSL_RECEIVED_SHUTDOWN
        SSL_R_CERTIFICATE_VERIFY_FAILED
        SSL_R_UNEXPECTED_EOF_WHILE_READING
    uint64_t SSL_OP_NO_COMPRESSION
    uint64_t SSL_OP_NO_RENEGOTIATION
    uint64_t SSL_OP_NO_TICKET
    uint64_t SSL_OP_CIPHER_SERVER_PREFERENCE

    const SSL_METHOD *TLS_server_method()
    const SSL_METHOD *TLS_client_method()

    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    void SSL_CTX_free(SSL_CTX *ctx)
    uint64_t SSL_CTX_set_options(SSL_CTX *ctx, uint64_t op)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)                                  # macro
    long SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)                   # macro
    long SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version)                   # macro
    long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode)                    # macro
    long SSL_CTX_set_read_ahead(SSL_CTX *ctx, long yes)                             # macro
    long SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *x509)                          # macro
    void SSL_CTX_set_default_read_buffer_len(SSL_CTX *ctx, size_t len)
    void SSL_CTX_set_security_level(SSL_CTX *ctx, int level)
    int SSL_CTX_set_num_tickets(SSL_CTX *ctx, size_t num_tickets)
    int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *spec)
    int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *spec)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *callback)
    X509_STORE *SSL_CTX_get_cert_store(const SSL_CTX *ctx)
    int SSL_CTX_use_certificate(SSL_CTX *ctx, X509 *x)
    int SSL_CTX_use_PrivateKey(SSL_CTX *ctx, EVP_PKEY *pkey)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    int SSL_CTX_set_alpn_protos(SSL_CTX *ctx, const unsigned char *protos, unsigned int len)   # 0 is success
    int SSL_select_next_proto(unsigned char **out, unsigned char *outlen,
                              const unsigned char *server, unsigned int server_len,
                              const unsigned char *client, unsigned int client_len)

    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    void SSL_set_bio(SSL *ssl, BIO *rbio, BIO *wbio)
    void SSL_set_accept_state(SSL *ssl)
    void SSL_set_connect_state(SSL *ssl)
    int SSL_do_handshake(SSL *ssl)
    int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)
    int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)
    int SSL_shutdown(SSL *ssl)
    int SSL_get_shutdown(const SSL *ssl)
    int SSL_get_error(const SSL *ssl, int ret)
    int SSL_has_pending(const SSL *ssl)
    long SSL_get_verify_result(const SSL *ssl)
    X509 *SSL_get0_peer_certificate(const SSL *ssl)
    void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len)
    const SSL_CIPHER *SSL_get_current_cipher(const SSL *ssl)
    const char *SSL_CIPHER_get_name(const SSL_CIPHER *c)
    const char *SSL_CIPHER_get_version(const SSL_CIPHER *c)
    int SSL_CIPHER_get_bits(const SSL_CIPHER *c, int *alg_bits)
    const char *SSL_get_version(const SSL *ssl)


cdef extern from "openssl/ssl.h":
    # the callback runs inside SSL_do_handshake(), which meshcore calls holding the GIL
    void SSL_CTX_set_alpn_select_cb(SSL_CTX *ctx,
                                    int (*cb)(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                              const unsigned char *inp, unsigned int inlen,
                                              void *arg) noexcept,
                                    void *arg)
