"""HTTP/2 field-section validation (RFC 9113 8.2, 8.3, 8.5)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from meshcore.errors import ProtocolError, UsageError

CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))


cdef int check_regular_field(bytes name, bytes value) except -1:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), i
    cdef unsigned char c
    if n == 0:
        raise ProtocolError("empty field name")
    for i in range(n):
        c = p[i]
        if c <= 0x20 or 0x41 <= c <= 0x5a or c >= 0x7f:
            raise ProtocolError(f"field name {name!r} has an invalid character (byte {i})")
    p = <const unsigned char*>PyBytes_AS_STRING(value)
    n = PyBytes_GET_SIZE(value)
    for i in range(n):
        c = p[i]
        if c == 0 or c == 0x0a or c == 0x0d:
            raise ProtocolError(f"value of {name.decode()!r} contains NUL, CR or LF")
    if n and (p[0] == 0x20 or p[0] == 0x09 or p[n - 1] == 0x20 or p[n - 1] == 0x09):
        raise ProtocolError(f"value of {name.decode()!r} has leading or trailing whitespace")
    if name in CONNECTION_SPECIFIC:
        raise ProtocolError(f"connection-specific field {name.decode()!r}")
    if name == b"te" and value != b"trailers":
        raise ProtocolError("TE field other than \"trailers\"")
    return 0


cdef inline bint _is_pseudo(bytes name):
    return PyBytes_GET_SIZE(name) > 0 and PyBytes_AS_STRING(name)[0] == b":"


cdef tuple parse_request(list fields):
    cdef dict pseudo = {}
    cdef list regular = []
    cdef bint regular_seen = False
    cdef bytes name, value
    for name, value in fields:
        if _is_pseudo(name):
            if regular_seen:
                raise ProtocolError(f"pseudo-header {name.decode()} after a regular field")
            if name not in REQUEST_PSEUDO:
                raise ProtocolError(f"pseudo-header {name.decode()!r} not allowed in a request")
            if name in pseudo:
                raise ProtocolError(f"duplicate pseudo-header {name.decode()}")
            pseudo[name] = value
        else:
            regular_seen = True
            check_regular_field(name, value)
            regular.append((name, value))
    method = pseudo.get(b":method")
    if not method:
        raise ProtocolError("request without :method")
    authority = pseudo.get(b":authority", b"")
    if method == b"CONNECT":
        if b":protocol" in pseudo:
            raise ProtocolError("extended CONNECT (:protocol) is not enabled")
        if b":scheme" in pseudo or b":path" in pseudo:
            raise ProtocolError("CONNECT request with :scheme or :path")
        if not authority:
            raise ProtocolError("CONNECT request without :authority")
    else:
        if b":protocol" in pseudo:
            raise ProtocolError(":protocol in a non-CONNECT request")
        if not pseudo.get(b":scheme") or not pseudo.get(b":path"):
            raise ProtocolError(f"{method.decode(errors='replace')} request without :scheme or :path")
    return method.decode("latin-1"), authority.decode("latin-1"), regular


cdef tuple parse_response(list fields):
    cdef list regular = []
    cdef bytes name, value
    cdef object status = None
    cdef bint regular_seen = False
    for name, value in fields:
        if _is_pseudo(name):
            if regular_seen:
                raise ProtocolError(f"pseudo-header {name.decode()} after a regular field")
            if name != b":status":
                raise ProtocolError(f"pseudo-header {name.decode()!r} not allowed in a response")
            if status is not None:
                raise ProtocolError("duplicate :status")
            if len(value) != 3 or not value.isdigit():
                raise ProtocolError(f":status {value!r} is not a three-digit code")
            status = int(value)
        else:
            regular_seen = True
            check_regular_field(name, value)
            regular.append((name, value))
    if status is None:
        raise ProtocolError("response without :status")
    return status, regular


cdef list check_trailers(list fields):
    cdef bytes name, value
    for name, value in fields:
        if _is_pseudo(name):
            raise ProtocolError(f"pseudo-header {name.decode()} in trailers")
        check_regular_field(name, value)
    return fields


cdef list outgoing_fields(object headers):
    cdef list out = []
    for item in headers:
        name, value = item[0], item[1]
        if isinstance(name, str):
            name = (<str>name).encode("latin-1")
        if isinstance(value, str):
            value = (<str>value).encode("latin-1")
        try:
            check_regular_field(bytes(name), bytes(value))
        except ProtocolError as exc:
            raise UsageError(f"refusing to send a malformed field: {exc.args[0]}") from None
        out.append((bytes(name), bytes(value)) if len(item) == 2 else (bytes(name), bytes(value), item[2]))
    return out


def validate_outgoing_fields(headers):
    """The fields as they would be sent ((bytes, bytes[, flag]) tuples), or UsageError
    naming the malformed one: what sending them would check, for a caller that wants to
    refuse a request before it chooses or dials a connection for it."""
    return outgoing_fields(headers)


def validate_request(fields):
    """Python entry for tests: (method, authority, regular) or ProtocolError."""
    return parse_request(list(fields))


def validate_response(fields):
    return parse_response(list(fields))
