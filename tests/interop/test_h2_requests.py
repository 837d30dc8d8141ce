"""Requests and responses between our engine and python-hyper's independent h2, in
memory, in both roles: every scenario runs meshcore client -> h2 server, h2 client ->
meshcore server and meshcore on both ends, and the transcripts (what each side's
application saw, in order) must be identical and as expected.

Malformed messages are put on the wire by h2 with its outbound validation turned off;
the same bytes also go to an h2 receiver, whose verdict is compared with ours. Where
RFC 9113 and h2 disagree, the difference is listed and asserted, so it cannot change
unnoticed."""
import hashlib
import random
import struct

import h2.events
import h2.settings
import hpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from http_peers import H2, Ours, connected, merge_data, reset_frames
from malformed_http import BAD_REQUESTS, BAD_RESPONSES, GOOD_REQUESTS, GOOD_RESPONSES
from meshcore.errors import ErrorCode as E

PAIRS = [(Ours, H2), (H2, Ours), (Ours, Ours)]
PAIR_IDS = ["meshcore-client/h2-server", "h2-client/meshcore-server", "meshcore/meshcore"]


class Exchange:
    """Both peers and what each side's application has seen."""

    def __init__(self, client_cls, server_cls, chunker=None):
        self.client, self.server = connected(client_cls(True), server_cls(False))
        self.at_server: list = []
        self.at_client: list = []
        self.chunker = chunker or (lambda data: [data])

    def pump(self):
        while True:
            moved = False
            data = self.client.out()
            if data:
                moved = True
                for piece in self.chunker(data):
                    self.at_server += self.server.receive(piece)
            data = self.server.out()
            if data:
                moved = True
                for piece in self.chunker(data):
                    self.at_client += self.client.receive(piece)
            if not moved:
                return

    def body(self, peer, sid, payload: bytes, end: bool = True):
        """Send `payload` as the windows allow, moving bytes while it waits."""
        pos = 0
        while pos < len(payload):
            n = min(peer.window(sid), len(payload) - pos, 1 << 20)
            if n <= 0:
                self.pump()
                continue
            peer.data(sid, payload[pos:pos + n], end and pos + n == len(payload))
            pos += n
        if end and not payload:
            peer.data(sid, b"", True)
        self.pump()

    def transcripts(self):
        return merge_data(self.at_server), merge_data(self.at_client)


def run_everywhere(script, chunker=None):
    """The script on every pair; returns the one transcript they all agree on."""
    results = {}
    for (client_cls, server_cls), name in zip(PAIRS, PAIR_IDS):
        x = Exchange(client_cls, server_cls, chunker)
        script(x)
        results[name] = x.transcripts()
    first = results[PAIR_IDS[0]]
    for name, got in results.items():
        assert got == first, f"{name} differs from {PAIR_IDS[0]}"
    return first


def lines(*headers):
    return [(n.encode(), v.encode()) for n, v in headers]


# ------------------------------------------------------------------ exchanges

@pytest.mark.parametrize("size", [0, 1, 16385, 300_000, 6 * 1024 * 1024])
def test_get_and_post_with_bodies(size):
    rng = random.Random(size)
    upload, page = rng.randbytes(size), rng.randbytes(size // 2 + 7)

    def script(x):
        get = x.client.request("GET", "https", "example.com", "/index.html", [("accept", "text/html")], end=True)
        x.pump()
        x.server.respond(get, 200, [("content-type", "text/html"), ("content-length", str(len(page)))])
        x.body(x.server, get, page)
        post = x.client.request("POST", "https", "example.com", "/upload?name=a",
                                [("content-length", str(size))], end=size == 0)
        x.pump()
        if size:
            x.body(x.client, post, upload)
        x.server.respond(post, 201, [("x-sha256", hashlib.sha256(upload).hexdigest())])
        x.body(x.server, post, b"created")

    at_server, at_client = run_everywhere(script)
    assert at_server == [
        ("request", 1, "GET", "https", "example.com", "/index.html", lines(("accept", "text/html"))),
        ("end", 1),
        ("request", 3, "POST", "https", "example.com", "/upload?name=a", lines(("content-length", str(size)))),
        *([("data", 3, upload)] if size else []),
        ("end", 3)]
    assert at_client == [
        ("response", 1, 200, lines(("content-type", "text/html"), ("content-length", str(len(page))))),
        ("data", 1, page), ("end", 1),
        ("response", 3, 201, lines(("x-sha256", hashlib.sha256(upload).hexdigest()))),
        ("data", 3, b"created"), ("end", 3)]


def test_trailers_both_ways():
    def script(x):
        sid = x.client.request("POST", "https", "grpc.example", "/pkg.Service/Method",
                               [("content-type", "application/grpc"), ("te", "trailers")])
        x.body(x.client, sid, b"\0\0\0\0\x03abc", end=False)
        x.client.trailers(sid, [("x-request-checksum", "900150983cd2")])
        x.pump()
        x.server.respond(sid, 200, [("content-type", "application/grpc")])
        x.body(x.server, sid, b"\0\0\0\0\x02ok", end=False)
        x.server.trailers(sid, [("grpc-status", "0"), ("grpc-message", "fine")])
        x.pump()

    at_server, at_client = run_everywhere(script)
    assert at_server == [
        ("request", 1, "POST", "https", "grpc.example", "/pkg.Service/Method",
         lines(("content-type", "application/grpc"), ("te", "trailers"))),
        ("data", 1, b"\0\0\0\0\x03abc"), ("trailers", 1, lines(("x-request-checksum", "900150983cd2"))),
        ("end", 1)]
    assert at_client == [
        ("response", 1, 200, lines(("content-type", "application/grpc"))),
        ("data", 1, b"\0\0\0\0\x02ok"), ("trailers", 1, lines(("grpc-status", "0"), ("grpc-message", "fine"))),
        ("end", 1)]


def test_informational_responses_then_the_final_one():
    def script(x):
        sid = x.client.request("PUT", "https", "example.com", "/big", [("expect", "100-continue"),
                                                                       ("content-length", "4")])
        x.pump()
        x.server.inform(sid, 100)
        x.pump()
        x.body(x.client, sid, b"body")
        x.server.inform(sid, 103, [("link", "</style.css>; rel=preload")])
        x.server.inform(sid, 103, [("link", "</app.js>; rel=preload")])
        x.server.respond(sid, 204, end=True)
        x.pump()

    at_server, at_client = run_everywhere(script)
    assert at_server == [
        ("request", 1, "PUT", "https", "example.com", "/big", lines(("expect", "100-continue"), ("content-length", "4"))),
        ("data", 1, b"body"), ("end", 1)]
    assert at_client == [
        ("informational", 1, 100, []),
        ("informational", 1, 103, lines(("link", "</style.css>; rel=preload"))),
        ("informational", 1, 103, lines(("link", "</app.js>; rel=preload"))),
        ("response", 1, 204, []), ("end", 1)]


def test_head_response_declares_length_without_content():
    def script(x):
        sid = x.client.request("HEAD", "https", "example.com", "/file", end=True)
        x.pump()
        x.server.respond(sid, 200, [("content-length", "1048576")], end=True)
        x.pump()

    at_server, at_client = run_everywhere(script)
    assert at_server == [("request", 1, "HEAD", "https", "example.com", "/file", []), ("end", 1)]
    assert at_client == [("response", 1, 200, lines(("content-length", "1048576"))), ("end", 1)]


def test_interleaved_requests_on_one_connection():
    rng = random.Random(5)
    bodies = [rng.randbytes(rng.choice([0, 10, 40_000, 200_000])) for _ in range(20)]

    def script(x):
        sids = [x.client.request("POST", "https", "example.com", f"/item/{i}",
                                 [("content-length", str(len(b)))], end=not b) for i, b in enumerate(bodies)]
        x.pump()
        for sid, b in zip(sids, bodies):
            if b:
                x.body(x.client, sid, b)
        for sid, b in reversed(list(zip(sids, bodies))):
            x.server.respond(sid, 200, [("content-length", str(len(b)))], end=not b)
            if b:
                x.body(x.server, sid, b[::-1])

    at_server, at_client = run_everywhere(script)
    got = {e[1]: e[2] for e in at_client if e[0] == "data"}
    assert got == {2 * i + 1: b[::-1] for i, b in enumerate(bodies) if b}
    assert sum(1 for e in at_client if e[0] == "end") == 20


message = st.fixed_dictionaries({
    "method": st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS"]),
    "path": st.sampled_from(["/", "/a/b?c=d", "/%7Euser/x;y"]),
    "request_body": st.sampled_from([0, 1, 1000, 70_000]),
    "declare_request_length": st.booleans(),
    "request_trailers": st.booleans(),
    "informational": st.integers(0, 3),
    "status": st.sampled_from([200, 201, 204, 304, 404, 503]),
    "response_body": st.sampled_from([0, 5, 20_000, 200_000]),
    "declare_response_length": st.booleans(),
    "response_trailers": st.booleans(),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(message, min_size=1, max_size=4), seed=st.integers(0, 2**32),
       max_chunk=st.sampled_from([1, 9, 100, 16_384, 1 << 20]))
def test_random_exchanges_split_at_random(messages, seed, max_chunk):
    """Random requests and responses (bodies with and without a declared length, 1xx,
    trailers, HEAD, 204, 304), their bytes cut into random reads: every pair sees the
    same transcript, and it is the one expected."""
    rng = random.Random(seed)
    if max_chunk < 100:
        messages = messages[:2]                 # byte-sized reads are slow in pure-Python h2

    def chunker(data):
        pieces, pos = [], 0
        while pos < len(data):
            n = rng.randrange(1, max_chunk + 1)
            pieces.append(data[pos:pos + n])
            pos += n
        return pieces

    cap = 3000 if max_chunk < 100 else 1 << 30
    bodies = [(rng.randbytes(min(m["request_body"], cap)) if m["method"] != "HEAD" else b"",
               rng.randbytes(min(m["response_body"], cap))) for m in messages]

    def script(x):
        for i, (m, (up, down)) in enumerate(zip(messages, bodies)):
            sid = 2 * i + 1
            headers = [("content-length", str(len(up)))] if m["declare_request_length"] else []
            x.client.request(m["method"], "https", "example.com", m["path"], headers,
                             end=not up and not m["request_trailers"])
            x.pump()
            if up:
                x.body(x.client, sid, up, end=not m["request_trailers"])
            if m["request_trailers"]:
                x.client.trailers(sid, [("x-up", str(i))])
                x.pump()
            for _ in range(m["informational"]):
                x.server.inform(sid, 103, [("link", f"</{i}>")])
            no_content = m["method"] == "HEAD" or m["status"] in (204, 304)
            fields = [("content-length", str(len(down)))] if m["declare_response_length"] and m["status"] != 204 else []
            content = b"" if no_content else down
            x.server.respond(sid, m["status"], fields, end=not content and not m["response_trailers"])
            x.pump()
            if content:
                x.body(x.server, sid, content, end=not m["response_trailers"])
            if m["response_trailers"]:
                x.server.trailers(sid, [("x-down", str(i))])
            x.pump()

    at_server, at_client = run_everywhere(script, chunker)
    for i, (m, (up, down)) in enumerate(zip(messages, bodies)):
        sid = 2 * i + 1
        mine = [e for e in at_server if e[1] == sid]
        assert mine[0][:6] == ("request", sid, m["method"], "https", "example.com", m["path"])
        assert b"".join(e[2] for e in mine if e[0] == "data") == up
        assert (("trailers", sid, lines(("x-up", str(i)))) in mine) is m["request_trailers"]
        assert mine[-1] == ("end", sid)
        theirs = [e for e in at_client if e[1] == sid]
        assert [e[2] for e in theirs if e[0] == "informational"] == [103] * m["informational"]
        assert [e[2] for e in theirs if e[0] == "response"] == [m["status"]]
        no_content = m["method"] == "HEAD" or m["status"] in (204, 304)
        assert b"".join(e[2] for e in theirs if e[0] == "data") == (b"" if no_content else down)
        assert (("trailers", sid, lines(("x-down", str(i)))) in theirs) is m["response_trailers"]
        assert theirs[-1] == ("end", sid)
    assert not [e for e in at_server + at_client if e[0] in ("reset", "goaway")]


# ------------------------------------------------------- content-length mismatches

@pytest.mark.parametrize("declared,sent", [(10, 5), (3, 5), (0, 1)])
def test_request_content_length_mismatch(declared, sent):
    """h2 sends what it is told; we reset the stream (as soon as the content overruns,
    or at END_STREAM when it falls short) and the connection goes on. h2 as the
    receiver refuses the same bytes too."""
    for server_cls in (Ours, H2):
        client, server = connected(H2(True), server_cls(False))
        sid = client.request("POST", "https", "example.com", "/", [("content-length", str(declared))])
        client.data(sid, b"x" * sent, end=True)
        events = server.receive(client.out())
        if server_cls is Ours:
            assert ("reset", sid, E.PROTOCOL_ERROR) in events
            assert ("end", sid) not in events
            delivered = sum(len(e[2]) for e in events if e[0] == "data")
            assert delivered <= declared
            assert ("reset", sid, E.PROTOCOL_ERROR) in client.receive(server.out())
            again = client.request("GET", "https", "example.com", "/", end=True)
            assert server.receive(client.out())[0][:2] == ("request", again)
        else:
            assert events[-1] == ("error", "InvalidBodyLengthError")


@pytest.mark.parametrize("method,status,declared,sent,h2_refuses", [
    ("GET", 200, 10, 5, True),
    ("GET", 200, 3, 5, True),
    ("HEAD", 200, 100, 1, True),
    ("GET", 204, None, 1, False),      # h2 lets content follow 204 and 304 (RFC 9113 8.1.1: none)
    ("GET", 304, 1, 1, False),
])
def test_response_content_length_mismatch(method, status, declared, sent, h2_refuses):
    for client_cls in (Ours, H2):
        client, server = connected(client_cls(True), H2(False))
        sid = client.request(method, "https", "example.com", "/", end=True)
        server.receive(client.out())
        server.respond(sid, status, [("content-length", str(declared))] if declared is not None else [])
        server.data(sid, b"y" * sent, end=True)
        events = client.receive(server.out())
        if client_cls is Ours:
            assert events[0][:3] == ("response", sid, status)
            assert ("reset", sid, E.PROTOCOL_ERROR) in events and ("end", sid) not in events
            assert reset_frames(client.out()) == [(sid, E.PROTOCOL_ERROR)]
            again = client.request("GET", "https", "example.com", "/", end=True)
            assert server.receive(client.out())[0][:2] == ("request", again)
        else:
            assert (events[-1] == ("error", "InvalidBodyLengthError")) is h2_refuses, events


# ---------------------------------------------------- malformed header sections

# RFC 9113 calls these malformed and h2 4.x lets them through (its checks cover
# duplicates, order, required fields, field characters and connection-specific
# fields, not the syntax of :method, :scheme, :path and :authority, nor the
# CONNECT and :protocol rules below)
H2_ACCEPTS_MALFORMED_REQUESTS = {
    "method-not-a-token", "empty-method", "empty-scheme", "scheme-not-a-scheme", "relative-path",
    "asterisk-path-for-get", "space-in-path", "empty-authority", "userinfo-in-authority",
    "slash-in-authority", "connect-authority-with-space", "protocol-not-enabled",
    "content-length-too-large",
}
# well-formed by RFC 9113, refused by h2: it compares Host and :authority byte for byte
# (RFC 9113 8.3.1 asks for scheme-based normalization), wants :authority or Host
# whatever the scheme, and reads a content-length list of equal values as malformed
# (RFC 9110 8.6 allows it)
H2_REFUSES_WELL_FORMED_REQUESTS = {
    "host-other-case-and-default-port", "other-scheme-without-authority", "content-length-list-of-equals",
}


def _send_raw_request(fields, server_cls):
    client, server = connected(H2(True, strict=False), server_cls(False))
    client.raw_headers(1, fields, end=True)
    return client, server, server.receive(client.out())


@pytest.mark.parametrize("fields", [c[1] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_malformed_request_is_a_stream_error(fields):
    client, server, events = _send_raw_request(fields, Ours)
    assert events == [("reset", 1, E.PROTOCOL_ERROR)]
    assert ("reset", 1, E.PROTOCOL_ERROR) in client.receive(server.out())
    client.raw_headers(3, [(":method", "GET"), (":scheme", "https"), (":authority", "a"), (":path", "/")], end=True)
    assert server.receive(client.out()) == [("request", 3, "GET", "https", "a", "/", []), ("end", 3)]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_malformed_request_verdicts_against_h2(case):
    name, fields, _ = case
    _, h2_server, events = _send_raw_request(fields, H2)
    h2_refused = bool(events) and events[0][0] == "error"
    assert h2_refused is (name not in H2_ACCEPTS_MALFORMED_REQUESTS), events


@pytest.mark.parametrize("case", GOOD_REQUESTS, ids=[c[0] for c in GOOD_REQUESTS])
def test_well_formed_requests_against_h2(case):
    name, fields, expected = case
    _, _, ours = _send_raw_request(fields, Ours)
    assert ours[0][2:6] == expected and ours[-1] == ("end", 1)
    _, _, theirs = _send_raw_request(fields, H2)
    if name in H2_REFUSES_WELL_FORMED_REQUESTS:
        assert theirs[0][0] == "error"
    else:
        assert merge_data(theirs) == merge_data(ours)


def _headers_frame(sid, fields, end_stream):
    """A HEADERS frame made by hand (h2 will not send some of these even unvalidated);
    never-indexed literals leave the receiver's HPACK table as the h2 sender knows it."""
    block = hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(n, v) for n, v in fields])
    return struct.pack(">I", len(block))[1:] + bytes((0x1, 0x4 | (0x1 if end_stream else 0))) + \
        struct.pack(">I", sid) + block


def _send_raw_response(fields, client_cls, end=True):
    client, server = connected(client_cls(True), H2(False, strict=False))
    sid = client.request("GET", "https", "example.com", "/", end=True)
    server.receive(client.out())
    return client, server, client.receive(_headers_frame(sid, fields, end))


# h2 checks neither the value of :status nor that 101 is gone from HTTP/2
H2_ACCEPTS_MALFORMED_RESPONSES = {"two-digit-status", "status-not-digits", "status-below-100", "status-101"}


@pytest.mark.parametrize("fields", [c[1] for c in BAD_RESPONSES], ids=[c[0] for c in BAD_RESPONSES])
def test_malformed_response_is_a_stream_error(fields):
    client, server, events = _send_raw_response(fields, Ours, end=False)
    assert events == [("reset", 1, E.PROTOCOL_ERROR)]
    assert ("reset", 1, E.PROTOCOL_ERROR) in server.receive(client.out())
    again = client.request("GET", "https", "example.com", "/", end=True)
    server.receive(client.out())
    server.respond(again, 200, end=True)
    assert client.receive(server.out()) == [("response", again, 200, []), ("end", again)]


@pytest.mark.parametrize("case", BAD_RESPONSES, ids=[c[0] for c in BAD_RESPONSES])
def test_malformed_response_verdicts_against_h2(case):
    name, fields, _ = case
    _, _, events = _send_raw_response(fields, H2, end=False)
    h2_refused = bool(events) and events[0][0] == "error"
    assert h2_refused is (name not in H2_ACCEPTS_MALFORMED_RESPONSES), events


@pytest.mark.parametrize("case", GOOD_RESPONSES, ids=[c[0] for c in GOOD_RESPONSES])
def test_well_formed_responses_against_h2(case):
    name, fields, status = case
    results = [_send_raw_response(fields, cls)[2] for cls in (Ours, H2)]
    assert results[0] == results[1]
    assert results[0][0][2] == status


@pytest.mark.parametrize("client_cls", [Ours, H2], ids=["meshcore", "h2"])
def test_informational_with_end_stream_is_refused_by_both(client_cls):
    client, server = connected(client_cls(True), H2(False))
    sid = client.request("GET", "https", "example.com", "/", end=True)
    server.receive(client.out())
    events = client.receive(_headers_frame(sid, [(":status", "100")], end_stream=True))
    if client_cls is Ours:
        assert events == [("reset", sid, E.PROTOCOL_ERROR)]
    else:
        assert events[0][0] == "error"


@pytest.mark.parametrize("client_cls", [Ours, H2], ids=["meshcore", "h2"])
def test_header_section_after_the_final_one_without_end_stream_is_refused_by_both(client_cls):
    client, server, events = _send_raw_response([(":status", "200")], client_cls, end=False)
    events = client.receive(_headers_frame(1, [("grpc-status", "0")], end_stream=False))
    if client_cls is Ours:
        assert events == [("reset", 1, E.PROTOCOL_ERROR)]
    else:
        assert events[0][0] == "error"


# ------------------------------------------------------------ extended CONNECT

def test_extended_connect_both_ways():
    """RFC 8441 between meshcore and h2 in both roles: the server enables it in its
    SETTINGS, the client's CONNECT carries :protocol, :scheme and :path, and the stream
    is a tunnel (its DATA is bytes, not content)."""
    fields = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
              (b":authority", b"chat.example"), (b":path", b"/chat"), (b"sec-websocket-version", b"13")]
    # h2 client -> meshcore server
    client, server = connected(H2(True), Ours(False, enable_connect_protocol=True))
    client.raw_headers(1, fields)
    request = server.receive(client.out())
    assert request == [("request", 1, "CONNECT", "https", "chat.example", "/chat",
                        [(b"sec-websocket-version", b"13")])]
    server.conn.accept_tunnel(1)
    assert client.receive(server.out()) == [("response", 1, 200, [])]
    client.data(1, b"\x81\x05hello", end=True)
    assert server.receive(client.out()) == [("data", 1, b"\x81\x05hello"), ("end", 1)]
    # meshcore client -> h2 server
    client, server = Ours(True), H2(False)
    server.conn.update_settings({h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
    connected(client, server)
    assert client.conn.peer_accepts_extended_connect
    sid = client.conn.open_tunnel("chat.example", [("sec-websocket-version", "13")], protocol="websocket",
                                  scheme="https", path="/chat")
    requests = [e for e in server.conn.receive_data(client.out()) if isinstance(e, h2.events.RequestReceived)]
    assert [r.headers for r in requests] == [fields]
    server.respond(sid, 200)
    assert client.receive(server.out()) == [("response", sid, 200, [])]
    client.conn.send_data(sid, b"\x81\x05hello", end_stream=True)
    assert server.receive(client.out()) == [("data", sid, b"\x81\x05hello"), ("end", sid)]
