"""Request and response header sections, RFC 9113 section 8, as tables: what the core
accepts, what it refuses (and says why), and the same rules on what we send."""
import pytest

from meshcore import H2Connection
from meshcore._core.headers import (content_length, validate_request_head, validate_response_head,
                                    validate_trailers)
from meshcore.errors import ProtocolError, StreamClosedError, UsageError

from malformed_http import BAD_REQUESTS, BAD_RESPONSES, GOOD_REQUESTS, GOOD_RESPONSES


def _bytes(fields):
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields]


@pytest.mark.parametrize("fields,why", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_malformed_requests(fields, why):
    with pytest.raises(ProtocolError, match=why):
        validate_request_head(_bytes(fields))


@pytest.mark.parametrize("fields,expected", [c[1:] for c in GOOD_REQUESTS], ids=[c[0] for c in GOOD_REQUESTS])
def test_well_formed_requests(fields, expected):
    head = validate_request_head(_bytes(fields))
    assert (head["method"], head["scheme"], head["authority"], head["path"]) == expected
    assert head["headers"] == [f for f in _bytes(fields) if not f[0].startswith(b":")]


def test_extended_connect_when_enabled():
    fields = _bytes([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                     (":authority", "chat.example"), (":path", "/socket")])
    head = validate_request_head(fields, connect_protocol=True)
    assert (head["method"], head["protocol"], head["scheme"], head["authority"], head["path"]) == (
        "CONNECT", "websocket", "https", "chat.example", "/socket")
    assert head["content_length"] == -1
    with pytest.raises(ProtocolError, match="without :scheme or :path"):
        validate_request_head(fields[:4], connect_protocol=True)
    with pytest.raises(ProtocolError, match="without :authority"):
        validate_request_head(fields[:3] + fields[4:], connect_protocol=True)


def test_content_length_is_reported_except_for_connect():
    get = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
    assert validate_request_head(get)["content_length"] == -1
    assert validate_request_head(get + [(b"content-length", b"42")])["content_length"] == 42
    assert validate_request_head(get + [(b"content-length", b"42"), (b"content-length", b"42")])[
        "content_length"] == 42
    connect = [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b"content-length", b"5")]
    assert validate_request_head(connect)["content_length"] == -1


@pytest.mark.parametrize("value,expected", [
    (b"0", 0), (b"42", 42), (b"42, 42", 42), (b"7,7,7", 7), (b"007", 7), (b"9" * 18, int("9" * 18)),
])
def test_content_length_values(value, expected):
    assert content_length(value) == expected


@pytest.mark.parametrize("value,why", [
    (b"", "not a decimal"), (b"abc", "not a decimal"), (b"+5", "not a decimal"), (b"5 5", "not a decimal"),
    (b"5,", "not a decimal"), (b",5", "not a decimal"), (b"0x10", "not a decimal"), (b"1.0", "not a decimal"),
    (b"5, 6", "differ"), (b"1" * 19, "too large"),
])
def test_malformed_content_length_values(value, why):
    with pytest.raises(ProtocolError, match=why):
        content_length(value)


@pytest.mark.parametrize("fields,why", [c[1:] for c in BAD_RESPONSES], ids=[c[0] for c in BAD_RESPONSES])
def test_malformed_responses(fields, why):
    with pytest.raises(ProtocolError, match=why):
        validate_response_head(_bytes(fields))


@pytest.mark.parametrize("fields,status", [c[1:] for c in GOOD_RESPONSES], ids=[c[0] for c in GOOD_RESPONSES])
def test_well_formed_responses(fields, status):
    assert validate_response_head(_bytes(fields))["status"] == status


def test_informational_statuses_parse_and_101_does_not():
    assert validate_response_head([(b":status", b"103")])["status"] == 103
    with pytest.raises(ProtocolError, match="Switching Protocols"):
        validate_response_head([(b":status", b"101")])


@pytest.mark.parametrize("fields,why", [
    ([(b":status", b"200")], "in trailers"),
    ([(b"grpc-status", b"0"), (b":path", b"/")], "in trailers"),
    ([(b"Grpc-Status", b"0")], "invalid character"),
    ([(b"x", b"a\nb")], "NUL, CR or LF"),
])
def test_malformed_trailers(fields, why):
    with pytest.raises(ProtocolError, match=why):
        validate_trailers(fields)


# ------------------------------------------------------------------ outgoing

def connected():
    c, s = H2Connection(client=True), H2Connection(client=False)
    for _ in range(2):
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())
    return c, s


@pytest.mark.parametrize("args,why", [
    (("GET", "https", "example.com", ""), "empty :path"),
    (("GET", "https", "example.com", "index.html"), "does not start with '/'"),
    (("GET", "https", "example.com", "*"), "only OPTIONS"),
    (("GET", "https", "example.com", "/a b"), "space or control"),
    (("GET", "https", None, "/"), "without :authority or Host"),
    (("GET", "https", "", "/"), "empty :authority"),
    (("GET", "https", "user@example.com", "/"), "userinfo"),
    (("GET", "ht tp", "example.com", "/"), "not a URI scheme"),
    (("G ET", "https", "example.com", "/"), "not a token"),
    (("", "https", "example.com", "/"), "empty :method"),
    (("GET", "https", "example.com", "/", [("host", "other.example")]), "differs from :authority"),
    (("GET", "https", None, "/", [("host", "a"), ("host", "a")]), "several Host"),
    (("GET", "https", "example.com", "/", [(":path", "/x")]), "pseudo-header ':path' among the regular"),
    (("GET", "https", "example.com", "/", [("Upper", "x")]), "invalid character"),
    (("GET", "https", "example.com", "/", [("transfer-encoding", "chunked")]), "connection-specific"),
    (("GET", "https", "example.com", "/", [("content-length", "x")]), "not a decimal"),
    (("CONNECT", "https", "example.com", "/"), "use open_tunnel"),
])
def test_malformed_requests_are_not_sent(args, why):
    c, _ = connected()
    with pytest.raises(UsageError, match=why):
        c.send_request(*args)
    assert c.data_to_send() == b"" and c.open_local_streams == 0


def test_request_content_length_is_held_to():
    c, s = connected()
    with pytest.raises(UsageError, match="declares content-length 3 but ends"):
        c.send_request("POST", "https", "a", "/", [("content-length", "3")], end_stream=True)
    sid = c.send_request("POST", "https", "a", "/", [("content-length", "3")])
    with pytest.raises(UsageError, match="4 bytes exceed what stream 1 declared: 3 bytes"):
        c.send_data(sid, b"abcd")
    c.send_data(sid, b"a")
    with pytest.raises(UsageError, match="ending stream 1 with 1 bytes of its declared content-length unsent"):
        c.send_data(sid, b"b", end_stream=True)
    with pytest.raises(UsageError, match="2 bytes of its declared content-length unsent"):
        c.send_trailers(sid, [("x", "y")])
    with pytest.raises(UsageError, match="unsent"):
        c.end_stream(sid)
    c.send_data(sid, b"bc", end_stream=True)
    assert c.stream_state(sid) == "half-closed (local)"


def test_response_commands_refuse_what_http2_forbids():
    c, s = connected()
    sid = c.send_request("GET", "https", "a", "/", end_stream=True)
    head = c.send_request("HEAD", "https", "a", "/", end_stream=True)
    s.receive_data(c.data_to_send())
    with pytest.raises(UsageError, match="informational: use send_informational"):
        s.send_response(sid, 100)
    with pytest.raises(UsageError, match="not informational"):
        s.send_informational(sid, 200)
    with pytest.raises(UsageError, match="101 .* does not exist in HTTP/2"):
        s.send_informational(sid, 101)
    with pytest.raises(UsageError, match="not a three-digit final status"):
        s.send_response(sid, 1000)
    with pytest.raises(UsageError, match="no final response yet: content comes after it"):
        s.send_data(sid, b"x")
    with pytest.raises(UsageError, match="no final response yet: trailers come after it"):
        s.send_trailers(sid, [])
    with pytest.raises(UsageError, match="204 response carries no content-length"):
        s.send_response(sid, 204, [("content-length", "0")])
    with pytest.raises(UsageError, match="declares content-length 5 but ends"):
        s.send_response(sid, 200, [("content-length", "5")], end_stream=True)
    s.send_informational(sid, 103, [("link", "</style.css>; rel=preload")])
    s.send_response(sid, 200, [("content-length", "5")])
    with pytest.raises(UsageError, match="already has its final response"):
        s.send_response(sid, 200)
    with pytest.raises(UsageError, match="already has its final response"):
        s.send_informational(sid, 100)
    s.send_data(sid, b"hello")
    s.send_trailers(sid, [("grpc-status", "0")])
    with pytest.raises(StreamClosedError):
        s.send_trailers(sid, [("again", "no")])
    # HEAD: content-length describes the GET's content; no DATA may follow
    s.send_response(head, 200, [("content-length", "1234")])
    with pytest.raises(UsageError, match="none after HEAD, 204, 304"):
        s.send_data(head, b"x")
    s.end_stream(head)
    with pytest.raises(UsageError, match="only the server side sends responses"):
        c.send_response(sid, 200)
    with pytest.raises(UsageError, match="only the client side opens"):
        s.send_request("GET", "https", "a", "/")


def test_tunnels_take_no_trailers_and_no_content_length():
    c, s = connected()
    sid = c.open_tunnel("10.0.0.1:80")
    s.receive_data(c.data_to_send())
    with pytest.raises(UsageError, match="2xx response to CONNECT carries no content-length"):
        s.accept_tunnel(sid, [("content-length", "0")])
    s.accept_tunnel(sid)
    with pytest.raises(UsageError, match="CONNECT tunnel: only DATA"):
        s.send_trailers(sid, [("x", "y")])
    with pytest.raises(UsageError, match="CONNECT tunnel: only DATA"):
        c.send_trailers(sid, [("x", "y")])


def test_extended_connect_needs_the_servers_setting():
    c, s = connected()
    with pytest.raises(UsageError, match="has not enabled extended CONNECT"):
        c.open_tunnel("chat.example", protocol="websocket", scheme="https", path="/ws")
    with pytest.raises(UsageError, match="give its protocol too"):
        c.open_tunnel("chat.example", scheme="https", path="/ws")
    with pytest.raises(ValueError, match="server setting"):
        H2Connection(client=True, enable_connect_protocol=True)
