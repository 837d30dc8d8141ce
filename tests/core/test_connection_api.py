"""H2Connection's commands and the events they cause, without an event loop."""
import h2.config
import h2.connection
import h2.events
import pytest

from meshcore import H2Connection, events as ev
from meshcore.errors import (ErrorCode as E, StreamClosedError, TooManyStreamsError, UsageError,
                             WindowExceededError)

from rawpeer import RawClient, frame, u32


def pair():
    c, s = H2Connection(client=True), H2Connection(client=False)
    for _ in range(2):
        s.receive_data(c.data_to_send())
        c.receive_data(s.data_to_send())
    return c, s


def tunnel(c, s, authority="10.0.0.1:80"):
    sid = c.open_tunnel(authority)
    for e in s.receive_data(c.data_to_send()):
        if isinstance(e, ev.TunnelRequested):
            s.accept_tunnel(e.stream_id)
    c.receive_data(s.data_to_send())
    return sid


def test_goaway_refuses_streams_above_last_and_lets_older_finish():
    c, s = pair()
    a, b = tunnel(c, s), tunnel(c, s)
    late = c.open_tunnel("10.0.0.1:81")       # sent, but the server closes before reading it
    s.close(last_stream_id=b)
    events = c.receive_data(s.data_to_send())
    term = [e for e in events if isinstance(e, ev.ConnectionTerminated)]
    assert term and term[0].remote and term[0].error_code == E.NO_ERROR and term[0].last_stream_id == b
    refused = [e for e in events if isinstance(e, ev.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in refused] == [(late, E.REFUSED_STREAM)]
    with pytest.raises(StreamClosedError, match="going away"):
        c.open_tunnel("10.0.0.1:82")
    # streams at or below last_stream_id keep working in both directions
    c.send_data(a, b"still", True)
    assert any(isinstance(e, ev.DataReceived) for e in s.receive_data(c.data_to_send()))
    s.send_data(b, b"fine", True)
    assert any(isinstance(e, ev.DataReceived) for e in c.receive_data(s.data_to_send()))


def test_server_after_goaway_refuses_new_streams():
    raw = RawClient()
    raw.open(1)
    raw.server.close()
    raw.output()
    raw.open(3)
    resets = [(f.stream_id, f.error_code) for f in raw.output() if f.type == 3]
    assert resets == [(3, E.REFUSED_STREAM)]


def test_ping_round_trip():
    c, s = pair()
    opaque = c.ping()
    s.receive_data(c.data_to_send())
    events = c.receive_data(s.data_to_send())
    assert [e.data for e in events if isinstance(e, ev.PingAcknowledged)] == [opaque]


def test_trailers_and_informational_responses():
    raw = RawClient()
    raw.open(1)
    events = raw.send(frame(1, 0x4 | 0x1, 1, raw.block([("x-checksum", "abc")])))
    assert [type(e) for e in events] == [ev.TrailersReceived, ev.StreamEnded]
    assert events[0].headers == [(b"x-checksum", b"abc")]
    c = H2Connection(client=True)
    sid = c.open_tunnel("10.0.0.1:80")
    c.receive_data(frame(4, 0, 0))
    import hpack
    enc = hpack.Encoder()
    events = c.receive_data(frame(1, 0x4, sid, enc.encode([(":status", "100")]))
                            + frame(1, 0x4, sid, enc.encode([(":status", "200")])))
    assert [type(e) for e in events if not isinstance(e, ev.SettingsChanged)] == [
        ev.InformationalResponseReceived, ev.TunnelAccepted]


def test_send_more_than_the_window_is_refused():
    c, s = pair()
    sid = tunnel(c, s)
    assert c.available_window(sid) == 4 * 1024 * 1024
    with pytest.raises(WindowExceededError):
        c.send_data(sid, b"x" * (4 * 1024 * 1024 + 1))
    c.send_data(sid, b"x" * (4 * 1024 * 1024))
    assert c.available_window(sid) == 0


def test_client_respects_peer_max_concurrent_streams():
    c = H2Connection(client=True)
    c.receive_data(frame(4, 0, 0, bytes.fromhex("0003") + u32(2)))   # MAX_CONCURRENT_STREAMS 2
    c.open_tunnel("a:1")
    c.open_tunnel("a:2")
    with pytest.raises(TooManyStreamsError):
        c.open_tunnel("a:3")


def test_sending_on_closed_or_half_closed_stream():
    c, s = pair()
    sid = tunnel(c, s)
    c.end_stream(sid)
    with pytest.raises(StreamClosedError, match="half-closed"):
        c.send_data(sid, b"x")
    with pytest.raises(StreamClosedError, match="idle"):
        c.send_data(99, b"x")


def test_outgoing_malformed_fields_are_refused():
    c = H2Connection(client=True)
    with pytest.raises(UsageError, match="invalid character"):
        c.open_tunnel("a:1", [("Bad Name", "x")])
    with pytest.raises(UsageError, match="connection-specific"):
        c.open_tunnel("a:1", [("connection", "close")])


def test_acknowledging_more_than_received_is_refused():
    c, s = pair()
    with pytest.raises(UsageError, match="unacknowledged"):
        s.acknowledge_received_data(1, 10)


def test_large_header_block_uses_continuation_and_h2_reads_it():
    """A 40 KiB field exceeds h2's default 16 KiB frame size: HEADERS + CONTINUATION."""
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    peer.initiate_connection()
    peer.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20})
    c = H2Connection(client=True)
    c.receive_data(peer.data_to_send())
    sid = c.open_tunnel("10.0.0.1:80", [("x-big", "v" * 40000)])
    out = c.data_to_send()
    assert out.count(bytes([0x09])) >= 1
    requests = [e for e in peer.receive_data(out) if isinstance(e, h2.events.RequestReceived)]
    assert requests and dict(requests[0].headers)[b"x-big"] == b"v" * 40000 and requests[0].stream_id == sid


def test_settings_change_reopens_windows_of_open_streams():
    c, s = pair()
    sid = tunnel(c, s)
    c.send_data(sid, b"x" * c.available_window(sid))
    s.receive_data(c.data_to_send())
    # server raises its initial window by 1000: every open stream of the client gains 1000
    raw_settings = frame(4, 0, 0, bytes.fromhex("0004") + u32(4 * 1024 * 1024 + 1000))
    events = c.receive_data(raw_settings)
    assert isinstance(events[0], ev.SettingsChanged)
    assert [(e.stream_id, e.delta) for e in events if isinstance(e, ev.WindowOpened)] == [(sid, 1000)]
    assert c.available_window(sid) == 1000


def test_reset_event_carries_peer_code():
    c, s = pair()
    sid = tunnel(c, s)
    s.reset_stream(sid, E.CONNECT_ERROR)
    events = c.receive_data(s.data_to_send())
    assert [(e.stream_id, e.error_code, e.remote) for e in events] == [(sid, E.CONNECT_ERROR, True)]
    assert c.stream_state(sid) == "closed"


def test_stream_states_are_exported_as_values_and_predicates():
    from meshcore._core.h2conn import StreamState
    client = H2Connection(client=True)
    server = H2Connection(client=False)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    sid = client.open_tunnel("10.0.0.7:8080")
    assert client.state_of(sid) == StreamState.OPEN and client.can_send(sid) and client.can_receive(sid)
    client.end_stream(sid)
    assert client.state_of(sid) == StreamState.HALF_CLOSED_LOCAL
    assert not client.can_send(sid) and client.can_receive(sid)
    assert client.stream_state(sid) == "half-closed (local)"
    server.receive_data(client.data_to_send())
    assert server.state_of(sid) == StreamState.HALF_CLOSED_REMOTE and server.can_send(sid) and not server.can_receive(sid)
    client.reset_stream(sid)
    assert client.state_of(sid) == StreamState.CLOSED and not (client.can_send(sid) or client.can_receive(sid))
    assert client.state_of(sid + 2) == StreamState.IDLE
