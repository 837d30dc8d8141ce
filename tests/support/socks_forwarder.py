"""A loopback TCP port in front of a node proxy's SOCKS5 listener, for load generators
that cannot speak SOCKS5 (wrk, h2load): each accepted connection becomes one SOCKS5
connection through the node, from a workload's address, to one destination, and bytes
are spliced both ways (half-closes passed on).

    python tests/support/socks_forwarder.py --socks 127.n.0.1:15080 --source 127.n.1.1 \\
        --target 127.n.10.2:80 [--listen 127.0.0.1:0]

prints `listening HOST:PORT` once it accepts. Protocol-level splicing (no streams) on
uvloop when it is installed: the forwarder should cost far less than the proxies it is
put in front of, and it is on every measured path through the mesh alike.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys


class _Half(asyncio.Protocol):
    """One side of a spliced pair: what it receives is written to its peer's transport;
    the peer's backlog pauses its reads (flow control both ways)."""

    def __init__(self, on_lost=None):
        self.transport = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []           # received before the peer exists
        self.eof = False
        self.on_lost = on_lost

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self):
        self.eof = True
        if self.peer is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True                                # keep our side open for what the peer still sends

    def connection_lost(self, exc):
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.close()
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self):
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.peer is not None:
            self.peer.transport.resume_reading()

    def join(self, peer: "_Half") -> None:
        self.peer = peer
        for chunk in self.pending:
            peer.transport.write(chunk)
        self.pending.clear()
        if self.eof and peer.transport.can_write_eof():
            peer.transport.write_eof()


class _Socks5Client(_Half):
    """The node side: the SOCKS5 exchange, then a plain half of the splice."""

    def __init__(self, request: bytes, ready: asyncio.Future):
        super().__init__()
        self.request, self.ready, self.buffer = request, ready, b""
        self.stage = 0                              # 0: method reply, 1: connect reply, 2: spliced

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(b"\x05\x01\x00")

    def data_received(self, data):
        if self.stage == 2:
            return super().data_received(data)
        self.buffer += data
        if self.stage == 0 and len(self.buffer) >= 2:
            if self.buffer[:2] != b"\x05\x00":
                return self._fail("SOCKS5: no acceptable method")
            self.buffer, self.stage = self.buffer[2:], 1
            self.transport.write(self.request)
        if self.stage == 1 and len(self.buffer) >= 5:
            need = 4 + {1: 4, 4: 16, 3: 1 + self.buffer[4]}.get(self.buffer[3], 0) + 2
            if len(self.buffer) < need:
                return
            if self.buffer[1] != 0:
                return self._fail(f"SOCKS5 reply {self.buffer[1]}")
            rest, self.buffer, self.stage = self.buffer[need:], b"", 2
            if rest:
                self.pending.append(rest)
            if not self.ready.done():
                self.ready.set_result(None)

    def _fail(self, why: str):
        if not self.ready.done():
            self.ready.set_exception(ConnectionRefusedError(why))
        self.transport.abort()

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(ConnectionRefusedError(f"SOCKS5 connection closed: {exc}"))
        super().connection_lost(exc)


def socks5_request(host: str, port: int) -> bytes:
    try:
        return b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port)
    except OSError:
        name = host.encode()
        return b"\x05\x01\x00\x03" + bytes((len(name),)) + name + struct.pack("!H", port)


class Forwarder:
    def __init__(self, socks: tuple[str, int], source: str, target: tuple[str, int]):
        self.socks, self.source = socks, source
        self.request = socks5_request(*target)
        self.server = None
        self.failed = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accepted, host, port, backlog=1024)
        return self.server.sockets[0].getsockname()[:2]

    def _accepted(self) -> _Half:
        down = _Half()
        asyncio.get_running_loop().create_task(self._connect(down))
        return down

    async def _connect(self, down: _Half) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        try:
            _, up = await loop.create_connection(lambda: _Socks5Client(self.request, ready), *self.socks,
                                                 local_addr=(self.source, 0))
            await ready
        except OSError as exc:
            self.failed += 1
            print(f"forwarder: {exc}", file=sys.stderr, flush=True)
            if down.transport is not None:
                down.transport.abort()
            return
        if down.transport.is_closing():             # the client left during the handshake
            up.transport.close()
            return
        up.join(down)
        down.join(up)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(args) -> None:
    forwarder = Forwarder(_address(args.socks), args.source, _address(args.target))
    host, port = await forwarder.start(*_address(args.listen))
    print(f"listening {host}:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socks", required=True, help="the node's SOCKS5 listener, HOST:PORT")
    parser.add_argument("--source", required=True, help="the workload address connections come from")
    parser.add_argument("--target", required=True, help="the destination asked of the node, HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
