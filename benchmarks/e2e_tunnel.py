"""End-to-end tunnel benchmark on loopback, all modes in one run.

    client --TCP--> outbound proxy ==tunnel==> inbound proxy --TCP--> sink/echo

modes: direct (no proxies: the client talks to the sink), tls (one mTLS 1.3
connection per client connection, raw bytes), meshcore (HBONE: mTLS + HTTP/2 CONNECT,
pooled, uvloop: the library's outbound and inbound pieces), node (two `meshcore node`
processes: the client goes through node-a's SOCKS5 listener from a workload address,
routing and L4 policy on the way, access logs on), go (HBONE by an independent
compiled peer: Go's net/http HTTP/2 and crypto/tls, built from tests/peers/go; needs
golang-go), rust (the same peer on Rust's h2 crate, tokio and rustls, the stack ztunnel
uses, built from tests/peers/rust; needs cargo and Debian's librust-h2-dev,
librust-tokio-rustls-dev, librust-rustls-pemfile-dev), h2 (HBONE built on python-hyper's
pure-Python h2, same windows).
Each proxy runs in its own process on uvloop. Reported: single- and 8-stream upload
throughput, 64-byte round trips (p50/p99), the proxies' CPU seconds per GiB, and new
tunnels per second (a client connection opened, one round trip, closed: through the
proxies a new CONNECT stream on their warm connection), one and eight at a time.

The proxies of every mode run side by side for the whole run, and the modes take
turns: each round measures every mode once, and the table gives per-metric medians
over the rounds. On a shared 2-core machine speed drifts by 20-30 % within a minute,
so modes measured minutes apart are not comparable; modes measured in turns are.

    pip install ".[bench]" && python benchmarks/e2e_tunnel.py [--seconds 2] [--repeat 5]
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

MODES = ("direct", "tls", "meshcore", "node", "go", "rust", "h2")
CHUNK = 256 * 1024


# ------------------------------------------------------------------ proxy roles

def _stores(ca_dir: str):
    from meshcore.identity import CertificateAuthority, CertificateStore, SpiffeId
    ca = CertificateAuthority.load(ca_dir)
    return (CertificateStore(ca), SpiffeId("cluster.local", "bench", "client"),
            SpiffeId("cluster.local", "bench", "server"))


async def run_proxy(role: str, mode: str, listen: int, target: int, peer_port: int, ca_dir: str) -> None:
    """`target`: the sink's port; `peer_port`: where the inbound proxy listens."""
    from meshcore.aio import HboneServer, RelayListener
    store, client_id, server_id = _stores(ca_dir)
    loop = asyncio.get_running_loop()
    peer = ("127.0.0.1", peer_port)
    if mode == "meshcore" and role == "inbound":
        server = HboneServer(store.server_context(server_id), "cluster.local")
        await server.start("127.0.0.1", listen)
    elif mode == "meshcore":
        from meshcore import Mesh
        mesh = Mesh(client_id, store)
        await RelayListener(lambda proto, client: mesh.open_tunnel_protocol(
            "127.0.0.1", target, server_id, proto, via=peer)).start("127.0.0.1", listen)
    elif mode == "tls" and role == "inbound":
        await RelayListener(lambda proto, client: loop.create_connection(proto, "127.0.0.1", target)
                               ).start("127.0.0.1", listen, ssl=store.server_context(server_id))
    elif mode == "tls":
        ctx = store.client_context(client_id)
        await RelayListener(lambda proto, client: loop.create_connection(
            proto, *peer, ssl=ctx, server_hostname="")).start("127.0.0.1", listen)
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
    # on every loopback address: the node mode reaches it as a workload at 127.n.2.1
    return await asyncio.start_server(handle, "0.0.0.0", 0)


async def _open(entry):
    """A client connection: to 127.0.0.1:entry, or whatever the opener `entry` opens."""
    if isinstance(entry, int):
        return await asyncio.open_connection("127.0.0.1", entry)
    return await entry()


async def _upload(port, seconds: float) -> tuple[int, float]:
    reader, writer = await _open(port)
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


async def _round_trips(port, n: int) -> list[float]:
    reader, writer = await _open(port)
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


async def _new_tunnels(port, seconds: float) -> int:
    """Client connections opened, used for one 64-byte round trip and closed, one after
    another for `seconds`: through a proxy each is a new tunnel on its warm pool."""
    msg = b"E" + b"x" * 63
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        reader, writer = await _open(port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(msg)
        await reader.readexactly(63)
        writer.close()
        await writer.wait_closed()
        done += 1
    return done


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


def _pin_proxy():
    if os.environ.get("E2E_PROXY_CPU"):
        os.sched_setaffinity(0, {int(os.environ["E2E_PROXY_CPU"])})


async def start_compiled_proxies(kind: str, sink_port: int, ca_dir: str) -> tuple[int, list]:
    """An independent compiled HBONE peer (tests/peers/go or tests/peers/rust) as both
    proxies."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
    from compiled_peers import identity_files, peer_binary
    from meshcore.identity import CertificateAuthority
    _, client_id, server_id = _stores(ca_dir)
    ca = CertificateAuthority.load(ca_dir)
    binary = peer_binary(kind)
    files = {"client": identity_files(ca, client_id, Path(ca_dir) / kind),
             "server": identity_files(ca, server_id, Path(ca_dir) / kind)}
    inbound_port, outbound_port = _free_port(), _free_port()
    argvs = [["-mode", "inbound", "-listen", f"127.0.0.1:{inbound_port}"],
             ["-mode", "outbound", "-listen", f"127.0.0.1:{outbound_port}",
              "-peer", f"127.0.0.1:{inbound_port}", "-authority", f"127.0.0.1:{sink_port}",
              "-expect", str(server_id)]]
    procs = []
    for argv, who in zip(argvs, ("server", "client")):
        f = files[who]
        p = subprocess.Popen([str(binary), *argv, "-cert", f["cert"], "-key", f["key"], "-ca", f["ca"]],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=_pin_proxy)
        procs.append(p)
        line = await asyncio.get_running_loop().run_in_executor(None, p.stdout.readline)
        if b"listening" not in line:
            raise RuntimeError(f"{kind} proxy failed to start")
    return outbound_port, procs


async def start_node_proxies(sink_port: int, ca_dir: str) -> tuple:
    """Two `meshcore node` processes (node_proxy.NodePair); the opener goes through
    node-a's SOCKS5 listener from the client workload's address."""
    from node_proxy import NodePair
    pair = await NodePair(ca_dir, preexec=_pin_proxy).start(ca_dir)
    return (lambda: pair.open(sink_port)), list(pair.procs.values())


async def start_proxies(mode: str, sink_port: int, ca_dir: str) -> tuple:
    """What a client connects to for `mode` (a port, or an opener), and the proxy
    processes behind it."""
    if mode == "direct":
        return sink_port, []
    if mode in ("go", "rust"):
        return await start_compiled_proxies(mode, sink_port, ca_dir)
    if mode == "node":
        return await start_node_proxies(sink_port, ca_dir)
    inbound_port, outbound_port = _free_port(), _free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    for role, listen in (("inbound", inbound_port), ("outbound", outbound_port)):
        p = subprocess.Popen([sys.executable, __file__, "proxy", role, mode, str(listen), str(sink_port),
                              str(inbound_port), ca_dir], stdout=subprocess.PIPE, env=env)
        procs.append(p)
        line = await asyncio.get_running_loop().run_in_executor(None, p.stdout.readline)
        if b"ready" not in line:
            raise RuntimeError(f"{mode} {role} proxy failed to start")
    return outbound_port, procs


async def measure(mode: str, port, pids: list, seconds: float, rtts: int) -> dict:
    """One round of one mode: round trips, then 1 stream, then 8 streams."""
    limit = seconds * 3 + 60

    async def timed(name, coro):
        print(f"  {mode}: {name}", file=sys.stderr, flush=True)
        try:
            return await asyncio.wait_for(coro, limit)
        except asyncio.TimeoutError:
            print(f"  {mode}: {name} STALLED (no progress in {limit:.0f} s)", file=sys.stderr, flush=True)
            return None
        except OSError as exc:
            print(f"  {mode}: {name} FAILED ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
            return None
    cpu_rtt0 = _cpu_seconds(pids) if pids else 0.0
    times = await timed("round trips", _round_trips(port, rtts))
    cpu_rtt = (_cpu_seconds(pids) - cpu_rtt0) / (rtts + 20) if pids else 0.0
    cpu0 = _cpu_seconds(pids) if pids else 0.0
    one = await timed("1 stream", _upload(port, seconds))
    cpu1 = _cpu_seconds(pids) if pids else 0.0
    eight = await timed("8 streams", asyncio.gather(*(_upload(port, seconds) for _ in range(8))))
    cpu8 = _cpu_seconds(pids) if pids else 0.0
    opened = opened8 = None
    if mode != "h2":
        # the pure-h2 baseline is a reference for throughput and round trips: its proxy
        # is not built for tunnel churn (and a failure there would take the rounds after)
        opened = await timed("new tunnels", _new_tunnels(port, seconds))
        opened8 = await timed("new tunnels, 8 at a time", asyncio.gather(*(_new_tunnels(port, seconds)
                                                                            for _ in range(8))))
    cpu_t = _cpu_seconds(pids) if pids else 0.0
    times = sorted(times) if times else None
    return {
        "mode": mode,
        "single_MBps": one[0] / one[1] / 1e6 if one else None,
        "multi8_MBps": sum(r for r, _ in eight) / max(e for _, e in eight) / 1e6 if eight else None,
        "rtt_p50_us": statistics.median(times) * 1e6 if times else None,
        "rtt_p99_us": times[int(len(times) * 0.99) - 1] * 1e6 if times else None,
        "cpu_s_per_GiB": (cpu1 - cpu0) / (one[0] / 2**30) if pids and one else 0.0,
        "cpu8_s_per_GiB": (cpu8 - cpu1) / (sum(r for r, _ in eight) / 2**30) if pids and eight else 0.0,
        "cpu_us_per_rtt": cpu_rtt * 1e6,
        "tunnels_per_s": opened / seconds if opened is not None else None,
        "tunnels8_per_s": sum(opened8) / seconds if opened8 else None,
        "cpu_us_per_tunnel": ((cpu_t - cpu8) / (opened + sum(opened8)) * 1e6 if opened and opened8 else None)
        if pids else 0.0,
    }


async def run_rounds(modes: list[str], rounds: int, seconds: float, rtts: int, ca_dir: str) -> list[dict]:
    """Every mode's proxies up at once; then `rounds` rounds, each measuring every mode."""
    sink = await _sink_server()
    sink_port = sink.sockets[0].getsockname()[1]
    setups = {}
    try:
        for mode in modes:
            setups[mode] = await start_proxies(mode, sink_port, ca_dir)
        for port, _ in setups.values():          # warm-up: pools, TLS sessions, buffers
            await asyncio.wait_for(_round_trips(port, 1), 60)
            await asyncio.wait_for(_upload(port, 0.3), 60)
        runs = []
        for _ in range(rounds):
            for mode in modes:
                port, procs = setups[mode]
                runs.append(await measure(mode, port, [p.pid for p in procs], seconds, rtts))
        return runs
    finally:
        for _, procs in setups.values():
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
        _pin_proxy()
        _, _, role, mode, listen, target, peer_port, ca_dir = sys.argv
        uvloop.run(run_proxy(role, mode, int(listen), int(target), int(peer_port), ca_dir))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="per upload measurement")
    parser.add_argument("--rtts", type=int, default=2000, help="round trips per round")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds: each measures every mode once; medians are reported")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "e2e.json"))
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=os.cpu_count() >= 2,
                        help="run the load generator on CPU 0 and every proxy on CPU 1 (default on "
                             "2+ CPUs): steadier numbers, and throughput then reads as what one "
                             "core of proxying can carry")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})
        os.environ["E2E_PROXY_CPU"] = "1"
    from meshcore.identity import CertificateAuthority
    import uvloop
    with tempfile.TemporaryDirectory() as ca_dir:
        CertificateAuthority.create("cluster.local").save(ca_dir)
        modes = args.modes.split(",")
        runs = uvloop.run(run_rounds(modes, args.repeat, args.seconds, args.rtts, ca_dir))
    rows = [_median_row([r for r in runs if r["mode"] == m]) for m in modes]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"medians": rows, "runs": runs}, indent=2))
    print(f"medians of {args.repeat} rounds")
    by = {r["mode"]: r for r in rows}
    print("| mode | 1 stream MB/s | 8 streams MB/s | 64 B RTT p50 µs | p99 µs | proxy CPU s/GiB (1 / 8 streams) "
          "| proxy CPU µs/round trip | new tunnels/s (1 / 8 at a time) | proxy CPU µs/new tunnel |")
    print("|---|---|---|---|---|---|---|---|---|")
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)
    for r in rows:
        print(f"| {r['mode']} | {f(r['single_MBps'], '.0f')} | {f(r['multi8_MBps'], '.0f')} | "
              f"{f(r['rtt_p50_us'], '.0f')} | {f(r['rtt_p99_us'], '.0f')} | {r['cpu_s_per_GiB']:.2f} / "
              f"{r['cpu8_s_per_GiB']:.2f} | {r['cpu_us_per_rtt']:.0f} | {f(r['tunnels_per_s'], '.0f')} / "
              f"{f(r['tunnels8_per_s'], '.0f')} | {f(r['cpu_us_per_tunnel'], '.0f')} |")

    def ratio(a, b, key):
        return "n/a" if a[key] is None or b[key] is None else f"{a[key] / b[key]:.2f}x"
    if "node" in by:
        m = by["node"]
        for base in ("meshcore", "tls", "direct"):
            if base in by:
                b = by[base]
                print(f"node proxies vs {base}: throughput {ratio(m, b, 'single_MBps')} (1 stream), "
                      f"{ratio(m, b, 'multi8_MBps')} (8 streams); RTT p50 {ratio(m, b, 'rtt_p50_us')}")
    if "meshcore" in by:
        m = by["meshcore"]
        for base in ("tls", "go", "rust", "h2"):
            if base in by:
                b = by[base]
                print(f"meshcore vs {base}: throughput {ratio(m, b, 'single_MBps')} (1 stream), "
                      f"{ratio(m, b, 'multi8_MBps')} (8 streams); RTT p50 {ratio(m, b, 'rtt_p50_us')}, "
                      f"p99 {ratio(m, b, 'rtt_p99_us')}; CPU/GiB {ratio(m, b, 'cpu_s_per_GiB')}; "
                      f"new tunnels/s {ratio(m, b, 'tunnels_per_s')} (1), {ratio(m, b, 'tunnels8_per_s')} (8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
