"""HTTP/2 field-section validation (RFC 9113 8.1.1, 8.2, 8.3, 8.5, 8.6; RFC 8441 4)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t
from libc.string cimport memcmp

from meshcore.errors import ProtocolError, UsageError

CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))

# byte classes, one table each (a lookup per byte keeps the CONNECT path's checks cheap)
cdef unsigned char _TOKEN[256]         # tchar (RFC 9110 5.6.2): methods, :protocol
cdef unsigned char _AUTHORITY[256]     # RFC 3986 authority: unreserved, pct, sub-delims, : @ [ ]
cdef unsigned char _SCHEME[256]        # RFC 3986 scheme after its first letter


cdef void _build_tables():
    cdef int c
    for c in range(256):
        alnum = (0x30 <= c <= 0x39) or (0x41 <= c <= 0x5a) or (0x61 <= c <= 0x7a)
        _TOKEN[c] = alnum or c in b"!#$%&'*+-.^_`|~"
        _AUTHORITY[c] = alnum or c in b"-._~%!$&'()*+,;=:@[]"
        _SCHEME[c] = alnum or c in b"+-."


_build_tables()

cdef enum:
    MAX_LENGTH_DIGITS = 18      # below 2^63: a content-length we can count up to


cdef inline str _show(bytes value):
    """A field value for an error message: readable, and bounded."""
    if PyBytes_GET_SIZE(value) > 64:
        return repr(value[:64].decode("latin-1")) + "..."
    return repr(value.decode("latin-1"))


cdef int check_regular_field(bytes name, bytes value) except -1:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), i
    cdef unsigned char c
    if n == 0:
        raise ProtocolError("empty field name")
    for i in range(n):
        c = p[i]
        if c <= 0x20 or 0x41 <= c <= 0x5a or c >= 0x7f or c == 0x3a:
            raise ProtocolError(f"field name {_show(name)} has an invalid character (byte {i})")
    _check_value(name, value)
    if name in CONNECTION_SPECIFIC:
        raise ProtocolError(f"connection-specific field {name.decode()!r}")
    if name == b"te" and value != b"trailers" and value.lower() != b"trailers":
        raise ProtocolError("TE field other than \"trailers\"")
    return 0


cdef inline int _check_value(bytes name, bytes value) except -1:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if c == 0 or c == 0x0a or c == 0x0d:
            raise ProtocolError(f"value of {name.decode('latin-1')!r} contains NUL, CR or LF")
    if n and (p[0] == 0x20 or p[0] == 0x09 or p[n - 1] == 0x20 or p[n - 1] == 0x09):
        raise ProtocolError(f"value of {name.decode('latin-1')!r} has leading or trailing whitespace")
    return 0


cdef inline bint _is_pseudo(bytes name):
    return PyBytes_GET_SIZE(name) > 0 and PyBytes_AS_STRING(name)[0] == b":"


cdef inline bint _in_class(bytes value, unsigned char* table):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(value)):
        if not table[p[i]]:
            return False
    return True


cdef inline bint _named(bytes name, const char* literal, Py_ssize_t n):
    return PyBytes_GET_SIZE(name) == n and memcmp(PyBytes_AS_STRING(name), literal, n) == 0


cdef inline str _text(bytes value):
    return "" if value is None else value.decode("latin-1")


# ------------------------------------------------------------------ requests

cdef tuple parse_request(list fields, bint connect_protocol):
    cdef bytes method = None, scheme = None, authority = None, path = None, protocol = None
    cdef bytes host = None, name, value
    cdef list regular = []
    cdef bint regular_seen = False
    cdef int64_t length = -1
    cdef const char* p
    for item in fields:
        name = <bytes>(<tuple>item)[0]
        value = <bytes>(<tuple>item)[1]
        p = PyBytes_AS_STRING(name)
        if PyBytes_GET_SIZE(name) and p[0] == b":":
            if regular_seen:
                raise ProtocolError(f"pseudo-header {_show(name)} after a regular field")
            if _named(name, ":method", 7):
                if method is not None:
                    raise ProtocolError("duplicate pseudo-header :method")
                method = value
            elif _named(name, ":authority", 10):
                if authority is not None:
                    raise ProtocolError("duplicate pseudo-header :authority")
                authority = value
            elif _named(name, ":scheme", 7):
                if scheme is not None:
                    raise ProtocolError("duplicate pseudo-header :scheme")
                scheme = value
            elif _named(name, ":path", 5):
                if path is not None:
                    raise ProtocolError("duplicate pseudo-header :path")
                path = value
            elif _named(name, ":protocol", 9):
                if protocol is not None:
                    raise ProtocolError("duplicate pseudo-header :protocol")
                protocol = value
            else:
                raise ProtocolError(f"pseudo-header {_show(name)} not allowed in a request")
            _check_value(name, value)
        else:
            regular_seen = True
            check_regular_field(name, value)
            if _named(name, "host", 4):
                if host is not None:
                    raise ProtocolError("several Host fields")
                host = value
            elif _named(name, "content-length", 14):
                length = parse_content_length(value, length)
            regular.append(item)
    if method is None:
        raise ProtocolError("request without :method")
    check_request_head(method, scheme, authority, path, protocol, host, connect_protocol)
    if protocol is None and PyBytes_GET_SIZE(method) == 7 and memcmp(PyBytes_AS_STRING(method), "CONNECT", 7) == 0:
        return "CONNECT", "", authority.decode("latin-1"), "", "", regular, -1
    if protocol is not None:
        length = -1
    return (method.decode("latin-1"), _text(scheme), _text(authority if authority is not None else host),
            _text(path), _text(protocol), regular, length)


cdef int check_request_head(bytes method, bytes scheme, bytes authority, bytes path,
                            bytes protocol, bytes host, bint connect_protocol) except -1:
    if not method:
        raise ProtocolError("request without :method" if method is None else "empty :method")
    if not _in_class(method, _TOKEN):
        raise ProtocolError(f":method {_show(method)} is not a token")
    cdef bint connect = method == b"CONNECT"
    if protocol is not None:
        if not connect:
            raise ProtocolError(f":protocol in a {method.decode('latin-1')} request "
                                "(only extended CONNECT carries it)")
        if not connect_protocol:
            raise ProtocolError("extended CONNECT (:protocol) is not enabled "
                                "(SETTINGS_ENABLE_CONNECT_PROTOCOL was not sent)")
        if not protocol or not _in_class(protocol, _TOKEN):
            raise ProtocolError(f":protocol {_show(protocol)} is not a token")
        if scheme is None or path is None:
            raise ProtocolError("extended CONNECT request without :scheme or :path")
        if not authority:
            raise ProtocolError("extended CONNECT request without :authority")
    elif connect:
        # the HBONE fast path: :method and :authority, nothing else (8.5)
        if scheme is not None or path is not None:
            raise ProtocolError("CONNECT request with :scheme or :path "
                                "(only extended CONNECT carries them)")
        if not authority:
            raise ProtocolError("CONNECT request without :authority")
        if not _in_class(authority, _AUTHORITY):
            raise ProtocolError(f":authority {_show(authority)} has a character an authority cannot have")
        if host is not None and not _same_authority(authority, host, None):
            raise ProtocolError(f"Host {_show(host)} differs from :authority {_show(authority)}")
        return 0
    elif scheme is None or path is None:
        missing = ":scheme or :path" if scheme is None and path is None else \
            (":scheme" if scheme is None else ":path")
        raise ProtocolError(f"{method.decode('latin-1')} request without {missing}")
    # a request with a target URI (or extended CONNECT): 8.3.1
    if not scheme or not (0x61 <= (scheme[0] | 0x20) <= 0x7a) or not _in_class(scheme, _SCHEME):
        raise ProtocolError(f":scheme {_show(scheme)} is not a URI scheme")
    cdef bytes lower_scheme = scheme.lower()
    cdef bint http = lower_scheme == b"http" or lower_scheme == b"https"
    if not path:
        raise ProtocolError("empty :path")
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(path)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(path)):
        if p[i] <= 0x20 or p[i] == 0x7f:
            raise ProtocolError(f":path {_show(path)} has a space or control character (byte {i})")
    if http and p[0] != b"/":
        if path == b"*":
            if method != b"OPTIONS":
                raise ProtocolError(f":path '*' in a {method.decode('latin-1')} request "
                                    "(only OPTIONS asks about the server as a whole)")
        else:
            raise ProtocolError(f":path {_show(path)} of an {lower_scheme.decode()} request "
                                "does not start with '/'")
    if authority is not None:
        _check_authority(authority, ":authority", http)
    if host is not None:
        _check_authority(host, "Host", http)
    if http and not authority and not host:
        raise ProtocolError(f"{lower_scheme.decode()} request without :authority or Host")
    if authority and host is not None and not _same_authority(authority, host, lower_scheme):
        raise ProtocolError(f"Host {_show(host)} differs from :authority {_show(authority)}")
    return 0


cdef int _check_authority(bytes value, str what, bint http) except -1:
    if not value:
        if http:
            raise ProtocolError(f"empty {what} in an http(s) request")
        return 0
    if not _in_class(value, _AUTHORITY):
        raise ProtocolError(f"{what} {_show(value)} has a character an authority cannot have")
    if http and b"@" in value:
        raise ProtocolError(f"{what} {_show(value)} has userinfo, which http(s) forbids")
    return 0


cdef bint _same_authority(bytes a, bytes b, bytes scheme):
    """Host and :authority name the same entity after scheme-based normalization
    (RFC 3986 6.2.3, as RFC 9113 8.3.1 asks of intermediaries): case, an empty port,
    and the scheme's default port do not make a difference."""
    return _normal_authority(a, scheme) == _normal_authority(b, scheme)


cdef bytes _normal_authority(bytes value, bytes scheme):
    value = value.lower()
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    if value.endswith(b":"):
        return value[:n - 1]
    if scheme == b"http" and value.endswith(b":80"):
        return value[:n - 3]
    if scheme == b"https" and value.endswith(b":443"):
        return value[:n - 4]
    return value


# ----------------------------------------------------------------- responses

cdef tuple parse_response(list fields):
    cdef list regular = []
    cdef bytes name, value
    cdef int status = -1
    cdef bint regular_seen = False
    cdef int64_t length = -1
    cdef const unsigned char* v
    for item in fields:
        name = <bytes>(<tuple>item)[0]
        value = <bytes>(<tuple>item)[1]
        if _is_pseudo(name):
            if regular_seen:
                raise ProtocolError(f"pseudo-header {_show(name)} after a regular field")
            if not _named(name, ":status", 7):
                raise ProtocolError(f"pseudo-header {_show(name)} not allowed in a response")
            if status >= 0:
                raise ProtocolError("duplicate :status")
            v = <const unsigned char*>PyBytes_AS_STRING(value)
            if (PyBytes_GET_SIZE(value) != 3 or not (0x31 <= v[0] <= 0x39)
                    or not (0x30 <= v[1] <= 0x39) or not (0x30 <= v[2] <= 0x39)):
                raise ProtocolError(f":status {_show(value)} is not a three-digit code from 100")
            status = (v[0] - 0x30) * 100 + (v[1] - 0x30) * 10 + (v[2] - 0x30)
            if status == 101:
                raise ProtocolError(":status 101 (Switching Protocols) does not exist in HTTP/2")
        else:
            regular_seen = True
            check_regular_field(name, value)
            if _named(name, "content-length", 14):
                length = parse_content_length(value, length)
            regular.append(item)
    if status < 0:
        raise ProtocolError("response without :status")
    return status, regular, length


cdef list check_trailers(list fields):
    cdef bytes name, value
    for name, value in fields:
        if _is_pseudo(name):
            raise ProtocolError(f"pseudo-header {_show(name)} in trailers")
        check_regular_field(name, value)
    return fields


cdef int64_t parse_content_length(bytes value, int64_t current) except -2:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i = 0, digits
    cdef int64_t v
    while True:
        while i < n and (p[i] == 0x20 or p[i] == 0x09):
            i += 1
        v = 0
        digits = 0
        while i < n and 0x30 <= p[i] <= 0x39:
            if digits == MAX_LENGTH_DIGITS:
                raise ProtocolError(f"content-length {_show(value)} is too large")
            v = v * 10 + (p[i] - 0x30)
            digits += 1
            i += 1
        while i < n and (p[i] == 0x20 or p[i] == 0x09):
            i += 1
        if digits == 0 or (i < n and p[i] != b","):
            raise ProtocolError(f"content-length {_show(value)} is not a decimal number")
        if current >= 0 and v != current:
            raise ProtocolError(f"content-length values {current} and {v} differ")
        current = v
        if i == n:
            return current
        i += 1          # a list of the same value (RFC 9110 8.6)


# ------------------------------------------------------------------ outgoing

cdef list outgoing_fields(object headers):
    cdef list out = []
    for item in headers:
        name, value = item[0], item[1]
        if isinstance(name, str):
            name = (<str>name).encode("latin-1")
        if isinstance(value, str):
            value = (<str>value).encode("latin-1")
        name = bytes(name)
        value = bytes(value)
        if _is_pseudo(name):
            raise UsageError(f"refusing to send pseudo-header {_show(name)} among the regular "
                             "fields: pseudo-headers are the command's own arguments")
        try:
            check_regular_field(name, value)
        except ProtocolError as exc:
            raise UsageError(f"refusing to send a malformed field: {exc.args[0]}") from None
        out.append((name, value) if len(item) == 2 else (name, value, item[2]))
    return out


cdef int64_t outgoing_content_length(list fields) except -2:
    cdef int64_t length = -1
    for item in fields:
        if _named(<bytes>item[0], "content-length", 14):
            try:
                length = parse_content_length(<bytes>item[1], length)
            except ProtocolError as exc:
                raise UsageError(f"refusing to send a malformed field: {exc.args[0]}") from None
    return length


cdef bytes outgoing_host(list fields):
    cdef bytes host = None
    for item in fields:
        if _named(<bytes>item[0], "host", 4):
            if host is not None:
                raise UsageError("refusing to send several Host fields")
            host = <bytes>item[1]
    return host


# ---------------------------------------------------------- Python entries

def validate_outgoing_fields(headers):
    """The fields as they would be sent ((bytes, bytes[, flag]) tuples), or UsageError
    naming the malformed one: what sending them would check, for a caller that wants to
    refuse a request before it chooses or dials a connection for it."""
    return outgoing_fields(headers)


cdef list _tuples(fields):
    return [(bytes(f[0]), bytes(f[1])) for f in fields]


def validate_request(fields):
    """Python entry for tests: (method, authority, regular) or ProtocolError."""
    method, _, authority, _, _, regular, _ = parse_request(_tuples(fields), False)
    return method, authority, regular


def validate_request_head(fields, *, connect_protocol=False):
    """Python entry for tests: every part of a request head as a dict, or ProtocolError."""
    method, scheme, authority, path, protocol, regular, length = parse_request(
        _tuples(fields), connect_protocol)
    return {"method": method, "scheme": scheme, "authority": authority, "path": path,
            "protocol": protocol, "headers": regular, "content_length": length}


def validate_response(fields):
    """Python entry for tests: (status, regular) or ProtocolError."""
    status, regular, _ = parse_response(_tuples(fields))
    return status, regular


def validate_response_head(fields):
    status, regular, length = parse_response(_tuples(fields))
    return {"status": status, "headers": regular, "content_length": length}


def validate_trailers(fields):
    return check_trailers(_tuples(fields))


def content_length(value):
    """Python entry for tests: the value of one content-length field, or ProtocolError."""
    return parse_content_length(bytes(value), -1)
