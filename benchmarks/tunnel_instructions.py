"""User-space instructions per new tunnel, or per round trip on one tunnel, for each
proxy: a count that other load on the machine does not disturb (CPU time does, and
hardware counters are often missing in virtual machines).

    python benchmarks/tunnel_instructions.py [--mode meshcore|node] [--tunnels 1000]
    python benchmarks/tunnel_instructions.py [--mode meshcore|node] --round-trips 2000

Both proxies of the mode run under valgrind's callgrind with instrumentation off;
after a warm-up it is switched on (callgrind_control) for --tunnels new tunnels, one
after another, each as e2e_tunnel.py's "new tunnels" measure makes them (a client
connection, one 64-byte round trip through a new CONNECT stream on the warm pooled
connection, close). With --round-trips N, one tunnel is opened instead and N 64-byte
round trips are made on it, as e2e_tunnel.py's round-trip measure makes them (echoed
by the sink): the count is per round trip, both directions through the proxy. Counts repeat to about 1 % from run to run (PYTHONHASHSEED is
fixed); valgrind makes the proxies some 50 times slower, so nothing here is a rate.
Needs valgrind (callgrind, callgrind_control).
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

import e2e_tunnel  # noqa: E402


def _valgrind(out_dir: str, name: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_dir}/{name}.%p.out"]


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, timeout=120, check=False)


async def _tunnels(entry, n: int) -> None:
    msg = b"E" + b"x" * 63
    for _ in range(n):
        reader, writer = await e2e_tunnel._open(entry)
        writer.write(msg)
        await reader.readexactly(63)
        writer.close()
        await writer.wait_closed()


async def _echo_tunnel(entry):
    """One tunnel to the sink's echo: (round_trips(n), close())."""
    reader, writer = await e2e_tunnel._open(entry)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(b"E")
    msg = b"x" * 64

    async def round_trips(n: int) -> None:
        for _ in range(n):
            writer.write(msg)
            await reader.readexactly(64)

    async def close() -> None:
        writer.close()
        await writer.wait_closed()
    return round_trips, close


async def _start_library_pair(sink_port: int, ca_dir: str, out_dir: str) -> tuple:
    inbound_port, outbound_port = e2e_tunnel._free_port(), e2e_tunnel._free_port()
    env = dict(os.environ, PYTHONHASHSEED="0",
               PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = {}
    try:
        for role, listen in (("inbound", inbound_port), ("outbound", outbound_port)):
            p = subprocess.Popen([*_valgrind(out_dir, role), sys.executable, str(HERE / "e2e_tunnel.py"), "proxy",
                                  role, "meshcore", str(listen), str(sink_port), str(inbound_port), ca_dir],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            procs[role] = p
            line = await asyncio.get_running_loop().run_in_executor(None, p.stdout.readline)
            if b"ready" not in line:
                raise RuntimeError(f"meshcore {role} proxy failed to start under valgrind")
    except BaseException:
        for p in procs.values():                # not started: nobody else will end them
            p.kill()
            p.wait()
        raise
    return outbound_port, procs


async def _start_node_pair(sink_port: int, ca_dir: str, out_dir: str) -> tuple:
    import node_proxy
    real = subprocess.Popen

    def popen(argv, **kwargs):              # the node processes only, not their CA helper
        if argv[1:4] == ["-m", "meshcore", "node"]:
            name = argv[argv.index("--node-name") + 1]
            argv = [*_valgrind(out_dir, name), *argv]
            kwargs["env"] = dict(kwargs.get("env") or os.environ, PYTHONHASHSEED="0")
        return real(argv, **kwargs)
    node_proxy.subprocess.Popen = popen
    pair = node_proxy.NodePair(ca_dir)
    try:
        await pair.start(ca_dir)
    except BaseException:
        for p in pair.procs.values():           # not started: nobody else will end them
            p.kill()
            p.wait()
        raise
    finally:
        node_proxy.subprocess.Popen = real
    return (lambda: pair.open(sink_port)), dict(pair.procs)


async def measure(mode: str, n: int, ca_dir: str, out_dir: str, round_trips: bool = False) -> dict[str, float]:
    """Instructions per new tunnel (n tunnels), or per round trip (n round trips on one
    tunnel) when `round_trips`, for each proxy process."""
    sink = await e2e_tunnel._sink_server()
    sink_port = sink.sockets[0].getsockname()[1]
    procs: dict = {}
    tunnel = None
    try:
        start = _start_node_pair if mode == "node" else _start_library_pair
        entry, procs = await start(sink_port, ca_dir, out_dir)
        await _tunnels(entry, 100)              # pools, TLS sessions, buffers, caches
        if round_trips:
            tunnel = await _echo_tunnel(entry)
            work = tunnel[0]
            await work(200)
        else:
            def work(k):
                return _tunnels(entry, k)
        for p in procs.values():
            _control("-i", "on", str(p.pid))
        await work(20)
        for p in procs.values():
            _control("-z", str(p.pid))          # counts from here
        await work(n)
        await asyncio.sleep(0.5)                # the last closes are handled
        result = {}
        for name, p in procs.items():
            _control("-d", str(p.pid))
            dumps = sorted(glob.glob(f"{out_dir}/{name}.{p.pid}.out*"), key=os.path.getmtime)
            text = Path(dumps[-1]).read_text()
            result[name] = int(re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M).group(1)) / n
        return result
    finally:
        if tunnel is not None:
            await tunnel[1]()
        for p in procs.values():
            p.kill()
            p.wait()
        sink.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("meshcore", "node"), default="meshcore",
                        help="the library pair (e2e_tunnel.py's meshcore mode) or two `meshcore node` processes")
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--round-trips", type=int, default=0, metavar="N",
                        help="count per round trip instead: N 64-byte round trips on one tunnel")
    parser.add_argument("--keep", metavar="DIR",
                        help="leave the callgrind files in DIR (for callgrind_annotate) instead of a temporary one")
    args = parser.parse_args()
    n = args.round_trips or args.tunnels
    from meshcore.identity import CertificateAuthority
    import uvloop
    with tempfile.TemporaryDirectory() as ca_dir, tempfile.TemporaryDirectory() as tmp:
        out_dir = args.keep or tmp
        os.makedirs(out_dir, exist_ok=True)
        CertificateAuthority.create("cluster.local").save(ca_dir)
        result = uvloop.run(measure(args.mode, n, ca_dir, out_dir, bool(args.round_trips)))
    for name, per in result.items():
        if args.round_trips:
            print(f"{name}: {per:,.0f} instructions per 64-byte round trip ({args.mode}, {n} round trips on one tunnel)")
        else:
            print(f"{name}: {per:,.0f} instructions per new tunnel ({args.mode}, {n} tunnels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
