# HPACK Huffman code (RFC 7541 section 5.2 and Appendix B).

# Exact number of bytes `src` takes Huffman-encoded (padding included).
cdef Py_ssize_t huffman_encoded_length(const unsigned char* src, Py_ssize_t n) noexcept nogil

# Encodes into `dst`, which must hold huffman_encoded_length(src, n) bytes; returns that length.
cdef Py_ssize_t huffman_encode_into(const unsigned char* src, Py_ssize_t n,
                                    unsigned char* dst) noexcept nogil

# Decodes; raises meshcore.errors.CompressionError for EOS, bad padding or truncation.
cdef bytes huffman_decode_bytes(const unsigned char* src, Py_ssize_t n)
