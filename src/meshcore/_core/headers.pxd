# Field-section rules of RFC 9113 section 8 (malformed messages), as pure functions.
# Each raises meshcore.errors.ProtocolError naming the offending field; the
# connection turns that into a stream error (RST_STREAM PROTOCOL_ERROR).
from libc.stdint cimport int64_t

# A request header section (8.3.1, 8.5, RFC 8441 4) ->
#   (method, scheme, authority, path, protocol, regular fields, content_length)
# Pseudo-header values are str (latin-1, so no byte is lost), "" when absent;
# authority falls back to the Host field when :authority is absent. content_length
# is -1 when absent and for CONNECT (tunnel bytes are not content).
# `connect_protocol`: we advertised SETTINGS_ENABLE_CONNECT_PROTOCOL, so :protocol
# (extended CONNECT) is allowed.
cdef tuple parse_request(list fields, bint connect_protocol)

# The rules on a request's pseudo-header values, shared by received requests and the
# requests we send. `host`: the Host field's value, or None.
cdef int check_request_head(bytes method, bytes scheme, bytes authority, bytes path,
                            bytes protocol, bytes host, bint connect_protocol) except -1

# A response header section (8.3.2) -> (status, regular fields, content_length):
# exactly one :status, three digits, 100 or more; 101 is refused (8.6).
cdef tuple parse_response(list fields)

# Trailers: regular fields only.
cdef list check_trailers(list fields)

# Rejects names with uppercase, colons, controls or separators; values with NUL, CR,
# LF or surrounding whitespace; connection-specific fields; TE other than "trailers".
cdef int check_regular_field(bytes name, bytes value) except -1

# content-length values (RFC 9110 8.6): 1*DIGIT, a list of equal values, or several
# fields of equal value. `current`: the value seen so far (-1: none). Returns the value.
cdef int64_t parse_content_length(bytes value, int64_t current) except -2

# The content-length of fields we send (-1: none); malformed is a UsageError.
cdef int64_t outgoing_content_length(list fields) except -2

# The Host field of fields we send (None: none).
cdef bytes outgoing_host(list fields)

# Our own outgoing fields get the same check so we never emit a malformed message;
# pseudo-header fields are refused here (they are the commands' arguments).
cdef list outgoing_fields(object headers)
