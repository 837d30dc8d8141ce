# Field-section rules of RFC 9113 section 8 (malformed messages), as pure functions.
# Each raises meshcore.errors.ProtocolError naming the offending field; the
# connection turns that into a stream error (RST_STREAM PROTOCOL_ERROR).

# -> (method, authority, regular fields). CONNECT: :method + :authority only (8.5);
# other methods: :method, :scheme, :path required (8.3.1).
cdef tuple parse_request(list fields)

# -> (status, regular fields): exactly one three-digit :status.
cdef tuple parse_response(list fields)

# Trailers: regular fields only.
cdef list check_trailers(list fields)

# Rejects names with uppercase, controls or separators; values with NUL, CR, LF or
# surrounding whitespace; connection-specific fields; TE other than "trailers".
cdef int check_regular_field(bytes name, bytes value) except -1

# Our own outgoing fields get the same check so we never emit a malformed message.
cdef list outgoing_fields(object headers)
