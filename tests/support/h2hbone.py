"""An independent HBONE peer for interop tests: python-hyper's h2 over real TLS
(Python's ssl), in both roles. It shares nothing with meshcore but certificates."""
from __future__ import annotations

import asyncio
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def _settings(conn):
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 * 1024 * 1024,
                          h2.settings.SettingCodes.MAX_FRAME_SIZE: 1024 * 1024,
                          h2.settings.SettingCodes.ENABLE_PUSH: 0})
    conn.increment_flow_control_window(16 * 1024 * 1024 - 65535)


class H2Endpoint:
    """h2 over an asyncio (reader, writer) pair with per-stream send queues."""

    def __init__(self, reader, writer, client: bool):
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=True))
        _settings(self.conn)
        self.outbox: dict[int, bytearray] = {}
        self.end_after: set[int] = set()
        self.events: asyncio.Queue = asyncio.Queue()
        self.flush()

    def flush(self):
        for sid, buf in list(self.outbox.items()):
            while buf:
                try:
                    n = min(len(buf), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                    if n <= 0:
                        break
                    self.conn.send_data(sid, bytes(buf[:n]))
                except h2.exceptions.H2Error:       # stream or connection already gone
                    buf.clear()
                    break
                del buf[:n]
            if not buf and sid in self.end_after:
                self.end_after.discard(sid)
                del self.outbox[sid]
                try:
                    self.conn.end_stream(sid)
                except Exception:
                    pass
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def send(self, sid, data=b"", end=False):
        self.outbox.setdefault(sid, bytearray()).extend(data)
        if end:
            self.end_after.add(sid)
        self.flush()

    async def run(self):
        try:
            while data := await self.reader.read(1 << 20):
                for e in self.conn.receive_data(data):
                    if isinstance(e, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    await self.events.put(e)
                self.flush()
        except (ConnectionError, ssl.SSLError):
            pass
        await self.events.put(None)


async def h2_client(host, port, ctx) -> H2Endpoint:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="")
    ep = H2Endpoint(reader, writer, client=True)
    ep.task = asyncio.get_running_loop().create_task(ep.run())
    return ep


class H2TunnelClient:
    """Opens CONNECT tunnels on one h2 connection and collects what each receives."""

    def __init__(self, ep: H2Endpoint):
        self.ep = ep
        self.received: dict[int, bytearray] = {}
        self.status: dict[int, asyncio.Future] = {}
        self.ended: dict[int, asyncio.Future] = {}
        self.resets: dict[int, int] = {}
        self.dispatch = asyncio.get_running_loop().create_task(self._dispatch())

    def open(self, authority: str, headers=()) -> int:
        sid = self.ep.conn.get_next_available_stream_id()
        self.ep.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", authority.encode()), *headers])
        loop = asyncio.get_running_loop()
        self.status[sid], self.ended[sid] = loop.create_future(), loop.create_future()
        self.received[sid] = bytearray()
        self.ep.flush()
        return sid

    async def _dispatch(self):
        while (e := await self.ep.events.get()) is not None:
            sid = getattr(e, "stream_id", None)
            if isinstance(e, h2.events.ResponseReceived):
                self.status[sid].set_result(int(dict(e.headers)[b":status"]))
            elif isinstance(e, h2.events.DataReceived):
                self.received[sid] += e.data
            elif isinstance(e, h2.events.StreamEnded):
                if not self.ended[sid].done():
                    self.ended[sid].set_result("end")
            elif isinstance(e, h2.events.StreamReset):
                self.resets[sid] = e.error_code
                if not self.ended[sid].done():
                    self.ended[sid].set_result("reset")
        for fut in list(self.status.values()) + list(self.ended.values()):
            if not fut.done():
                fut.set_result(None)


async def h2_echo_server(ctx, *, reset_after: int | None = None, status: int = 200):
    """An HBONE server built on h2: every CONNECT is answered `status` and its bytes
    echoed back (half-close echoed too). With reset_after, a stream is reset with
    INTERNAL_ERROR once that many bytes arrived."""
    got: dict[int, int] = {}

    async def on_connection(reader, writer):
        ep = H2Endpoint(reader, writer, client=False)
        task = asyncio.get_running_loop().create_task(ep.run())
        while (e := await ep.events.get()) is not None:
            if isinstance(e, h2.events.RequestReceived):
                ep.conn.send_headers(e.stream_id, [(b":status", str(status).encode())], end_stream=status != 200)
                got[e.stream_id] = 0
                ep.flush()
            elif isinstance(e, h2.events.DataReceived):
                got[e.stream_id] = got.get(e.stream_id, 0) + len(e.data)
                if reset_after is not None and got[e.stream_id] >= reset_after:
                    ep.conn.reset_stream(e.stream_id, 2)     # INTERNAL_ERROR
                    ep.outbox.pop(e.stream_id, None)
                    ep.flush()
                else:
                    ep.send(e.stream_id, e.data)
            elif isinstance(e, h2.events.StreamEnded):
                ep.send(e.stream_id, b"", end=True)
        await task
        writer.close()

    return await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=ctx)
