"""RFC 9113 section 8 field rules as a table (malformed -> ProtocolError)."""
import pytest

from meshcore._core.headers import validate_request, validate_response
from meshcore.errors import ProtocolError

C = (b":method", b"CONNECT")
A = (b":authority", b"10.0.0.1:80")

GOOD_REQUESTS = [
    ([C, A], ("CONNECT", "10.0.0.1:80", [])),
    ([C, A, (b"forwarded", b'for="1.2.3.4:5"')], ("CONNECT", "10.0.0.1:80", [(b"forwarded", b'for="1.2.3.4:5"')])),
    ([C, (b":authority", b"[fd00::1]:8080")], ("CONNECT", "[fd00::1]:8080", [])),
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), A], ("GET", "10.0.0.1:80", [])),
    ([C, A, (b"te", b"trailers")], ("CONNECT", "10.0.0.1:80", [(b"te", b"trailers")])),
    ([C, A, (b"x-empty", b"")], ("CONNECT", "10.0.0.1:80", [(b"x-empty", b"")])),
]

BAD_REQUESTS = [
    ([A], "without :method"),
    ([C], "without :authority"),
    ([C, A, (b":path", b"/")], ":scheme or :path"),
    ([C, A, (b":scheme", b"https")], ":scheme or :path"),
    ([C, A, (b":protocol", b"websocket")], "extended CONNECT"),
    ([(b":method", b"GET"), A], "without :scheme or :path"),
    ([C, C, A], "duplicate"),
    ([C, (b"a", b"b"), A], "after a regular field"),
    ([C, A, (b":status", b"200")], "not allowed in a request"),
    ([C, A, (b"Upper", b"x")], "invalid character"),
    ([C, A, (b"sp ace", b"x")], "invalid character"),
    ([C, A, (b"x", b"a\r\nb")], "NUL, CR or LF"),
    ([C, A, (b"x", b"a\x00")], "NUL, CR or LF"),
    ([C, A, (b"x", b" lead")], "whitespace"),
    ([C, A, (b"x", b"trail\t")], "whitespace"),
    ([C, A, (b"connection", b"close")], "connection-specific"),
    ([C, A, (b"transfer-encoding", b"chunked")], "connection-specific"),
    ([C, A, (b"te", b"gzip")], "TE"),
    ([C, A, (b"", b"x")], "empty field name"),
]


@pytest.mark.parametrize("fields,expected", GOOD_REQUESTS)
def test_good_requests(fields, expected):
    assert validate_request(fields) == expected


@pytest.mark.parametrize("fields,why", BAD_REQUESTS)
def test_malformed_requests(fields, why):
    with pytest.raises(ProtocolError, match=why):
        validate_request(fields)


@pytest.mark.parametrize("fields,expected", [
    ([(b":status", b"200")], (200, [])),
    ([(b":status", b"503"), (b"server", b"x")], (503, [(b"server", b"x")])),
])
def test_good_responses(fields, expected):
    assert validate_response(fields) == expected


@pytest.mark.parametrize("fields,why", [
    ([], "without :status"),
    ([(b":status", b"20")], "three-digit"),
    ([(b":status", b"2x0")], "three-digit"),
    ([(b":status", b"200"), (b":status", b"200")], "duplicate"),
    ([(b":status", b"200"), (b":path", b"/")], "not allowed in a response"),
    ([(b"server", b"x"), (b":status", b"200")], "after a regular field"),
])
def test_malformed_responses(fields, why):
    with pytest.raises(ProtocolError, match=why):
        validate_response(fields)
