"""RFC 9113 error classes, table-tested with raw bytes against a server connection.

Each row: bytes sent after the handshake (with client streams 1 and 3 open) and
the required answer: GOAWAY with a code (connection error), RST_STREAM on a
stream with a code (stream error), or nothing (ignored, connection fine).
"""
import pytest

from meshcore import events as ev
from meshcore.errors import ErrorCode as E

from rawpeer import RawClient, frame, settings, u32

MiB = 1024 * 1024


def hb(raw, headers):
    return raw.block(headers)


# (id, builder(raw) -> bytes, expected)   expected: ("goaway", code) | ("rst", sid, code) | ("ok",)
CASES = [
    ("frame-over-max-size", lambda r: frame(0, 0, 1, b"x" * (MiB + 1)), ("goaway", E.FRAME_SIZE_ERROR)),
    ("data-on-stream-0", lambda r: frame(0, 0, 0, b"x"), ("goaway", E.PROTOCOL_ERROR)),
    ("data-padding-too-long", lambda r: frame(0, 0x8, 1, bytes([5]) + b"abcd"), ("goaway", E.PROTOCOL_ERROR)),
    ("data-padded-empty", lambda r: frame(0, 0x8, 1, b""), ("goaway", E.FRAME_SIZE_ERROR)),
    ("headers-on-stream-0", lambda r: frame(1, 0x4, 0, b""), ("goaway", E.PROTOCOL_ERROR)),
    ("headers-padding-too-long", lambda r: frame(1, 0x4 | 0x8, 5, bytes([9]) + b"abc"), ("goaway", E.PROTOCOL_ERROR)),
    ("priority-on-stream-0", lambda r: frame(2, 0, 0, b"\0" * 5), ("goaway", E.PROTOCOL_ERROR)),
    ("priority-wrong-length", lambda r: frame(2, 0, 1, b"\0" * 4), ("rst", 1, E.FRAME_SIZE_ERROR)),
    ("priority-self-dependency", lambda r: frame(2, 0, 1, u32(1) + b"\x10"), ("rst", 1, E.PROTOCOL_ERROR)),
    ("priority-on-idle-stream-is-fine", lambda r: frame(2, 0, 11, u32(0) + b"\x10"), ("ok",)),
    ("rst-wrong-length", lambda r: frame(3, 0, 1, b"\0\0\0"), ("goaway", E.FRAME_SIZE_ERROR)),
    ("rst-on-stream-0", lambda r: frame(3, 0, 0, u32(8)), ("goaway", E.PROTOCOL_ERROR)),
    ("rst-on-idle-stream", lambda r: frame(3, 0, 9, u32(8)), ("goaway", E.PROTOCOL_ERROR)),
    ("settings-length-not-6n", lambda r: frame(4, 0, 0, b"\0" * 5), ("goaway", E.FRAME_SIZE_ERROR)),
    ("settings-ack-with-payload", lambda r: frame(4, 1, 0, b"\0" * 6), ("goaway", E.FRAME_SIZE_ERROR)),
    ("settings-on-stream-1", lambda r: frame(4, 0, 1, b""), ("goaway", E.PROTOCOL_ERROR)),
    ("settings-window-too-large", lambda r: settings((4, 2**31)), ("goaway", E.FLOW_CONTROL_ERROR)),
    ("settings-frame-size-too-small", lambda r: settings((5, 16383)), ("goaway", E.PROTOCOL_ERROR)),
    ("settings-frame-size-too-large", lambda r: settings((5, 2**24)), ("goaway", E.PROTOCOL_ERROR)),
    ("settings-enable-push-2", lambda r: settings((2, 2)), ("goaway", E.PROTOCOL_ERROR)),
    ("settings-unknown-id-ignored", lambda r: settings((0x99, 7)), ("ok",)),
    ("unsolicited-settings-ack", lambda r: settings(ack=True), ("goaway", E.PROTOCOL_ERROR)),
    ("push-promise-to-server", lambda r: frame(5, 0x4, 1, u32(2)), ("goaway", E.PROTOCOL_ERROR)),
    ("ping-wrong-length", lambda r: frame(6, 0, 0, b"\0" * 7), ("goaway", E.FRAME_SIZE_ERROR)),
    ("ping-on-stream-1", lambda r: frame(6, 0, 1, b"\0" * 8), ("goaway", E.PROTOCOL_ERROR)),
    ("goaway-on-stream-1", lambda r: frame(7, 0, 1, b"\0" * 8), ("goaway", E.PROTOCOL_ERROR)),
    ("goaway-too-short", lambda r: frame(7, 0, 0, b"\0" * 7), ("goaway", E.FRAME_SIZE_ERROR)),
    ("window-update-wrong-length", lambda r: frame(8, 0, 0, b"\0" * 3), ("goaway", E.FRAME_SIZE_ERROR)),
    ("window-update-0-connection", lambda r: frame(8, 0, 0, u32(0)), ("goaway", E.PROTOCOL_ERROR)),
    ("window-update-0-stream", lambda r: frame(8, 0, 1, u32(0)), ("rst", 1, E.PROTOCOL_ERROR)),
    ("window-overflow-connection", lambda r: frame(8, 0, 0, u32(2**31 - 1)), ("goaway", E.FLOW_CONTROL_ERROR)),
    ("window-overflow-stream", lambda r: frame(8, 0, 1, u32(2**31 - 1)), ("rst", 1, E.FLOW_CONTROL_ERROR)),
    ("window-update-idle-stream", lambda r: frame(8, 0, 21, u32(1)), ("goaway", E.PROTOCOL_ERROR)),
    ("continuation-without-headers", lambda r: frame(9, 0x4, 1, b""), ("goaway", E.PROTOCOL_ERROR)),
    ("frame-inside-header-block", lambda r: frame(1, 0, 5, hb(r, [(":method", "CONNECT")]))
        + frame(6, 0, 0, b"\0" * 8), ("goaway", E.PROTOCOL_ERROR)),
    ("continuation-other-stream", lambda r: frame(1, 0, 5, hb(r, [(":method", "CONNECT")]))
        + frame(9, 0x4, 7, b""), ("goaway", E.PROTOCOL_ERROR)),
    ("unknown-frame-type-ignored", lambda r: frame(0xfa, 0xff, 1, b"whatever"), ("ok",)),
    ("unknown-frame-inside-block", lambda r: frame(1, 0, 5, hb(r, [(":method", "CONNECT")]))
        + frame(0xfa, 0, 5, b""), ("goaway", E.PROTOCOL_ERROR)),
    ("data-on-idle-stream", lambda r: frame(0, 0, 13, b"x"), ("goaway", E.PROTOCOL_ERROR)),
    ("headers-on-server-stream-id", lambda r: r.connect_headers(2), ("goaway", E.PROTOCOL_ERROR)),
    ("data-over-stream-window", lambda r: frame(0, 0, 1, b"x" * MiB) * 4 + frame(0, 0, 1, b"x"),
        ("rst", 1, E.FLOW_CONTROL_ERROR)),
    ("hpack-garbage", lambda r: frame(1, 0x4, 5, b"\xff\xff\xff\xff\xff\xff"), ("goaway", E.COMPRESSION_ERROR)),
    ("hpack-index-0", lambda r: frame(1, 0x4, 5, b"\x80"), ("goaway", E.COMPRESSION_ERROR)),
    ("hpack-table-size-over-setting", lambda r: frame(1, 0x4, 5, b"\x3f\xe1\x7f"), ("goaway", E.COMPRESSION_ERROR)),
    ("connect-with-path", lambda r: r.connect_headers(5, extra=[(":path", "/")]), ("rst", 5, E.PROTOCOL_ERROR)),
    ("connect-without-authority", lambda r: frame(1, 0x4, 5, hb(r, [(":method", "CONNECT")])), ("rst", 5, E.PROTOCOL_ERROR)),
    ("uppercase-field-name", lambda r: r.connect_headers(5, extra=[("X-Big", "1")]), ("rst", 5, E.PROTOCOL_ERROR)),
    ("connection-specific-field", lambda r: r.connect_headers(5, extra=[("connection", "close")]), ("rst", 5, E.PROTOCOL_ERROR)),
    ("pseudo-after-regular", lambda r: frame(1, 0x4, 5, hb(r, [(":method", "CONNECT"), ("a", "b"), (":authority", "x:1")])), ("rst", 5, E.PROTOCOL_ERROR)),
    ("duplicate-method", lambda r: frame(1, 0x4, 5, hb(r, [(":method", "CONNECT"), (":method", "CONNECT"), (":authority", "x:1")])), ("rst", 5, E.PROTOCOL_ERROR)),
    ("status-in-request", lambda r: r.connect_headers(5, extra=[(":status", "200")]), ("rst", 5, E.PROTOCOL_ERROR)),
    ("headers-self-dependency", lambda r: frame(1, 0x4 | 0x20, 5, u32(5) + b"\x10" + hb(r, [(":method", "CONNECT"), (":authority", "x:1")])), ("rst", 5, E.PROTOCOL_ERROR)),
    ("trailers-without-end-stream", lambda r: frame(1, 0x4, 1, hb(r, [("x-trailer", "1")])), ("rst", 1, E.PROTOCOL_ERROR)),
]


@pytest.mark.parametrize("build,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rfc_error_class(build, expected):
    raw = RawClient()
    raw.open(1)
    raw.open(3)
    raw.output()
    events = raw.send(build(raw))
    frames = raw.output()
    goaways = [f for f in frames if f.type == 0x07]
    resets = [f for f in frames if f.type == 0x03]
    if expected[0] == "goaway":
        assert len(goaways) == 1, frames
        assert goaways[0].error_code == expected[1], (goaways[0].error_code, goaways[0].additional_data)
        assert goaways[0].last_stream_id == max(3, raw.server.highest_remote_stream_id)
        term = [e for e in events if isinstance(e, ev.ConnectionTerminated)]
        assert term and not term[0].remote and term[0].reason
        # nothing more is processed after a connection error
        assert raw.send(frame(6, 0, 0, b"\0" * 8)) == []
    elif expected[0] == "rst":
        assert not goaways, goaways[0].additional_data
        assert [(f.stream_id, f.error_code) for f in resets] == [expected[1:]]
        reset = [e for e in events if isinstance(e, ev.StreamReset)]
        assert reset and reset[0].stream_id == expected[1] and not reset[0].remote
        assert reset[0].reason
        # the connection and the other stream carry on
        other = 3 if expected[1] == 1 else 1
        evs = raw.send(frame(0, 0, other, b"still here"))
        assert [bytes(e.data) for e in evs if isinstance(e, ev.DataReceived)] == [b"still here"]
    else:
        assert not goaways and not resets, frames
        assert raw.send(frame(0, 0, 1, b"fine")), "connection no longer delivers data"


def test_invalid_preface_is_a_connection_error():
    from meshcore import H2Connection
    server = H2Connection(client=False)
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(events[-1], ev.ConnectionTerminated)
    assert events[-1].error_code == E.PROTOCOL_ERROR
    assert "preface" in events[-1].reason


def test_first_frame_must_be_settings():
    from meshcore import H2Connection
    from rawpeer import PREFACE
    server = H2Connection(client=False)
    events = server.receive_data(PREFACE + frame(6, 0, 0, b"\0" * 8))
    assert events[-1].error_code == E.PROTOCOL_ERROR and "SETTINGS" in events[-1].reason


def test_data_over_connection_window_is_a_connection_error():
    raw = RawClient(connection_window_size=65535)
    raw.send(settings())
    raw.open(1)
    raw.open(3)
    raw.output()
    # 2 x 40000 fits each stream's 64 KiB window but not the 64 KiB connection window
    raw.send(frame(0, 0, 1, b"x" * 40000))
    raw.send(frame(0, 0, 3, b"x" * 40000))
    assert raw.goaway().error_code == E.FLOW_CONTROL_ERROR


def test_data_on_half_closed_remote_stream_is_stream_closed():
    raw = RawClient()
    raw.open(1, end_stream=True)
    raw.output()
    raw.send(frame(0, 0, 1, b"late"))
    assert [(f.stream_id, f.error_code) for f in raw.output() if f.type == 3] == [(1, E.STREAM_CLOSED)]


def test_data_on_stream_closed_normally_is_stream_closed():
    raw = RawClient()
    raw.open(1, end_stream=True)
    raw.server.refuse_tunnel(1, 401)
    raw.output()
    assert raw.server.stream_state(1) == "closed"
    raw.send(frame(0, 0, 1, b"late"))
    assert [(f.stream_id, f.error_code) for f in raw.output() if f.type == 3] == [(1, E.STREAM_CLOSED)]


def test_frames_on_a_stream_we_reset_are_dropped_silently():
    raw = RawClient()
    raw.open(1)
    raw.server.reset_stream(1)
    raw.output()
    events = raw.send(frame(0, 0, 1, b"in flight") + frame(8, 0, 1, u32(5)) + frame(3, 0, 1, u32(8)))
    assert events == []
    assert raw.output() == []


def test_headers_on_closed_stream_is_connection_error():
    raw = RawClient()
    raw.open(1, end_stream=True)
    raw.server.refuse_tunnel(1, 401)
    raw.output()
    raw.send(raw.connect_headers(1))
    assert raw.goaway().error_code == E.STREAM_CLOSED


def test_streams_over_the_concurrency_limit_are_refused():
    raw = RawClient(max_concurrent_streams=5)
    for sid in range(1, 11, 2):
        raw.open(sid)
    assert raw.server.open_streams == 5
    events = raw.open(11)
    assert isinstance(events[0], ev.StreamReset) and events[0].error_code == E.REFUSED_STREAM
    assert [(f.stream_id, f.error_code) for f in raw.output() if f.type == 3] == [(11, E.REFUSED_STREAM)]
    # a closed stream frees a slot
    raw.send(frame(3, 0, 1, u32(8)))
    assert isinstance(raw.open(13)[0], ev.TunnelRequested)


def test_client_refuses_push_promise_and_server_streams():
    from meshcore import H2Connection
    from rawpeer import parse_frames
    client = H2Connection(client=True)
    sid = client.open_tunnel("10.0.0.1:80")
    client.data_to_send()
    client.receive_data(settings())
    events = client.receive_data(frame(5, 0x4, sid, u32(2)))
    assert events[-1].error_code == E.PROTOCOL_ERROR
    client = H2Connection(client=True)
    client.data_to_send()
    client.receive_data(settings((2, 1)))
    goaway = [f for f in parse_frames(client.data_to_send()) if f.type == 7]
    assert goaway and goaway[0].error_code == E.PROTOCOL_ERROR
