# HPACK (RFC 7541): header compression with the static and dynamic tables.

cdef class HeaderEncoder:
    cdef list _entries            # dynamic table, oldest first: (name, value)
    cdef Py_ssize_t _size         # current dynamic table size (RFC 7541 4.1)
    cdef Py_ssize_t _max_size     # size the encoder uses (<= the peer's SETTINGS_HEADER_TABLE_SIZE)
    cdef Py_ssize_t _inserted     # entries ever inserted: absolute index of the next entry
    cdef dict _by_field           # (name, value) -> absolute index of its newest copy
    cdef dict _by_name            # name -> absolute index of its newest copy
    cdef Py_ssize_t _update_min   # smallest size set since the last block (-1: none pending)
    cdef bint _update_pending
    cdef public bint huffman      # Huffman-encode strings when it is shorter
    cdef public frozenset never_indexed_names
    cdef public frozenset unindexed_names

    cpdef bytes encode(self, object headers)
    cdef void _insert(self, bytes name, bytes value)
    cdef void _evict_to(self, Py_ssize_t limit)
    cdef Py_ssize_t _dynamic_index(self, dict index, object key)


cdef class HeaderDecoder:
    cdef list _entries            # dynamic table, newest last: (name, value)
    cdef Py_ssize_t _size
    cdef Py_ssize_t _max_size     # current size set by the peer's size updates
    cdef public Py_ssize_t max_allowed_table_size   # our SETTINGS_HEADER_TABLE_SIZE
    cdef public Py_ssize_t max_header_list_size     # limit on name + value + 32 per field

    cpdef list decode(self, object block)
    cdef list decode_raw(self, const unsigned char* p, Py_ssize_t n)
    cdef tuple _field(self, Py_ssize_t index)
    cdef void _insert(self, bytes name, bytes value)
    cdef void _evict_to(self, Py_ssize_t limit)
