"""Request and response streams in the core, driven by hand-made frames: content-length
held to (RFC 9113 8.1.1) as a stream error and never the connection's, informational
responses, trailers, extended CONNECT (RFC 8441)."""
import struct

import hpack
import pytest

from meshcore import H2Connection, events as ev
from meshcore.errors import ErrorCode as E, UsageError

from rawpeer import RawClient, frame, settings

END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8


def request_block(raw, method="POST", path="/", extra=()):
    return raw.block([(":method", method), (":scheme", "https"), (":authority", "example.com"),
                      (":path", path), *extra])


def kinds(events):
    return [type(e).__name__ for e in events if not isinstance(e, (ev.SettingsChanged, ev.WindowOpened))]


def resets(raw):
    return [(f.stream_id, f.error_code) for f in raw.output() if f.type == 3]


def data(sid, payload, end=False, pad=None):
    if pad is None:
        return frame(0, END_STREAM if end else 0, sid, payload)
    return frame(0, PADDED | (END_STREAM if end else 0), sid, bytes([pad]) + payload + b"\0" * pad)


def still_serves(raw, sid):
    """The connection carries a new request after a stream error: stream errors are
    never the connection's."""
    events = raw.send(frame(1, END_HEADERS | END_STREAM, sid, request_block(raw, "GET")))
    assert kinds(events) == ["RequestReceived", "StreamEnded"]
    assert not raw.server.terminated and raw.goaway() is None


def nothing_left_to_acknowledge(conn, sid):
    with pytest.raises(UsageError, match="only 0 are unacknowledged"):
        conn.acknowledge_received_data(sid, 1)


# ------------------------------------------------------------ request content

@pytest.mark.parametrize("pad", [None, 0, 7])
def test_data_beyond_content_length_resets_before_delivery(pad):
    raw = RawClient()
    raw.send(frame(1, END_HEADERS, 1, request_block(raw, extra=[("content-length", "5")])))
    events = raw.send(data(1, b"abc", pad=pad))
    assert [bytes(e.data) for e in events if isinstance(e, ev.DataReceived)] == [b"abc"]
    raw.server.acknowledge_received_data(1, 3)
    events = raw.send(data(1, b"def", pad=pad))                 # 6 > 5: none of it is delivered
    assert kinds(events) == ["StreamReset"]
    assert events[0].error_code == E.PROTOCOL_ERROR and not events[0].remote
    assert "overrun its declared content (2 bytes left" in events[0].reason
    assert resets(raw) == [(1, E.PROTOCOL_ERROR)]
    nothing_left_to_acknowledge(raw.server, 1)                  # the dropped frame's window came back
    still_serves(raw, 3)


def test_padding_does_not_count_as_content():
    raw = RawClient()
    raw.send(frame(1, END_HEADERS, 1, request_block(raw, extra=[("content-length", "3")])))
    events = raw.send(data(1, b"abc", end=True, pad=200))
    assert kinds(events) == ["DataReceived", "StreamEnded"]


@pytest.mark.parametrize("ending", ["data", "empty-data", "trailers"])
def test_content_shorter_than_declared_resets_at_end_of_stream(ending):
    raw = RawClient()
    raw.send(frame(1, END_HEADERS, 1, request_block(raw, extra=[("content-length", "10")])))
    raw.send(data(1, b"12345"))
    if ending == "data":
        events = raw.send(data(1, b"678", end=True))
    elif ending == "empty-data":
        events = raw.send(data(1, b"", end=True))
    else:
        events = raw.send(frame(1, END_HEADERS | END_STREAM, 1, raw.block([("grpc-status", "0")])))
    assert "StreamEnded" not in kinds(events) and "TrailersReceived" not in kinds(events)
    reset = [e for e in events if isinstance(e, ev.StreamReset)]
    assert reset and reset[0].error_code == E.PROTOCOL_ERROR
    assert "bytes of its declared content-length missing" in reset[0].reason
    assert resets(raw) == [(1, E.PROTOCOL_ERROR)]
    still_serves(raw, 3)


def test_end_stream_on_headers_declaring_content_is_malformed():
    raw = RawClient()
    events = raw.send(frame(1, END_HEADERS | END_STREAM, 1, request_block(raw, extra=[("content-length", "1")])))
    assert kinds(events) == ["StreamReset"]
    assert "declares content-length 1" in events[0].reason
    still_serves(raw, 3)


def test_exact_content_and_trailers():
    raw = RawClient()
    raw.send(frame(1, END_HEADERS, 1, request_block(raw, extra=[("content-length", "6"), ("te", "trailers")])))
    events = raw.send(data(1, b"abc") + data(1, b"def")
                      + frame(1, END_HEADERS | END_STREAM, 1, raw.block([("x-checksum", "f00")])))
    assert kinds(events) == ["DataReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert events[2].headers == [(b"x-checksum", b"f00")]


@pytest.mark.parametrize("value", ["abc", "5, 6", "-1"])
def test_malformed_content_length_is_a_stream_error(value):
    raw = RawClient()
    events = raw.send(frame(1, END_HEADERS, 1, request_block(raw, extra=[("content-length", value)])))
    assert kinds(events) == ["StreamReset"] and "malformed request" in events[0].reason
    assert resets(raw) == [(1, E.PROTOCOL_ERROR)]
    still_serves(raw, 3)


def test_connect_streams_carry_bytes_whatever_content_length_says():
    raw = RawClient()
    raw.open(1, extra=[("content-length", "1")])
    raw.server.accept_tunnel(1)
    events = raw.send(data(1, b"more than one byte", end=True))
    assert kinds(events) == ["DataReceived", "StreamEnded"]


def test_second_header_section_without_end_stream_is_malformed():
    raw = RawClient()
    raw.send(frame(1, END_HEADERS, 1, request_block(raw)))
    events = raw.send(frame(1, END_HEADERS, 1, raw.block([("x", "y")])))
    assert kinds(events) == ["StreamReset"] and "trailers end the stream" in events[0].reason


def test_request_event_fields():
    raw = RawClient()
    events = raw.send(frame(1, END_HEADERS | END_STREAM, 1, raw.block([
        (":method", "GET"), (":scheme", "http"), (":path", "/a?b"), ("host", "svc.ns:8080"), ("accept", "*/*")])))
    request = events[0]
    assert type(request) is ev.RequestReceived and not isinstance(request, ev.TunnelRequested)
    assert (request.stream_id, request.method, request.scheme, request.authority, request.path,
            request.protocol) == (1, "GET", "http", "svc.ns:8080", "/a?b", "")
    assert request.headers == [(b"host", b"svc.ns:8080"), (b"accept", b"*/*")]
    events = raw.open(3)
    tunnel = events[0]
    assert type(tunnel) is ev.TunnelRequested and isinstance(tunnel, ev.RequestReceived)
    assert (tunnel.method, tunnel.authority, tunnel.scheme, tunnel.path, tunnel.protocol) == (
        "CONNECT", "10.0.0.1:80", "", "", "")


# ----------------------------------------------------------- response side

class RawServer:
    """Drives a meshcore client connection with hand-made response frames."""

    def __init__(self):
        self.client = H2Connection(client=True)
        self.enc = hpack.Encoder()
        self.client.receive_data(settings())
        self.client.data_to_send()

    def get(self, method="GET"):
        sid = self.client.send_request(method, "https", "example.com", "/", end_stream=True)
        self.client.data_to_send()
        return sid

    def headers(self, sid, fields, end=False):
        return self.client.receive_data(frame(1, END_HEADERS | (END_STREAM if end else 0), sid,
                                              self.enc.encode(fields)))

    def send(self, raw):
        return self.client.receive_data(raw)

    def resets(self):
        out = self.client.data_to_send()
        found, pos = [], 0
        while pos < len(out):
            length = int.from_bytes(out[pos:pos + 3], "big")
            if out[pos + 3] == 3:
                found.append((struct.unpack(">I", out[pos + 5:pos + 9])[0], struct.unpack(">I", out[pos + 9:pos + 13])[0]))
            pos += 9 + length
        return found


def test_informational_responses_before_the_final_one():
    peer = RawServer()
    sid = peer.get()
    events = (peer.headers(sid, [(":status", "100")]) + peer.headers(sid, [(":status", "103"), ("link", "</a>")])
              + peer.headers(sid, [(":status", "103")]) + peer.headers(sid, [(":status", "200")])
              + peer.send(data(sid, b"ok", end=True)))
    assert kinds(events) == ["InformationalResponseReceived"] * 3 + ["ResponseReceived", "DataReceived",
                                                                      "StreamEnded"]
    assert [e.status for e in events[:4]] == [100, 103, 103, 200]
    assert events[1].headers == [(b"link", b"</a>")]


@pytest.mark.parametrize("sequence,why", [
    ([([(":status", "100")], True)], "informational response 100 with END_STREAM"),
    ([([(":status", "101")], False)], "101"),
    ([([(":status", "200")], False), ([(":status", "100")], False)], "trailers end the stream"),
    ([([(":status", "200")], False), ([(":status", "200")], True)], "in trailers"),
    ([([(":status", "200"), ("content-length", "4")], True)], "4 bytes of its declared content-length missing"),
])
def test_malformed_response_sequences_are_stream_errors(sequence, why):
    peer = RawServer()
    sid = peer.get()
    events = []
    for fields, end in sequence:
        events += peer.headers(sid, fields, end)
    reset = [e for e in events if isinstance(e, ev.StreamReset)]
    assert reset and reset[0].error_code == E.PROTOCOL_ERROR and why in reset[0].reason, events
    assert peer.resets() == [(sid, E.PROTOCOL_ERROR)]
    assert not peer.client.terminated


@pytest.mark.parametrize("method,status,fields", [
    ("HEAD", 200, [("content-length", "100")]),
    ("GET", 204, []),
    ("GET", 304, [("content-length", "100")]),
])
def test_responses_without_content(method, status, fields):
    peer = RawServer()
    sid = peer.get(method)
    events = peer.headers(sid, [(":status", str(status)), *fields], end=True)
    assert kinds(events) == ["ResponseReceived", "StreamEnded"]
    sid = peer.get(method)
    peer.headers(sid, [(":status", str(status)), *fields])
    events = peer.send(data(sid, b"x", end=True))
    assert kinds(events) == ["StreamReset"] and "none after HEAD, 204, 304" in events[0].reason
    assert peer.resets() == [(sid, E.PROTOCOL_ERROR)]
    sid = peer.get(method)
    peer.headers(sid, [(":status", str(status)), *fields])
    assert kinds(peer.send(data(sid, b"", end=True))) == ["StreamEnded"]


def test_response_content_length_mismatch():
    peer = RawServer()
    sid = peer.get()
    peer.headers(sid, [(":status", "200"), ("content-length", "3")])
    events = peer.send(data(sid, b"abcd"))
    assert kinds(events) == ["StreamReset"]
    other = peer.get()
    peer.headers(other, [(":status", "200"), ("content-length", "3")])
    assert kinds(peer.send(data(other, b"abc", end=True))) == ["DataReceived", "StreamEnded"]


def test_trailers_after_a_response():
    peer = RawServer()
    sid = peer.get()
    events = (peer.headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
              + peer.send(data(sid, b"\0\0\0\0\0"))
              + peer.headers(sid, [("grpc-status", "0"), ("grpc-message", "")], end=True))
    assert kinds(events) == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert events[2].headers == [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def test_tunnel_responses_keep_their_events():
    peer = RawServer()
    sid = peer.client.open_tunnel("10.0.0.1:80")
    events = peer.headers(sid, [(":status", "200")])
    assert kinds(events) == ["TunnelAccepted"] and isinstance(events[0], ev.ResponseReceived)
    sid = peer.client.open_tunnel("10.0.0.1:80")
    events = peer.headers(sid, [(":status", "503")], end=True)
    assert kinds(events) == ["TunnelRefused", "StreamEnded"]


# ------------------------------------------------------------ extended CONNECT

def test_extended_connect_round_trip():
    c, s = H2Connection(client=True), H2Connection(client=False, enable_connect_protocol=True)
    for _ in range(2):
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())
    assert c.peer_accepts_extended_connect
    sid = c.open_tunnel("chat.example", [("sec-websocket-version", "13")], protocol="websocket",
                        scheme="https", path="/chat")
    events = s.receive_data(c.data_to_send())
    assert type(events[0]) is ev.TunnelRequested
    assert (events[0].method, events[0].protocol, events[0].scheme, events[0].authority, events[0].path) == (
        "CONNECT", "websocket", "https", "chat.example", "/chat")
    s.accept_tunnel(sid)
    assert kinds(c.receive_data(s.data_to_send())) == ["TunnelAccepted"]
    c.send_data(sid, b"frame bytes, not content", end_stream=True)
    assert kinds(s.receive_data(c.data_to_send())) == ["DataReceived", "StreamEnded"]


def test_extended_connect_refused_when_not_enabled():
    raw = RawClient()
    events = raw.send(frame(1, END_HEADERS, 1, raw.block([
        (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "a"),
        (":path", "/")])))
    assert kinds(events) == ["StreamReset"] and "not enabled" in events[0].reason


def test_connect_protocol_setting_cannot_be_withdrawn():
    c = H2Connection(client=True)
    c.receive_data(settings((8, 1)))
    assert c.peer_accepts_extended_connect
    events = c.receive_data(settings((8, 0)))
    assert any(isinstance(e, ev.ConnectionTerminated) and "back from 1 to 0" in e.reason for e in events)


def test_headers_on_an_established_tunnel_are_a_stream_error():
    """RFC 9113 8.5: once a CONNECT is answered 2xx, only DATA (and stream management)
    may follow on its stream, either way."""
    raw = RawClient()
    raw.open(1)
    raw.server.accept_tunnel(1)
    raw.output()
    events = raw.send(frame(1, END_HEADERS | END_STREAM, 1, raw.block([("x-late", "1")])))
    assert kinds(events) == ["StreamReset"] and "established CONNECT tunnel 1" in events[0].reason
    assert resets(raw) == [(1, E.PROTOCOL_ERROR)]
    peer = RawServer()
    sid = peer.client.open_tunnel("10.0.0.1:80")
    peer.headers(sid, [(":status", "200")])
    events = peer.headers(sid, [("x-late", "1")], end=True)
    assert kinds(events) == ["StreamReset"] and "only DATA" in events[0].reason
    # a refused CONNECT's response is an ordinary one: trailers may end it
    sid = peer.client.open_tunnel("10.0.0.1:80")
    peer.headers(sid, [(":status", "503")])
    assert kinds(peer.headers(sid, [("x-why", "no upstream")], end=True)) == ["TrailersReceived", "StreamEnded"]


def test_requests_made_to_be_reset_count_toward_madeyoureset():
    """Content that overruns its declared length costs the peer nothing and makes us
    reset the stream: like every reset the peer provokes, it counts toward
    max_local_resets (CVE-2025-8671), past which the connection ends."""
    raw = RawClient(max_local_resets=10)
    for i in range(11):
        sid = 2 * i + 1
        raw.send(frame(1, END_HEADERS, sid, request_block(raw, extra=[("content-length", "1")])))
        events = raw.send(data(sid, b"xx"))
    assert any(isinstance(e, ev.ConnectionTerminated) and e.error_code == E.ENHANCE_YOUR_CALM for e in events)
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM
