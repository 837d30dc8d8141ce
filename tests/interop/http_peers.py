"""In-memory request/response peers for differential tests: meshcore's H2Connection
and python-hyper's independent `h2` behind one interface whose events are plain
tuples, so the transcript of one scenario can be compared across implementations.

Event tuples (headers are the regular fields only, as (bytes, bytes)):
    ("request", sid, method, scheme, authority, path, headers)
    ("informational", sid, status, headers)
    ("response", sid, status, headers)
    ("data", sid, bytes)
    ("trailers", sid, headers)
    ("end", sid)
    ("reset", sid, error_code)
    ("goaway", error_code)
Receivers acknowledge DATA at once, so flow control never stalls a scenario.
"""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from meshcore import H2Connection
from meshcore import events as ev


def _regular(headers) -> list:
    return [(bytes(n), bytes(v)) for n, v in headers if not bytes(n).startswith(b":")]


class Ours:
    name = "meshcore"

    def __init__(self, client: bool, **kwargs):
        self.client = client
        self.conn = H2Connection(client=client, **kwargs)

    def request(self, method, scheme, authority, path, headers=(), end=False) -> int:
        return self.conn.send_request(method, scheme, authority, path, headers, end)

    def inform(self, sid, status, headers=()):
        self.conn.send_informational(sid, status, headers)

    def respond(self, sid, status, headers=(), end=False):
        self.conn.send_response(sid, status, headers, end)

    def data(self, sid, data: bytes, end=False):
        step = 16384
        if not data:
            self.conn.send_data(sid, b"", end)
        for i in range(0, len(data), step):
            self.conn.send_data(sid, data[i:i + step], end and i + step >= len(data))

    def trailers(self, sid, headers):
        self.conn.send_trailers(sid, headers)

    def window(self, sid) -> int:
        return self.conn.available_window(sid)

    def out(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> list:
        out = []
        for e in self.conn.receive_data(data):
            kind = type(e)
            if kind is ev.RequestReceived or kind is ev.TunnelRequested:
                out.append(("request", e.stream_id, e.method, e.scheme, e.authority, e.path, e.headers))
            elif kind is ev.InformationalResponseReceived:
                out.append(("informational", e.stream_id, e.status, e.headers))
            elif isinstance(e, ev.ResponseReceived):
                out.append(("response", e.stream_id, e.status, e.headers))
            elif kind is ev.DataReceived:
                out.append(("data", e.stream_id, bytes(e.data)))
                self.conn.acknowledge_received_data(e.stream_id, len(e.data))
            elif kind is ev.TrailersReceived:
                out.append(("trailers", e.stream_id, e.headers))
            elif kind is ev.StreamEnded:
                out.append(("end", e.stream_id))
            elif kind is ev.StreamReset:
                out.append(("reset", e.stream_id, e.error_code))
            elif kind is ev.ConnectionTerminated:
                out.append(("goaway", e.error_code))
        return out


class H2:
    """python-hyper's h2. `strict=False` sends whatever it is told (outbound validation
    and normalization off): the way to put malformed messages on the wire."""

    name = "h2"

    def __init__(self, client: bool, strict: bool = True, **_):
        self.client = client
        cfg = h2.config.H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=True,
            validate_outbound_headers=strict, normalize_outbound_headers=strict)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 * 1024 * 1024,
                                   h2.settings.SettingCodes.MAX_FRAME_SIZE: 1024 * 1024,
                                   h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.increment_flow_control_window(16 * 1024 * 1024 - 65535)
        self.error = None          # an h2 ProtocolError raised by receive_data (its verdict)

    def request(self, method, scheme, authority, path, headers=(), end=False) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", _b(method)), (b":scheme", _b(scheme))]
        if authority is not None:
            fields.append((b":authority", _b(authority)))
        fields.append((b":path", _b(path)))
        self.conn.send_headers(sid, fields + [(_b(n), _b(v)) for n, v in headers], end_stream=end)
        return sid

    def raw_headers(self, sid, fields, end=False):
        self.conn.send_headers(sid, [(_b(n), _b(v)) for n, v in fields], end_stream=end)

    def inform(self, sid, status, headers=()):
        self.conn.send_headers(sid, [(b":status", str(status).encode())] + [(_b(n), _b(v)) for n, v in headers])

    def respond(self, sid, status, headers=(), end=False):
        self.conn.send_headers(sid, [(b":status", str(status).encode())] + [(_b(n), _b(v)) for n, v in headers],
                               end_stream=end)

    def data(self, sid, data: bytes, end=False):
        step = self.conn.max_outbound_frame_size
        if not data:
            self.conn.send_data(sid, b"", end_stream=end)
        for i in range(0, len(data), step):
            self.conn.send_data(sid, data[i:i + step], end_stream=end and i + step >= len(data))

    def trailers(self, sid, headers):
        self.conn.send_headers(sid, [(_b(n), _b(v)) for n, v in headers], end_stream=True)

    def window(self, sid) -> int:
        return self.conn.local_flow_control_window(sid)

    def out(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> list:
        out = []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:      # h2's verdict on what it received
            self.error = exc
            return [("error", type(exc).__name__)]
        for e in events:
            if isinstance(e, h2.events.RequestReceived):
                h = dict(e.headers)
                authority = h.get(b":authority", dict(_regular(e.headers)).get(b"host", b""))
                out.append(("request", e.stream_id, h[b":method"].decode("latin-1"),
                            h.get(b":scheme", b"").decode("latin-1"), authority.decode("latin-1"),
                            h.get(b":path", b"").decode("latin-1"), _regular(e.headers)))
            elif isinstance(e, h2.events.InformationalResponseReceived):
                out.append(("informational", e.stream_id, _status(e.headers), _regular(e.headers)))
            elif isinstance(e, h2.events.ResponseReceived):
                out.append(("response", e.stream_id, _status(e.headers), _regular(e.headers)))
            elif isinstance(e, h2.events.DataReceived):
                out.append(("data", e.stream_id, e.data))
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.TrailersReceived):
                out.append(("trailers", e.stream_id, _regular(e.headers)))
            elif isinstance(e, h2.events.StreamEnded):
                out.append(("end", e.stream_id))
            elif isinstance(e, h2.events.StreamReset):
                out.append(("reset", e.stream_id, e.error_code))
            elif isinstance(e, h2.events.ConnectionTerminated):
                out.append(("goaway", e.error_code))
        return out


def reset_frames(data: bytes) -> list:
    """(stream id, error code) of every RST_STREAM frame in `data`."""
    found, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == 0x3:
            found.append((int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7fffffff,
                          int.from_bytes(data[pos + 9:pos + 13], "big")))
        pos += 9 + length
    return found


def _status(headers):
    value = dict(headers).get(b":status", b"")
    return int(value) if value.isdigit() else value      # h2 passes on what it does not check


def _b(v) -> bytes:
    return v.encode("latin-1") if isinstance(v, str) else bytes(v)


def connected(client, server):
    """Prefaces and SETTINGS (and their ACKs) exchanged."""
    for _ in range(2):
        server.receive(client.out())
        client.receive(server.out())
    return client, server


def merge_data(events: list) -> list:
    """DATA events of a stream merged while consecutive: frame boundaries are not
    part of a message, so transcripts compare bodies, not how they were cut."""
    out = []
    for e in events:
        if e[0] == "data" and out and out[-1][0] == "data" and out[-1][1] == e[1]:
            out[-1] = ("data", e[1], out[-1][2] + e[2])
        elif e[0] == "data" and not e[2]:
            continue        # an empty DATA frame carries nothing but its END_STREAM
        else:
            out.append(e)
    return out
