"""RFC 9113 section 8 as tables of header sections: malformed requests and responses
(with the words meshcore's reason must contain) and well-formed ones that look
suspicious. Shared by the field-rule tests (tests/core) and the differential tests
against python-hyper's h2 (tests/interop)."""

M = (":method", "GET")
S = (":scheme", "https")
A = (":authority", "example.com")
P = (":path", "/")
CONNECT = (":method", "CONNECT")
TARGET = (":authority", "10.0.0.1:8080")

# (case id, fields in wire order, words of the reason)
BAD_REQUESTS = [
    # 8.3: pseudo-header fields
    ("no-method", [S, A, P], "without :method"),
    ("empty-method", [(":method", ""), S, A, P], "empty :method"),
    ("method-not-a-token", [(":method", "GE T"), S, A, P], "not a token"),
    ("duplicate-method", [M, M, S, A, P], "duplicate pseudo-header :method"),
    ("duplicate-scheme", [M, S, S, A, P], "duplicate pseudo-header :scheme"),
    ("duplicate-authority", [M, S, A, A, P], "duplicate pseudo-header :authority"),
    ("duplicate-path", [M, S, A, P, P], "duplicate pseudo-header :path"),
    ("pseudo-after-regular", [M, S, A, ("accept", "*/*"), P], "after a regular field"),
    ("unknown-pseudo", [M, S, A, P, (":foo", "x")], "not allowed in a request"),
    ("status-in-request", [M, S, A, P, (":status", "200")], "not allowed in a request"),
    ("cr-lf-in-path", [M, S, A, (":path", "/a\r\nb")], "NUL, CR or LF"),
    ("nul-in-authority", [M, S, (":authority", "exa\x00mple.com"), P], "NUL, CR or LF"),
    ("whitespace-around-method", [(":method", "GET "), S, A, P], "whitespace"),
    # 8.3.1: :scheme and :path
    ("no-scheme", [M, A, P], "without :scheme"),
    ("no-path", [M, S, A], "without :path"),
    ("no-scheme-no-path", [M, A], "without :scheme or :path"),
    ("empty-scheme", [M, (":scheme", ""), A, P], "not a URI scheme"),
    ("scheme-not-a-scheme", [M, (":scheme", "1https"), A, P], "not a URI scheme"),
    ("empty-path", [M, S, A, (":path", "")], "empty :path"),
    ("relative-path", [M, S, A, (":path", "index.html")], "does not start with '/'"),
    ("asterisk-path-for-get", [M, S, A, (":path", "*")], "only OPTIONS"),
    ("space-in-path", [M, S, A, (":path", "/a b")], "space or control"),
    # 8.3.1: :authority and Host
    ("empty-authority", [M, S, (":authority", ""), P], "empty :authority"),
    ("userinfo-in-authority", [M, S, (":authority", "user@example.com"), P], "userinfo"),
    ("slash-in-authority", [M, S, (":authority", "example.com/x"), P], "authority cannot have"),
    ("no-authority-no-host", [M, S, P], "without :authority or Host"),
    ("host-differs", [M, S, A, P, ("host", "other.example")], "differs from :authority"),
    ("two-host-fields", [M, S, P, ("host", "a.example"), ("host", "a.example")], "several Host"),
    # 8.5 and RFC 8441: CONNECT
    ("connect-with-path", [CONNECT, TARGET, P], ":scheme or :path"),
    ("connect-with-scheme", [CONNECT, S, TARGET], ":scheme or :path"),
    ("connect-without-authority", [CONNECT], "without :authority"),
    ("connect-authority-with-space", [CONNECT, (":authority", "10.0.0.1 :80")], "authority cannot have"),
    ("protocol-in-get", [M, S, A, P, (":protocol", "websocket")], "only extended CONNECT"),
    ("protocol-not-enabled", [CONNECT, (":protocol", "websocket"), S, A, P], "not enabled"),
    # 8.2: regular fields
    ("colon-in-name", [M, S, A, P, ("x:y", "1")], "invalid character"),
    ("uppercase-name", [M, S, A, P, ("Accept", "*/*")], "invalid character"),
    ("connection-specific", [M, S, A, P, ("connection", "keep-alive")], "connection-specific"),
    ("te-not-trailers", [M, S, A, P, ("te", "gzip")], "TE field"),
    # 8.1.1 and RFC 9110 8.6: content-length
    ("content-length-not-digits", [M, S, A, P, ("content-length", "abc")], "not a decimal number"),
    ("content-length-negative", [M, S, A, P, ("content-length", "-1")], "not a decimal number"),
    ("content-length-empty", [M, S, A, P, ("content-length", "")], "not a decimal number"),
    ("content-length-list-differs", [M, S, A, P, ("content-length", "5, 6")], "differ"),
    ("content-length-fields-differ", [M, S, A, P, ("content-length", "5"), ("content-length", "6")], "differ"),
    ("content-length-too-large", [M, S, A, P, ("content-length", "1" * 19)], "too large"),
]

# (case id, fields, what the request event carries: method, scheme, authority, path)
GOOD_REQUESTS = [
    ("get", [M, S, A, P], ("GET", "https", "example.com", "/")),
    ("query", [M, S, A, (":path", "/a/b?c=d&e")], ("GET", "https", "example.com", "/a/b?c=d&e")),
    ("options-asterisk", [(":method", "OPTIONS"), S, A, (":path", "*")], ("OPTIONS", "https", "example.com", "*")),
    ("host-instead-of-authority", [M, S, P, ("host", "example.com")], ("GET", "https", "example.com", "/")),
    ("host-equal", [M, S, A, P, ("host", "example.com")], ("GET", "https", "example.com", "/")),
    ("host-other-case-and-default-port", [M, S, A, P, ("host", "EXAMPLE.com:443")],
     ("GET", "https", "example.com", "/")),
    ("ipv6-authority", [M, (":scheme", "http"), (":authority", "[fd00::1]:8080"), P],
     ("GET", "http", "[fd00::1]:8080", "/")),
    ("other-scheme-without-authority", [M, (":scheme", "urn"), (":path", "isbn:0451450523")],
     ("GET", "urn", "", "isbn:0451450523")),
    ("connect", [CONNECT, TARGET], ("CONNECT", "", "10.0.0.1:8080", "")),
    ("te-trailers", [(":method", "POST"), S, A, P, ("te", "trailers")], ("POST", "https", "example.com", "/")),
    ("te-trailers-any-case", [(":method", "POST"), S, A, P, ("te", "Trailers")], ("POST", "https", "example.com", "/")),
    ("content-length-list-of-equals", [(":method", "POST"), S, A, P, ("content-length", "0, 0")],
     ("POST", "https", "example.com", "/")),
    ("empty-value", [M, S, A, P, ("x-empty", "")], ("GET", "https", "example.com", "/")),
]

BAD_RESPONSES = [
    ("no-status", [("server", "x")], "without :status"),
    ("two-digit-status", [(":status", "20")], "three-digit"),
    ("status-not-digits", [(":status", "2x0")], "three-digit"),
    ("status-below-100", [(":status", "099")], "three-digit"),
    ("status-101", [(":status", "101")], "101"),
    ("duplicate-status", [(":status", "200"), (":status", "200")], "duplicate :status"),
    ("request-pseudo-in-response", [(":status", "200"), (":path", "/")], "not allowed in a response"),
    ("pseudo-after-regular", [("server", "x"), (":status", "200")], "after a regular field"),
    ("connection-specific", [(":status", "200"), ("transfer-encoding", "chunked")], "connection-specific"),
    ("uppercase-name", [(":status", "200"), ("Server", "x")], "invalid character"),
    ("content-length-not-digits", [(":status", "200"), ("content-length", "1x")], "not a decimal number"),
]

GOOD_RESPONSES = [
    ("ok", [(":status", "200")], 200),
    ("server-error", [(":status", "503"), ("retry-after", "1")], 503),
    ("beyond-599", [(":status", "999")], 999),
    ("content-length", [(":status", "200"), ("content-length", "0")], 200),
]
