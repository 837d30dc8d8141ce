"""In-memory tunnel peers for interop tests: our H2Connection and python-hyper's
independent `h2` behind one small interface, plus a pump that moves bytes between
two peers in random chunks and a tunnel workload that checks SHA-256 both ways.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from meshcore import H2Connection
from meshcore import events as ev


class OursPeer:
    """meshcore's compiled H2Connection."""

    name = "meshcore"

    def __init__(self, client: bool, **kwargs):
        self.conn = H2Connection(client=client, **kwargs)

    def open(self, authority: str) -> int:
        return self.conn.open_tunnel(authority, [("forwarded", 'for="127.0.0.1:40000"')])

    def respond(self, sid: int, status: int) -> None:
        if status == 200:
            self.conn.accept_tunnel(sid)
        else:
            self.conn.refuse_tunnel(sid, status)

    def window(self, sid: int) -> int:
        return self.conn.available_window(sid)

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(sid, data, end)

    def end(self, sid: int) -> None:
        self.conn.end_stream(sid)

    def reset(self, sid: int, code: int = 8) -> None:
        self.conn.reset_stream(sid, code)

    def ack(self, sid: int, n: int) -> None:
        self.conn.acknowledge_received_data(sid, n)

    def out(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> list[tuple]:
        out = []
        for e in self.conn.receive_data(data):
            if isinstance(e, ev.TunnelRequested):
                out.append(("request", e.stream_id, e.method, e.authority))
            elif isinstance(e, (ev.TunnelAccepted, ev.TunnelRefused)):
                out.append(("response", e.stream_id, e.status))
            elif isinstance(e, ev.DataReceived):
                out.append(("data", e.stream_id, bytes(e.data), len(e.data)))
            elif isinstance(e, ev.StreamEnded):
                out.append(("end", e.stream_id))
            elif isinstance(e, ev.StreamReset):
                out.append(("reset", e.stream_id, e.error_code))
            elif isinstance(e, ev.ConnectionTerminated):
                out.append(("goaway", e.error_code, e.last_stream_id))
        return out


class H2Peer:
    """python-hyper's h2, configured like a ztunnel peer (docs/hbone.md, HTTP/2 settings)."""

    name = "h2"

    def __init__(self, client: bool, **_):
        cfg = h2.config.H2Configuration(client_side=client, header_encoding=None,
                                        validate_inbound_headers=True)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        # through update_settings, so h2 applies them (frame size included) when ACKed
        self.conn.update_settings({
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 * 1024 * 1024,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: 1024 * 1024,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 200,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.conn.increment_flow_control_window(16 * 1024 * 1024 - 65535)

    def open(self, authority: str) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", authority.encode())])
        return sid

    def respond(self, sid: int, status: int) -> None:
        self.conn.send_headers(sid, [(b":status", str(status).encode())], end_stream=status != 200)

    def window(self, sid: int) -> int:
        try:
            return self.conn.local_flow_control_window(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return 0

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        step = self.conn.max_outbound_frame_size
        for i in range(0, len(data), step):
            self.conn.send_data(sid, data[i:i + step], end_stream=end and i + step >= len(data))
        if end and not data:
            self.conn.end_stream(sid)

    def end(self, sid: int) -> None:
        self.conn.end_stream(sid)

    def reset(self, sid: int, code: int = 8) -> None:
        self.conn.reset_stream(sid, code)

    def ack(self, sid: int, n: int) -> None:
        self.conn.acknowledge_received_data(n, sid)

    def out(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> list[tuple]:
        out = []
        for e in self.conn.receive_data(data):
            if isinstance(e, h2.events.RequestReceived):
                hdrs = dict(e.headers)
                out.append(("request", e.stream_id, hdrs[b":method"].decode(),
                            hdrs.get(b":authority", b"").decode()))
            elif isinstance(e, h2.events.ResponseReceived):
                out.append(("response", e.stream_id, int(dict(e.headers)[b":status"])))
            elif isinstance(e, h2.events.DataReceived):
                out.append(("data", e.stream_id, e.data, e.flow_controlled_length))
            elif isinstance(e, h2.events.StreamEnded):
                out.append(("end", e.stream_id))
            elif isinstance(e, h2.events.StreamReset):
                out.append(("reset", e.stream_id, e.error_code))
            elif isinstance(e, h2.events.ConnectionTerminated):
                out.append(("goaway", e.error_code, e.last_stream_id))
        return out


@dataclass
class Direction:
    """One direction of one tunnel: what is sent, and what arrives."""

    payload: bytes
    sent: int = 0
    ended: bool = False
    received: hashlib._Hash = field(default_factory=hashlib.sha256)
    received_bytes: int = 0
    got_end: bool = False


class TunnelWorkload:
    """Both peers send random payloads on every tunnel and half-close; each side
    consumes what it receives in random-sized acknowledgements."""

    def __init__(self, client, server, rng: random.Random, n_tunnels: int, max_payload: int,
                 max_write: int = 1 << 20, half_close_first: str = "client"):
        self.client, self.server, self.rng = client, server, rng
        self.max_write = max_write
        self.half_close_first = half_close_first
        self.up: dict[int, Direction] = {}
        self.down: dict[int, Direction] = {}
        self.sizes = [(rng.randrange(max_payload + 1), rng.randrange(max_payload + 1))
                      for _ in range(n_tunnels)]
        self.accepted: set[int] = set()
        self.resets: list[tuple] = []
        handshake(client, server)
        for up_n, down_n in self.sizes:
            sid = client.open(f"10.0.0.{rng.randrange(1, 250)}:8080")
            self.up[sid] = Direction(rng.randbytes(up_n))
            self.down[sid] = Direction(rng.randbytes(down_n))

    def _flush(self, peer, dirs: dict[int, Direction], may_end: bool) -> None:
        for sid, d in dirs.items():
            if d.ended or sid not in self.accepted:
                continue
            while d.sent < len(d.payload):
                n = min(peer.window(sid), len(d.payload) - d.sent,
                        self.rng.randrange(1, self.max_write + 1))
                if n <= 0:
                    break
                peer.send(sid, d.payload[d.sent:d.sent + n])
                d.sent += n
            if d.sent == len(d.payload) and may_end:
                peer.end(sid)
                d.ended = True

    def _handle(self, peer, events, inbound: dict[int, Direction]) -> None:
        for e in events:
            kind = e[0]
            if kind == "request":
                assert e[2] == "CONNECT"
                peer.respond(e[1], 200)
                self.accepted.add(e[1])
            elif kind == "response":
                assert e[2] == 200, e
                self.accepted.add(e[1])
            elif kind == "data":
                d = inbound[e[1]]
                d.received.update(e[2])
                d.received_bytes += len(e[2])
                peer.ack(e[1], e[3])
            elif kind == "end":
                inbound[e[1]].got_end = True
            elif kind in ("reset", "goaway"):
                self.resets.append(e)

    def step(self, chunker) -> bool:
        client_may_end = self.half_close_first == "client" or all(
            d.got_end for d in self.down.values())
        server_may_end = self.half_close_first == "server" or all(
            d.got_end for d in self.up.values())
        self._flush(self.client, self.up, client_may_end)
        self._flush(self.server, self.down, server_may_end)
        moved = False
        data = self.client.out()
        if data:
            moved = True
            for piece in chunker(data):
                self._handle(self.server, self.server.receive(piece), self.up)
        data = self.server.out()
        if data:
            moved = True
            for piece in chunker(data):
                self._handle(self.client, self.client.receive(piece), self.down)
        return moved

    def run(self, chunker, max_steps: int = 100000) -> None:
        for _ in range(max_steps):
            if not self.step(chunker) and self.done():
                return
        raise AssertionError("tunnel workload did not finish (stalled flow control?)")

    def done(self) -> bool:
        return all(d.got_end for d in self.up.values()) and all(d.got_end for d in self.down.values())

    def check(self) -> None:
        assert not self.resets, self.resets
        for dirs in (self.up, self.down):
            for sid, d in dirs.items():
                assert d.received_bytes == len(d.payload), (sid, d.received_bytes, len(d.payload))
                assert d.received.hexdigest() == hashlib.sha256(d.payload).hexdigest(), sid
                assert d.got_end, sid


def handshake(client, server) -> None:
    """Exchange prefaces and SETTINGS (and their ACKs)."""
    for _ in range(2):
        server.receive(client.out())
        client.receive(server.out())


def open_answered(client, server, status: int = 200, authority: str = "10.0.0.1:80") -> int:
    """Client opens a tunnel, the server answers `status`, the client reads the answer."""
    sid = client.open(authority)
    for e in server.receive(client.out()):
        if e[0] == "request":
            server.respond(e[1], status)
    client.receive(server.out())
    return sid


def random_chunker(rng: random.Random, max_chunk: int):
    def chunker(data: bytes):
        pos = 0
        while pos < len(data):
            n = rng.randrange(1, max_chunk + 1)
            yield data[pos:pos + n]
            pos += n
    return chunker


def whole(data: bytes):
    yield data
