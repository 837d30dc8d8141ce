"""End-to-end tunnel benchmark on loopback, all modes in one run.

    client --TCP--> outbound proxy ==tunnel==> inbound proxy --TCP--> sink/echo

modes: direct (no proxies: the client talks to the sink), tls (one mTLS 1.3
connection per client connection, raw bytes), meshcore (HBONE: mTLS + HTTP/2 CONNECT,
pooled, uvloop), h2 (HBONE built on python-hyper's pure-Python h2, same windows).
Each proxy runs in its own process on uvloop. Reported: single- and 8-stream upload
throughput, 64-byte round trips (p50/p99), and the proxies' CPU seconds per GiB.

    pip install ".[bench]" && python benchmarks/e2e_tunnel.py [--seconds 3] [--repeat 5]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("direct", "tls", "meshcore", "h2")
CHUNK = 256 * 1024


# ------------------------------------------------------------------ proxy roles

def _stores(ca_dir: str):
    from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId
    ca = CertificateAuthority.load(ca_dir)
    return (CertificateStore(ca), SpiffeId("cluster.local", "bench", "client"),
            SpiffeId("cluster.local", "bench", "server"))


def _relay_factory(dial):
    """Listener protocol factory: each accepted connection is spliced to a connection
    that `dial(protocol_factory)` opens for it (closed if that fails)."""
    from meshcore.aio import Splice

    def factory():
        splice = Splice()
        made = splice.a.connection_made

        def connection_made(transport):
            made(transport)

            async def connect():
                try:
                    await dial(lambda: splice.b)
                except Exception:
                    transport.abort()
            asyncio.get_running_loop().create_task(connect())
        splice.a.connection_made = connection_made
        return splice.a
    return factory


async def run_proxy(role: str, mode: str, listen: int, target: int, ca_dir: str) -> None:
    from meshcore.aio import HboneServer
    store, client_id, server_id = _stores(ca_dir)
    loop = asyncio.get_running_loop()
    peer = ("127.0.0.1", target + 1000)          # where the inbound proxy listens
    if mode == "meshcore" and role == "inbound":
        server = HboneServer(store.server_context(server_id), "cluster.local")
        await server.start("127.0.0.1", listen)
    elif mode == "meshcore":
        from meshcore import Mesh
        mesh = Mesh(client_id, store)
        await loop.create_server(_relay_factory(
            lambda proto: mesh.open_tunnel_protocol("127.0.0.1", target, server_id, proto, via=peer)),
            "127.0.0.1", listen)
    elif mode == "tls" and role == "inbound":
        await loop.create_server(_relay_factory(
            lambda proto: loop.create_connection(proto, "127.0.0.1", target)),
            "127.0.0.1", listen, ssl=store.server_context(server_id))
    elif mode == "tls":
        ctx = store.client_context(client_id)
        await loop.create_server(_relay_factory(
            lambda proto: loop.create_connection(proto, *peer, ssl=ctx, server_hostname="")),
            "127.0.0.1", listen)
    elif mode == "h2":
        import h2proxy
        if role == "inbound":
            await h2proxy.inbound(store.server_context(server_id), listen, target)
        else:
            await h2proxy.outbound(store.client_context(client_id), listen, peer[1], target)
    print("ready", flush=True)
    await asyncio.Event().wait()


# ----------------------------------------------------------------- the driver

async def _sink_server():
    """Counts an upload of zero bytes ended by a single 0x01 (a raw TLS tunnel cannot
    carry a half-close), replying with the count; or echoes, when the first byte is E."""
    async def handle(reader, writer):
        first = await reader.read(1)
        if first == b"E":                    # echo mode
            while data := await reader.read(65536):
                writer.write(data)
        else:
            total = len(first)
            while data := await reader.read(1 << 20):
                total += len(data)
                if data[-1] == 1:
                    break
            writer.write(b"%d\n" % total)
        await writer.drain()
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _upload(port: int, seconds: float) -> tuple[int, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    chunk = b"\0" * CHUNK
    writer.write(b"U")
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        writer.write(chunk)
        await writer.drain()
    writer.write(b"\x01")
    received = int(await reader.readline())
    elapsed = time.perf_counter() - start
    writer.close()
    return received, elapsed


async def _round_trips(port: int, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(b"E")
    msg = b"x" * 64
    for _ in range(20):                       # warm-up
        writer.write(msg)
        await reader.readexactly(64)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        writer.write(msg)
        await reader.readexactly(64)
        times.append(time.perf_counter() - t)
    writer.close()
    return times


def _cpu_seconds(pids) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(mode: str, seconds: float, ca_dir: str, rtts: int) -> dict:
    sink = await _sink_server()
    sink_port = sink.sockets[0].getsockname()[1]
    procs = []
    port = sink_port
    if mode != "direct":
        inbound_port = _free_port()
        outbound_port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # the proxies find each other at target + 1000: inbound listens there
        target = sink_port
        inbound_port = target + 1000
        for role, listen in (("inbound", inbound_port), ("outbound", outbound_port)):
            p = subprocess.Popen([sys.executable, __file__, "proxy", role, mode, str(listen), str(target), ca_dir],
                                 stdout=subprocess.PIPE, env=env)
            procs.append(p)
            line = await asyncio.get_running_loop().run_in_executor(None, p.stdout.readline)
            if b"ready" not in line:
                raise RuntimeError(f"{mode} {role} proxy failed to start")
        port = outbound_port
    def phase(name):
        print(f"  {mode}: {name}", file=sys.stderr, flush=True)
    limit = seconds * 3 + 60
    async def timed(name, coro):
        phase(name)
        try:
            return await asyncio.wait_for(coro, limit)
        except asyncio.TimeoutError:
            print(f"  {mode}: {name} STALLED (no progress in {limit:.0f} s)", file=sys.stderr, flush=True)
            return None
    try:
        # latency first, on idle proxies (its own 20 warm-up exchanges set up pools)
        pids = [p.pid for p in procs]
        cpu_rtt0 = _cpu_seconds(pids) if pids else 0.0
        times = await timed("round trips (idle proxies)", _round_trips(port, rtts))
        cpu_rtt = (_cpu_seconds(pids) - cpu_rtt0) / (rtts + 20) if pids else 0.0
        await timed("warm-up", _upload(port, 0.3))
        cpu0 = _cpu_seconds(pids) if pids else 0.0
        one = await timed("1 stream", _upload(port, seconds))
        cpu1 = _cpu_seconds(pids) if pids else 0.0
        eight = await timed("8 streams", asyncio.gather(*(_upload(port, seconds) for _ in range(8))))
        times = sorted(times) if times else None
        return {
            "mode": mode,
            "single_MBps": one[0] / one[1] / 1e6 if one else None,
            "multi8_MBps": sum(r for r, _ in eight) / max(e for _, e in eight) / 1e6 if eight else None,
            "rtt_p50_us": statistics.median(times) * 1e6 if times else None,
            "rtt_p99_us": times[int(len(times) * 0.99) - 1] * 1e6 if times else None,
            "cpu_s_per_GiB": (cpu1 - cpu0) / (one[0] / 2**30) if pids and one else 0.0,
            "cpu_us_per_rtt": cpu_rtt * 1e6,
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()
        sink.close()


def _median_row(runs: list[dict]) -> dict:
    """One row of per-metric medians over repeated runs (a stalled run is left out)."""
    row = {"mode": runs[0]["mode"], "runs": len(runs)}
    for key in runs[0]:
        if key != "mode":
            values = [r[key] for r in runs if r[key] is not None]
            row[key] = statistics.median(values) if values else None
    return row


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        import uvloop
        _, _, role, mode, listen, target, ca_dir = sys.argv
        uvloop.run(run_proxy(role, mode, int(listen), int(target), ca_dir))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rtts", type=int, default=2000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the modes this many times, interleaved; report medians")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "e2e.json"))
    args = parser.parse_args()
    from meshcore.identity import CertificateAuthority
    import uvloop
    with tempfile.TemporaryDirectory() as ca_dir:
        CertificateAuthority.create("cluster.local").save(ca_dir)
        modes = args.modes.split(",")
        runs = [uvloop.run(measure(m, args.seconds, ca_dir, args.rtts))
                for _ in range(args.repeat) for m in modes]
    rows = [_median_row([r for r in runs if r["mode"] == m]) for m in modes]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"medians": rows, "runs": runs}, indent=2))
    if args.repeat > 1:
        print(f"medians of {args.repeat} interleaved runs")
    by = {r["mode"]: r for r in rows}
    print(f"| mode | 1 stream MB/s | 8 streams MB/s | 64 B RTT p50 µs | p99 µs | proxy CPU s/GiB | proxy CPU µs/round trip |")
    print("|---|---|---|---|---|---|---|")
    def f(v, fmt):
        return "stalled" if v is None else format(v, fmt)
    for r in rows:
        print(f"| {r['mode']} | {f(r['single_MBps'], '.0f')} | {f(r['multi8_MBps'], '.0f')} | "
              f"{f(r['rtt_p50_us'], '.0f')} | {f(r['rtt_p99_us'], '.0f')} | {r['cpu_s_per_GiB']:.2f} | {r['cpu_us_per_rtt']:.0f} |")

    def ratio(a, b, key):
        return "n/a" if a[key] is None or b[key] is None else f"{a[key] / b[key]:.2f}x"
    if "meshcore" in by:
        m = by["meshcore"]
        for base in ("tls", "h2"):
            if base in by:
                b = by[base]
                print(f"meshcore vs {base}: throughput {ratio(m, b, 'single_MBps')} (1 stream), "
                      f"{ratio(m, b, 'multi8_MBps')} (8 streams); RTT p50 {ratio(m, b, 'rtt_p50_us')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
