"""Memory of HBONE connections on the server side, measured in separate processes.

    python benchmarks/connection_memory.py [--connections 1000] [--pending 10000]

A server process runs an HboneServer; a client process opens connections to it. The
server's RSS is read from /proc at each step:
- idle: N established mTLS + HTTP/2 connections (SETTINGS exchanged), no tunnels;
- after: those connections closed (what comes back);
- pending: M TCP connections that never start TLS, at their peak and after the
  handshake timeout has closed them all (what comes back after a burst).
Baseline: the same steps with a plain TLS server (asyncio's create_server with the
same SSLContext), so the cost of meshcore's layers shows beside the TLS stack's own.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ------------------------------------------------------------------ server side

async def serve(mode: str, ca_dir: str, handshake_timeout: float) -> None:
    from meshcore.aio import HboneServer
    from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId
    store = CertificateStore(CertificateAuthority.load(ca_dir))
    ctx = store.server_context(SpiffeId("cluster.local", "bench", "server"))
    if mode == "meshcore":
        async def sink(request):               # reads each tunnel to its end
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            class Sink(asyncio.Protocol):
                def eof_received(self):
                    return False

                def connection_lost(self, exc):
                    done.set_result(None)
            request.accept(Sink())
            await done
        # every stalled handshake comes from one address here: the per-source cap is lifted
        # so that the listener-wide cap is what is measured
        server = HboneServer(ctx, "cluster.local", handshake_timeout=handshake_timeout, handler=sink,
                             max_pending_per_source=1 << 20)
        await server.start("127.0.0.1", 0)
        port = server.address[1]
    else:
        srv = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=handshake_timeout,
            backlog=4096)
        port = srv.sockets[0].getsockname()[1]
    print(port, flush=True)
    await asyncio.Event().wait()


# ------------------------------------------------------------------ client side

async def open_established(mode: str, port: int, n: int, ca_dir: str) -> list:
    """meshcore: HBONE connections (mTLS, HTTP/2 SETTINGS exchanged); tls: mTLS only."""
    from meshcore.aio import dial
    from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId
    store = CertificateStore(CertificateAuthority.load(ca_dir))
    ctx = store.client_context(SpiffeId("cluster.local", "bench", "client"))
    server_id = SpiffeId("cluster.local", "bench", "server")
    loop = asyncio.get_running_loop()

    async def one():
        if mode == "meshcore":
            return await dial("127.0.0.1", port, ctx, (server_id,))
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=ctx,
                                                    server_hostname="")
        return transport
    conns = []
    for i in range(0, n, 50):
        conns += await asyncio.gather(*(one() for _ in range(min(50, n - i))))
    return conns


def open_pending(port: int, m: int) -> list:
    socks = []
    for _ in range(m):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    return socks


async def measure(mode: str, args, ca_dir: str) -> dict:
    server = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--ca-dir", ca_dir,
                               "--handshake-timeout", str(args.handshake_timeout)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        await asyncio.sleep(0.5)
        row = {"mode": mode, "start_kib": rss_kib(server.pid)}
        conns = await open_established(mode, port, args.connections, ca_dir)
        await asyncio.sleep(1.0)
        row["idle_kib"] = rss_kib(server.pid)
        row["per_idle_connection_kib"] = (row["idle_kib"] - row["start_kib"]) / args.connections
        if mode == "meshcore" and args.traffic:
            # one tunnel of `traffic` KiB on each connection, then idle again
            payload = b"x" * (args.traffic * 1024)

            async def carry(conn):
                class Quiet(asyncio.Protocol):
                    pass
                stream, _ = await conn.open_stream("127.0.0.1:9", Quiet)
                stream.write(payload)
                stream.write_eof()
            for i in range(0, len(conns), 50):
                await asyncio.gather(*(carry(c) for c in conns[i:i + 50]))
            await asyncio.sleep(2.0)
            row["per_used_connection_kib"] = (rss_kib(server.pid) - row["start_kib"]) / args.connections
        for c in conns:
            c.close()
        await asyncio.sleep(3.0)
        row["after_close_kib"] = rss_kib(server.pid)
        base = rss_kib(server.pid)
        peak = base
        socks = []
        for _ in range(0, args.pending, 1000):
            socks += open_pending(port, 1000)
            await asyncio.sleep(0.2)
            peak = max(peak, rss_kib(server.pid))
        # at most 1024 handshakes run at once (the listener's cap): the burst drains in rounds
        rounds = -(-args.pending // 1024) if mode == "meshcore" else 1
        end = time.monotonic() + rounds * args.handshake_timeout + 4
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            peak = max(peak, rss_kib(server.pid))
        row["pending_peak_kib"] = peak
        row["after_pending_kib"] = rss_kib(server.pid)
        row["pending_retained_kib"] = row["after_pending_kib"] - base
        for s in socks:
            s.close()
        return row
    finally:
        server.kill()
        server.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--pending", type=int, default=10000)
    p.add_argument("--handshake-timeout", type=float, default=3.0)
    p.add_argument("--traffic", type=int, default=1024,
                   help="KiB each meshcore connection carries (one tunnel) before the 'used' reading")
    p.add_argument("--modes", default="tls,meshcore")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--ca-dir", help=argparse.SUPPRESS)
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop
    if args.serve:
        uvloop.run(serve(args.serve, args.ca_dir, args.handshake_timeout))
        return 0
    from meshcore.identity import CertificateAuthority
    with tempfile.TemporaryDirectory() as ca_dir:
        CertificateAuthority.create("cluster.local").save(ca_dir)
        rows = [uvloop.run(measure(mode, args, ca_dir)) for mode in args.modes.split(",")]
    print(f"{'server':10} {'KiB/idle conn':>14} {'after close':>12} {'pending peak':>13} "
          f"{'kept after burst':>17}   (RSS; {args.connections} idle, {args.pending} pending)")
    for r in rows:
        if "per_used_connection_kib" in r:
            print(f"{r['mode']:10} {r['per_used_connection_kib']:14.1f}  (KiB per idle connection after "
                  f"carrying {args.traffic} KiB)")
        print(f"{r['mode']:10} {r['per_idle_connection_kib']:14.1f} {r['after_close_kib'] - r['start_kib']:+12d} "
              f"{r['pending_peak_kib'] - r['after_close_kib']:+13d} {r['pending_retained_kib']:+17d}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
