"""`meshcore demo`: a real HBONE tunnel on loopback, end to end.

Until the node proxy exists this is the smaller demo: a client and an HBONE
server, both driving the compiled HTTP/2 core over real TCP sockets on
127.0.0.1, carry random payloads to a TCP echo workload and back, and show a
refused tunnel (503). mTLS arrives with the identity module; the node proxy
replaces this with a whole local mesh.

The asyncio glue here is deliberately minimal (no pool, no keepalive); the
product's transport lives in meshcore.aio.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

from meshcore import H2Connection
from meshcore import events as ev


class _Tunnel:
    def __init__(self, endpoint: "_Endpoint", stream_id: int):
        self.endpoint, self.stream_id = endpoint, stream_id
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.window_open = asyncio.Event()
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def write(self, data: bytes, end: bool = False) -> None:
        conn = self.endpoint.conn
        view = memoryview(data)
        while view:
            n = min(conn.available_window(self.stream_id), len(view))
            if n == 0:
                self.window_open.clear()
                await self.window_open.wait()
                continue
            conn.send_data(self.stream_id, view[:n])
            view = view[n:]
            self.endpoint.flush()
        if end:
            conn.end_stream(self.stream_id)
            self.endpoint.flush()

    async def read(self) -> bytes | None:
        """Next chunk, or None at end of stream."""
        return await self.inbox.get()


class _Endpoint(asyncio.Protocol):
    def __init__(self, client: bool, on_request=None):
        self.conn = H2Connection(client=client)
        self.tunnels: dict[int, _Tunnel] = {}
        self.on_request = on_request
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        for e in self.conn.receive_data(data):
            tunnel = self.tunnels.get(getattr(e, "stream_id", 0))
            if isinstance(e, ev.TunnelRequested):
                tunnel = self.tunnels[e.stream_id] = _Tunnel(self, e.stream_id)
                asyncio.get_running_loop().create_task(self.on_request(tunnel, e.authority))
            elif isinstance(e, (ev.TunnelAccepted, ev.TunnelRefused)) and tunnel:
                tunnel.status.set_result(e.status)
            elif isinstance(e, ev.DataReceived) and tunnel:
                tunnel.inbox.put_nowait(bytes(e.data))
                self.conn.acknowledge_received_data(e.stream_id, len(e.data))
            elif isinstance(e, (ev.StreamEnded, ev.StreamReset)) and tunnel:
                tunnel.inbox.put_nowait(None)
            elif isinstance(e, ev.WindowOpened):
                for t in ([tunnel] if tunnel else self.tunnels.values()):
                    t.window_open.set()
        self.flush()

    def open(self, authority: str) -> _Tunnel:
        sid = self.conn.open_tunnel(authority, [("forwarded", 'for="127.0.0.1"')])
        tunnel = self.tunnels[sid] = _Tunnel(self, sid)
        self.flush()
        return tunnel


async def _serve_tunnel(tunnel: _Tunnel, authority: str) -> None:
    """HBONE server side: dial the workload named by :authority, relay both ways."""
    host, _, port = authority.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 10)
    except (OSError, asyncio.TimeoutError, ValueError):
        tunnel.endpoint.conn.refuse_tunnel(tunnel.stream_id, 503)
        tunnel.endpoint.flush()
        return
    tunnel.endpoint.conn.accept_tunnel(tunnel.stream_id)
    tunnel.endpoint.flush()

    async def upstream_to_tunnel():
        while data := await reader.read(65536):
            await tunnel.write(data)
        await tunnel.write(b"", end=True)

    async def tunnel_to_upstream():
        while (chunk := await tunnel.read()) is not None:
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    await asyncio.gather(upstream_to_tunnel(), tunnel_to_upstream())
    writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    writer.close()


async def run_demo(out=print, payload_sizes=(1, 1000, 1 << 20, 8 << 20)) -> bool:
    loop = asyncio.get_running_loop()
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    hbone = await loop.create_server(lambda: _Endpoint(False, _serve_tunnel), "127.0.0.1", 0)
    hbone_port = hbone.sockets[0].getsockname()[1]
    out(f"workload  tcp echo server        127.0.0.1:{echo_port}")
    out(f"inbound   HBONE server (HTTP/2)  127.0.0.1:{hbone_port}  (plaintext until the identity module lands)")
    _, client = await loop.create_connection(lambda: _Endpoint(True), "127.0.0.1", hbone_port)
    ok = True

    async def round_trip(size: int) -> None:
        nonlocal ok
        payload = os.urandom(size)
        started = time.perf_counter()
        tunnel = client.open(f"127.0.0.1:{echo_port}")
        status = await tunnel.status
        writer = asyncio.ensure_future(tunnel.write(payload, end=True))
        received = hashlib.sha256()
        got = 0
        while (chunk := await tunnel.read()) is not None:
            received.update(chunk)
            got += len(chunk)
        await writer
        same = received.digest() == hashlib.sha256(payload).digest()
        ok = ok and status == 200 and same and got == size
        ms = (time.perf_counter() - started) * 1000
        out(f"tunnel {tunnel.stream_id:>2}  CONNECT 127.0.0.1:{echo_port} -> {status}  "
            f"{size:>8} bytes there and back in {ms:7.1f} ms  sha256 {'match' if same else 'MISMATCH'}")

    await asyncio.gather(*(round_trip(size) for size in payload_sizes))
    refused = client.open("127.0.0.1:1")
    status = await refused.status
    out(f"tunnel {refused.stream_id:>2}  CONNECT 127.0.0.1:1 -> {status}  (nothing listens there: refused)")
    ok = ok and status == 503
    out(f"{len(payload_sizes) + 1} tunnels multiplexed on one HTTP/2 connection: "
        f"{'all as expected' if ok else 'UNEXPECTED RESULTS'}")
    client.transport.close()
    hbone.close()
    echo.close()
    return ok


def main() -> int:
    return 0 if asyncio.run(run_demo()) else 1


if __name__ == "__main__":
    sys.exit(main())
