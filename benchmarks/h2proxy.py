"""The pure-h2 baseline for e2e_tunnel.py: HBONE outbound/inbound proxies built on
python-hyper's h2 with meshcore's windows (4 MiB stream, 16 MiB connection, 1 MiB
frames), relaying with the same backpressure rule (pause TCP reads while more than
one window is queued).
"""
import asyncio

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

PAUSE_ABOVE = 1 << 20


class TcpSide(asyncio.Protocol):
    def __init__(self, h2side, sid=None):
        self.h2side, self.sid, self.transport = h2side, sid, None
        self.early = []          # tunnel data that arrived before this TCP side connected

    def connection_made(self, transport):
        self.transport = transport
        for data in self.early:
            transport.write(data)
        self.early = []

    def data_received(self, data):
        self.h2side.send(self.sid, data)

    def eof_received(self):
        self.h2side.end(self.sid)
        return True

    def connection_lost(self, exc):
        if self.h2side.tcp.get(self.sid) is self:
            del self.h2side.tcp[self.sid]


class H2Side(asyncio.Protocol):
    def __init__(self, client, on_request=None):
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
        self.on_request = on_request
        self.tcp = {}
        self.pending = {}
        self.ending = set()
        self.opened = {}
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20,
                                   h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
        self.conn.increment_flow_control_window((16 << 20) - 65535)
        self.write()

    def write(self):
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def data_received(self, data):
        for e in self.conn.receive_data(data):
            if isinstance(e, h2.events.RequestReceived):
                self.on_request(self, e.stream_id)
            elif isinstance(e, h2.events.ResponseReceived):
                fut = self.opened.pop(e.stream_id, None)
                if fut:
                    fut.set_result(None)
            elif isinstance(e, h2.events.DataReceived):
                tcp = self.tcp.get(e.stream_id)
                if tcp and tcp.transport:
                    tcp.transport.write(e.data)
                elif tcp:
                    tcp.early.append(e.data)
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                tcp = self.tcp.get(e.stream_id)
                if tcp and tcp.transport and tcp.transport.can_write_eof():
                    tcp.transport.write_eof()
            elif isinstance(e, h2.events.StreamReset):
                tcp = self.tcp.pop(e.stream_id, None)
                if tcp and tcp.transport:
                    tcp.transport.abort()
        self.flush()

    def send(self, sid, data):
        self.pending.setdefault(sid, bytearray()).extend(data)
        self.flush()

    def end(self, sid):
        self.ending.add(sid)
        self.flush()

    def flush(self):
        for sid, buf in list(self.pending.items()):
            try:
                while buf:
                    n = min(len(buf), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                    if n <= 0:
                        break
                    self.conn.send_data(sid, bytes(buf[:n]))
                    del buf[:n]
            except h2.exceptions.H2Error:
                buf.clear()
            tcp = self.tcp.get(sid)
            if tcp and tcp.transport:
                if len(buf) > PAUSE_ABOVE:
                    tcp.transport.pause_reading()
                else:
                    tcp.transport.resume_reading()
        for sid in list(self.ending):
            if not self.pending.get(sid):
                self.ending.discard(sid)
                self.pending.pop(sid, None)
                try:
                    self.conn.end_stream(sid)
                except h2.exceptions.H2Error:
                    pass
        self.write()


async def inbound(ctx, listen, target):
    loop = asyncio.get_running_loop()

    class Dialed(TcpSide):
        def connection_made(self, transport):
            # the 200 before any byte of the upstream's: an echo may answer the early
            # data written just below before the dial's own task runs again
            self.h2side.conn.send_headers(self.sid, [(b":status", b"200")])
            super().connection_made(transport)
            self.h2side.flush()

    def on_request(side, sid):
        tcp = Dialed(side, sid)
        side.tcp[sid] = tcp          # at once: data may arrive before the dial completes
        loop.create_task(loop.create_connection(lambda: tcp, "127.0.0.1", target))
    await loop.create_server(lambda: H2Side(False, on_request), "127.0.0.1", listen, ssl=ctx)


async def outbound(ctx, listen, via_port, target):
    loop = asyncio.get_running_loop()
    _, side = await loop.create_connection(lambda: H2Side(True), "127.0.0.1", via_port, ssl=ctx, server_hostname="")

    class Accepted(TcpSide):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()
            sid = side.conn.get_next_available_stream_id()
            self.sid = sid
            side.tcp[sid] = self
            side.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{target}".encode())])
            fut = side.opened[sid] = loop.create_future()
            fut.add_done_callback(lambda _: transport.resume_reading())
            side.write()
    await loop.create_server(lambda: Accepted(side), "127.0.0.1", listen)
