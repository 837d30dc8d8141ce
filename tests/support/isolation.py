"""Many tunnels on shared HBONE connections, each ending its own way, through a real
outbound + inbound pair over mTLS: the machinery of the isolation property test and of
the soak run (benchmarks/soak_tunnels.py).

    client ─TCP─► RelayListener ─pool (HBONE, mTLS)─► HboneServer ─TCP─► scripted upstream

A tunnel's first 5 bytes tell the upstream how to behave: `E` echo until EOF then
half-close; `F k` echo k bytes then close (FIN) while the client may still write;
`R k` echo k bytes then reset. The client side ends the others: a reset from the
client, a client that leaves without half-closing, a window-blocked writer reset.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import struct
from dataclasses import dataclass

from meshcore import Mesh
from meshcore.aio import HboneServer, RelayListener, abort_with_rst
from meshcore.identity import CertificateStore

from helpers import CLIENT, SERVER

CLEAN, UPSTREAM_FIN, UPSTREAM_RST, CLIENT_RST, CLIENT_LEAVES, BLOCKED_RST = (
    "clean", "upstream-fin", "upstream-rst", "client-rst", "client-leaves", "blocked-rst")
ENDINGS = (CLEAN, UPSTREAM_FIN, UPSTREAM_RST, CLIENT_RST, CLIENT_LEAVES, BLOCKED_RST)


@dataclass(frozen=True)
class Tunnel:
    ending: str
    size: int
    seed: int


def _end_early(mode: bytes, writer: asyncio.StreamWriter) -> None:
    if mode == b"F":
        writer.close()
    else:
        abort_with_rst(writer.transport)


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readexactly(5)
        mode, limit = head[:1], struct.unpack("!I", head[1:])[0]
        echoed = 0
        if mode != b"E" and limit == 0:
            return _end_early(mode, writer)
        while data := await reader.read(1 << 16):
            if mode != b"E" and echoed + len(data) >= limit:
                writer.write(data[:limit - echoed])
                await writer.drain()
                return _end_early(mode, writer)
            writer.write(data)
            echoed += len(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):       # the client went away first
        pass
    finally:
        if not writer.transport.is_closing():
            writer.close()


@contextlib.asynccontextmanager
async def proxy_pair(ca, max_streams: int = 16):
    """(outbound listener address, the client Mesh, the HboneServer)."""
    upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    server = HboneServer(CertificateStore(ca).server_context(SERVER), "cluster.local")
    await server.start()
    mesh = Mesh(CLIENT, CertificateStore(ca), max_streams=max_streams)
    outbound = await RelayListener(lambda proto, client: mesh.open_tunnel_protocol(
        "127.0.0.1", up_port, SERVER, proto, via=server.address)).start()
    try:
        yield outbound.address, mesh, server
    finally:
        await outbound.close()
        await mesh.close()
        await server.close()
        upstream.close()


async def run_tunnel(address, t: Tunnel) -> bool | None:
    """Drive one tunnel; for a clean one, True when everything came back intact."""
    rnd = random.Random(t.seed)
    payload = rnd.randbytes(t.size)
    reader, writer = await asyncio.open_connection(*address)
    mode = {UPSTREAM_FIN: b"F", UPSTREAM_RST: b"R"}.get(t.ending, b"E")
    limit = rnd.randint(0, t.size) if mode != b"E" else 0
    writer.write(mode + struct.pack("!I", limit))
    cut = rnd.randint(0, t.size)

    async def send(upto: int) -> None:
        i = 0
        while i < upto:
            n = rnd.choice((1, 7, 1000, 16384, 65536, 300000))
            writer.write(payload[i:min(upto, i + n)])
            i += n
            await writer.drain()

    try:
        if t.ending == CLEAN:
            async def produce():
                await send(t.size)
                writer.write_eof()
            sender = asyncio.ensure_future(produce())
            digest, got = hashlib.sha256(), 0
            while chunk := await reader.read(1 << 16):
                digest.update(chunk)
                got += len(chunk)
            await sender
            return got == t.size and digest.digest() == hashlib.sha256(payload).digest()
        if t.ending in (UPSTREAM_FIN, UPSTREAM_RST):
            sender = asyncio.ensure_future(send(t.size))
            with contextlib.suppress(ConnectionError):
                while await reader.read(1 << 16):
                    pass
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
            return None
        if t.ending == BLOCKED_RST:
            writer.transport.set_write_buffer_limits(high=64 << 20)
            writer.write(rnd.randbytes(6 << 20))      # the echo cannot come back: nobody reads it
            await asyncio.sleep(rnd.uniform(0.05, 0.3))
            abort_with_rst(writer.transport)
            return None
        await send(cut)
        await asyncio.sleep(rnd.uniform(0, 0.05))
        if t.ending == CLIENT_RST:
            abort_with_rst(writer.transport)
        else:                                          # leaves: close without a half-close first
            writer.close()
        return None
    except ConnectionError:
        if t.ending == CLEAN:
            raise
        return None
    finally:
        if not writer.transport.is_closing():
            writer.close()


async def run_batch(address, mesh, tunnels: list[Tunnel], drain_one: bool = False) -> list:
    """All tunnels at once; optionally GOAWAY one pooled connection while they run
    (its tunnels must still finish)."""
    tasks = [asyncio.ensure_future(run_tunnel(address, t)) for t in tunnels]
    if drain_one:
        await asyncio.sleep(0.05)
        if mesh.pool.connections:
            asyncio.ensure_future(random.Random(len(tunnels)).choice(mesh.pool.connections).drain(30))
    return await asyncio.gather(*tasks)
