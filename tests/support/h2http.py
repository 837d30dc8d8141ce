"""python-hyper's h2 as an independent HTTP/2 peer over real TLS (Python's ssl), for the
request tests: a server whose requests go to scripted handlers, and a client. Both
give flow-control windows back only when told (`auto_ack`), so tests can hold a
sender at its window."""
from __future__ import annotations

import asyncio
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

STREAM_WINDOW = 4 * 1024 * 1024


class Endpoint:
    """h2 over an asyncio (reader, writer) pair: per-stream send queues that wait for
    the windows, trailers sent after the content, events per stream."""

    def __init__(self, reader, writer, client: bool, auto_ack: bool = True):
        self.reader, self.writer = reader, writer
        self.auto_ack = auto_ack
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                   h2.settings.SettingCodes.MAX_FRAME_SIZE: 1024 * 1024,
                                   h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.increment_flow_control_window(64 * 1024 * 1024 - 65535)
        self.outbox: dict[int, bytearray] = {}
        self.after: dict[int, tuple] = {}          # sid -> ("end",) or ("trailers", fields), once sent out
        self.sent: dict[int, int] = {}             # content bytes handed to h2 per stream
        self.streams: dict[int, asyncio.Queue] = {}
        self.unacked: dict[int, int] = {}
        self.on_new_stream = None                  # server: (sid, RequestReceived) -> None
        self.closed = asyncio.get_running_loop().create_future()
        self.flush()

    def queue(self, sid) -> asyncio.Queue:
        return self.streams.setdefault(sid, asyncio.Queue())

    def flush(self):
        for sid, buf in list(self.outbox.items()):
            while buf:
                try:
                    n = min(len(buf), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                except h2.exceptions.H2Error:
                    buf.clear()
                    break
                if n <= 0:
                    break
                self.conn.send_data(sid, bytes(buf[:n]))
                self.sent[sid] = self.sent.get(sid, 0) + n
                del buf[:n]
            if not buf and sid in self.after:
                action = self.after.pop(sid)
                del self.outbox[sid]
                try:
                    if action[0] == "end":
                        self.conn.end_stream(sid)
                    else:
                        self.conn.send_headers(sid, action[1], end_stream=True)
                except h2.exceptions.H2Error:
                    pass
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def headers(self, sid, fields, end=False):
        self.conn.send_headers(sid, [(_b(n), _b(v)) for n, v in fields], end_stream=end)
        self.flush()

    def send(self, sid, data=b"", end=False, trailers=None):
        self.outbox.setdefault(sid, bytearray()).extend(data)
        if trailers is not None:
            self.after[sid] = ("trailers", [(_b(n), _b(v)) for n, v in trailers])
        elif end:
            self.after[sid] = ("end",)
        self.flush()

    def ack(self, sid, n=None):
        """Give back the window of `n` (default: all) received bytes of `sid`."""
        n = self.unacked.get(sid, 0) if n is None else n
        self.unacked[sid] = self.unacked.get(sid, 0) - n
        self.conn.acknowledge_received_data(n, sid)
        self.flush()

    def reset(self, sid, code=0x8):
        self.outbox.pop(sid, None)
        self.after.pop(sid, None)
        self.conn.reset_stream(sid, code)
        self.flush()

    async def run(self):
        try:
            while data := await self.reader.read(1 << 20):
                for e in self.conn.receive_data(data):
                    sid = getattr(e, "stream_id", None)
                    if isinstance(e, h2.events.DataReceived):
                        if self.auto_ack:
                            self.conn.acknowledge_received_data(e.flow_controlled_length, sid)
                        else:
                            self.unacked[sid] = self.unacked.get(sid, 0) + e.flow_controlled_length
                    if isinstance(e, h2.events.RequestReceived) and self.on_new_stream is not None:
                        self.queue(sid)
                        self.on_new_stream(sid, e)
                    elif sid:
                        self.queue(sid).put_nowait(e)
                self.flush()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            for q in self.streams.values():
                q.put_nowait(None)
            if not self.closed.done():
                self.closed.set_result(None)


class Received:
    """What one stream received, gathered from its queue."""

    def __init__(self):
        self.informational: list = []
        self.response = None
        self.body = bytearray()
        self.trailers = None
        self.ended = False
        self.reset = None

    async def collect(self, queue: asyncio.Queue, until=lambda r: r.ended or r.reset is not None):
        while not until(self):
            e = await queue.get()
            if e is None:
                return self
            self.take(e)
        return self

    def take(self, e):
        if isinstance(e, h2.events.InformationalResponseReceived):
            self.informational.append(_status_and_fields(e.headers))
        elif isinstance(e, h2.events.ResponseReceived):
            self.response = _status_and_fields(e.headers)
        elif isinstance(e, h2.events.DataReceived):
            self.body += e.data
        elif isinstance(e, h2.events.TrailersReceived):
            self.trailers = list(e.headers)
        elif isinstance(e, h2.events.StreamEnded):
            self.ended = True
        elif isinstance(e, h2.events.StreamReset):
            self.reset = e.error_code


async def h2_http_server(ctx, handler, *, auto_ack=True):
    """An HTTP/2 server on h2: each request runs `handler(endpoint, sid, request_event,
    queue)` as a task; the queue has the stream's later events (None at the end)."""
    async def on_connection(reader, writer):
        ep = Endpoint(reader, writer, client=False, auto_ack=auto_ack)
        tasks = set()

        def new_stream(sid, e):
            task = asyncio.get_running_loop().create_task(handler(ep, sid, e, ep.queue(sid)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        ep.on_new_stream = new_stream
        await ep.run()
        for task in list(tasks):
            task.cancel()
        writer.close()

    return await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=ctx)


async def h2_http_client(host, port, ctx, *, auto_ack=True) -> Endpoint:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="")
    ep = Endpoint(reader, writer, client=True, auto_ack=auto_ack)
    ep.task = asyncio.get_running_loop().create_task(ep.run())
    return ep


def open_request(ep: Endpoint, method, path, authority="example.com", headers=(), end=False) -> int:
    sid = ep.conn.get_next_available_stream_id()
    ep.queue(sid)
    ep.headers(sid, [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path),
                     *headers], end=end)
    return sid


def _status_and_fields(headers):
    fields = list(headers)
    status = int(dict(fields)[b":status"])
    return status, [(n, v) for n, v in fields if not n.startswith(b":")]


def _b(v) -> bytes:
    return v.encode("latin-1") if isinstance(v, str) else bytes(v)
