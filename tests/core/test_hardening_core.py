"""The attacks of the README's security table that the sans-IO core decides, driven with raw bytes.

Each attack gets its stated answer, and a well-behaved stream on the same
connection keeps its bytes intact up to the point the connection is cut."""
import tracemalloc

import pytest

from meshcore import events as ev
from meshcore.errors import ErrorCode as E

from rawpeer import RawClient, frame, u32


def data_of(events, sid):
    return b"".join(bytes(e.data) for e in events if isinstance(e, ev.DataReceived) and e.stream_id == sid)


def test_rapid_reset_is_cut_off_after_20():
    raw = RawClient()
    raw.open(1)
    raw.output()
    for i in range(20):
        sid = 3 + 2 * i
        raw.open(sid)
        raw.send(frame(3, 0, sid, u32(8)))
    assert raw.goaway() is None, "20 rapid resets are tolerated"
    # the honest stream still works
    assert data_of(raw.send(frame(0, 0, 1, b"ok")), 1) == b"ok"
    raw.open(43)
    raw.send(frame(3, 0, 43, u32(8)))
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_resets_of_old_streams_are_not_rapid():
    now = [0.0]
    raw = RawClient(clock=lambda: now[0])
    for i in range(30):
        raw.open(1 + 2 * i)
    now[0] = 5.0
    for i in range(30):
        raw.send(frame(3, 0, 1 + 2 * i, u32(8)))
    assert raw.goaway() is None


def test_resets_of_answered_tunnels_are_a_clients_ordinary_end():
    """A pooled connection carries many clients: tunnels that were answered (200) and
    then reset by the client are not Rapid Reset, however many and however quick."""
    now = [0.0]
    raw = RawClient(clock=lambda: now[0])
    for i in range(100):
        sid = 1 + 2 * i
        raw.open(sid)
        raw.server.accept_tunnel(sid)
        raw.send(frame(3, 0, sid, u32(8)))
    assert raw.goaway() is None


def test_rapid_reset_counts_per_window_not_over_the_connections_life():
    """20 unanswered resets a second, second after second, on a long-lived connection:
    each window starts afresh; 21 within one window is the attack."""
    now = [0.0]
    raw = RawClient(clock=lambda: now[0])
    sid = 1
    for second in range(5):
        now[0] = float(second)
        for _ in range(20):
            raw.open(sid)
            raw.send(frame(3, 0, sid, u32(8)))
            sid += 2
    assert raw.goaway() is None
    for _ in range(21):
        raw.open(sid)
        raw.send(frame(3, 0, sid, u32(8)))
        sid += 2
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_made_you_reset_counts_our_own_stream_errors():
    """CVE-2025-8671: malformed frames that make us reset streams count too."""
    raw = RawClient(max_local_resets=1024)
    raw.open(1)
    resets = 0
    for i in range(1024):
        sid = 3 + 2 * i
        raw.send(raw.connect_headers(sid) + frame(8, 0, sid, u32(0)))   # WINDOW_UPDATE 0: stream error
        frames = raw.output()                   # written out, as the shell does
        assert not [f for f in frames if f.type == 7]
        resets += sum(1 for f in frames if f.type == 3)
    assert resets == 1024
    assert data_of(raw.send(frame(0, 0, 1, b"ok")), 1) == b"ok"
    raw.send(raw.connect_headers(3 + 2 * 1024) + frame(8, 0, 3 + 2 * 1024, u32(0)))
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_continuation_flood_is_bounded_by_frame_count():
    raw = RawClient()
    block = raw.block([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    data = frame(1, 0, 1, block[:1]) + b"".join(frame(9, 0, 1, b"\x00") for _ in range(8))
    raw.send(data)
    assert raw.goaway() is None, "8 CONTINUATION frames are allowed"
    raw2 = RawClient()
    raw2.send(frame(1, 0, 1, block[:1]) + b"".join(frame(9, 0, 1, b"\x00") for _ in range(9)))
    assert raw2.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_continuation_flood_is_bounded_by_block_size():
    raw = RawClient()
    raw.send(frame(1, 0, 1, b"\x00" * 40000))
    raw.send(frame(9, 0, 1, b"\x00" * 30000))   # 70000 > 64 KiB server limit
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_hpack_bomb_is_refused_while_decoding():
    """One 4 KiB entry in the dynamic table, then a block of 1-byte references to it:
    the decoded list would be ~20 MiB; the decoder stops at 64 KiB."""
    raw = RawClient()
    big = "v" * 4000
    raw.open(1, extra=[("x-big", big)])     # hpack.Encoder indexes it (index 62)
    raw.output()
    tracemalloc.start()
    try:
        raw.send(frame(1, 0x4, 3, raw.block([(":method", "CONNECT"), (":authority", "a:1")])[:0]
                       + b"\xbe" * 5000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM
    assert peak < 1_000_000, f"peak allocation {peak} bytes while refusing the bomb"


@pytest.mark.parametrize("flood", ["ping", "settings"])
def test_control_frame_flood_when_we_cannot_write(flood):
    """CVE-2019-9512/9515: answers pile up while the peer does not read them."""
    raw = RawClient()
    one = frame(6, 0, 0, b"12345678") if flood == "ping" else frame(4, 0, 0, b"")
    raw.send(one * 1000)
    assert not raw.server.terminated
    raw.send(one)
    assert raw.server.terminated
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_control_frames_that_are_written_out_do_not_accumulate():
    raw = RawClient()
    for _ in range(5):
        raw.send(frame(6, 0, 0, b"12345678") * 900)
        assert sum(1 for f in raw.output() if f.type == 6) == 900
    assert not raw.server.terminated


def test_reset_flood_counts_as_control_frames():
    """CVE-2019-9514: each stream error queues an RST_STREAM answer."""
    raw = RawClient(max_pending_control_frames=100)
    for i in range(101):
        raw.send(raw.connect_headers(1 + 2 * i, extra=[("X", "1")]))   # malformed: RST each
    assert raw.server.terminated
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_empty_data_frames_flood():
    raw = RawClient()
    raw.open(1)
    raw.send(frame(0, 0, 1, b""))
    assert raw.goaway() is None
    raw.send(frame(0, 0, 1, b"") + frame(0, 0, 1, b""))
    assert raw.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_empty_frames_separated_by_data_are_fine():
    raw = RawClient()
    raw.open(1)
    for _ in range(50):
        raw.send(frame(0, 0, 1, b"") + frame(0, 0, 1, b"x"))
    assert raw.goaway() is None


def test_data_in_flight_after_our_reset_is_ignored_not_counted_as_empty():
    """RFC 9113 5.1: frames on a stream we reset are ignored. They carry bytes, so they
    are not the empty-frame flood (CVE-2019-9518), and the connection (with every other
    tunnel on it) stays up; their bytes still come back to the connection window."""
    raw = RawClient()
    raw.open(1)
    raw.open(3)
    raw.output()
    raw.server.reset_stream(1)
    assert [f.type for f in raw.output()] == [3]
    for _ in range(50):
        events = raw.send(frame(0, 0, 1, b"x" * 1000))
        assert not [e for e in events if isinstance(e, (ev.StreamReset, ev.ConnectionTerminated))]
    assert raw.goaway() is None
    assert data_of(raw.send(frame(0, 0, 3, b"still here")), 3) == b"still here"
    assert raw.server.terminated is False


def test_peer_cannot_exceed_our_window():
    """Zero-window / dribble: the stream window is the hard cap on what we accept."""
    raw = RawClient(initial_window_size=100_000)   # in force: RawClient ACKs our SETTINGS
    raw.open(1)
    raw.output()
    raw.send(frame(0, 0, 1, b"x" * 100_000))
    assert not [f for f in raw.output() if f.type == 3]
    raw.send(frame(0, 0, 1, b"x"))
    resets = [(f.stream_id, f.error_code) for f in raw.output() if f.type == 3]
    assert resets == [(1, E.FLOW_CONTROL_ERROR)]
