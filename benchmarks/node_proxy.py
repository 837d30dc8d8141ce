"""The node proxy at scale: what configuration size, idle tunnels and new tunnels cost.

    pip install ".[bench]" && python benchmarks/node_proxy.py [--tunnels 6000]
    python benchmarks/node_proxy.py --memory [--repeat 3]     # the memory rows only

- config: 10,000 workloads, 10,000 services, 10,000 policies, as JSON and as YAML:
  load + compile, and a reload of the same size (what a config change costs);
- idle RSS of a node with 1,000 configured workloads (50 of them local, with
  certificates), 1,000 services and 1,000 policies, beside one with a two-workload
  config: read once the node is ready, has no child process (the CA helper that
  signed its certificates has exited) and 2 s have passed; with its anonymous and
  file-backed parts (shared libraries count in RSS);
- RSS per idle tunnel on each node with --tunnels open through SOCKS5 (each tunnel
  has carried one round trip, then sits idle);
- RSS per idle mTLS (HBONE) connection of an HBONE server (connection_memory.py's
  measurement, --connections of them);
- new tunnels per second through a warm pool (open, one round trip, close), one at a
  time and 8 at once.
--memory measures only the three memory rows, each --repeat times (medians printed).
Throughput and round trips through two node proxies are in e2e_tunnel.py (node mode),
side by side with the library pair, TLS and direct TCP.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIR_MESH = """
workloads:
- {{uid: client, name: client, namespace: bench, serviceAccount: client, workloadIps: ["{client}"], protocol: HBONE, node: node-a}}
- {{uid: sink, name: sink, namespace: bench, serviceAccount: server, workloadIps: ["{sink}"], protocol: HBONE, node: node-b,
   labels: {{app: sink}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: sink-callers, namespace: bench}}
spec:
  selector: {{matchLabels: {{app: sink}}}}
  rules: [{{from: [{{source: {{principals: ["cluster.local/ns/bench/sa/client"]}}}}]}}]
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def rss_parts_kib(pid: int) -> dict:
    """RSS, and its anonymous and file-backed (shared libraries, mapped files) parts."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return {"rss": out["Rss"], "anon": out["Anonymous"], "file": out["Rss"] - out["Anonymous"]}


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def ready(address: str) -> bool:
    from meshcore.localmesh import LocalMesh
    return LocalMesh.http_get(address, 15021, "/healthz/ready", timeout=1)[0] == 200


class NodePair:
    """node-a (client workload) and node-b (sink workload) as `meshcore node` processes."""

    def __init__(self, directory: str, config_text: str | None = None, preexec=None, admin: bool = False):
        n = random.randint(100, 250)
        self.dir = Path(directory)
        self.node_a, self.node_b = f"127.{n}.0.1", f"127.{n}.0.2"
        self.client, self.sink = f"127.{n}.1.1", f"127.{n}.2.1"
        self.config = self.dir / f"mesh-{n}.yaml"        # YAML, or one JSON document
        self.config.write_text(config_text or PAIR_MESH.format(client=self.client, sink=self.sink))
        self.preexec = preexec
        self.admin = admin                                # admin (15000) on each node's address
        self.procs: dict[str, subprocess.Popen] = {}

    async def start(self, ca_dir: str, log_level: str = "info") -> "NodePair":
        for name, address in (("node-a", self.node_a), ("node-b", self.node_b)):
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "meshcore", "node", "--config", str(self.config), "--node-name", name,
                 "--address", address, "--ca-dir", ca_dir, "--listen", f"socks5={address}:15080",
                 "--listen", f"admin={address}:15000" if self.admin else "admin=off", "--listen", "metrics=off",
                 "--log-level", log_level],
                stdout=subprocess.DEVNULL, stderr=open(self.dir / f"{name}.log", "wb"), preexec_fn=self.preexec,
                cwd=self.dir)
        deadline = time.monotonic() + 60
        for address in (self.node_a, self.node_b):
            while not ready(address):
                if time.monotonic() > deadline:
                    raise RuntimeError("node proxies did not become ready: "
                                       + (self.dir / "node-a.log").read_text()[-800:])
                await asyncio.sleep(0.05)
        return self

    async def open(self, port: int):
        """A connection from the client workload to sink:port through node-a's SOCKS5."""
        reader, writer = await asyncio.open_connection(self.node_a, 15080, local_addr=(self.client, 0))
        writer.write(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(self.sink) + struct.pack("!H", port))
        reply = await reader.readexactly(2 + 10)
        if reply[3] != 0:
            raise ConnectionError(f"SOCKS5 reply {reply[3]}")
        return reader, writer

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


# ------------------------------------------------------------------ configuration scale

def scale_config(n: int, local_node: str = "", local: int = 0) -> dict:
    workloads, services, policies = [], [], []
    for i in range(n):
        ns = f"ns{i % 100}"
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        workloads.append({"uid": f"c//v1/Pod/{ns}/w{i}", "name": f"w{i}", "namespace": ns,
                          "serviceAccount": f"sa{i % 50}", "workloadIps": [ip], "protocol": "HBONE",
                          "node": local_node if i < local else f"node{i % 20}",
                          "services": {f"{ns}/svc{i}.{ns}.svc.cluster.local": {"80": 8080}}})
        services.append({"name": f"svc{i}", "namespace": ns, "hostname": f"svc{i}.{ns}.svc.cluster.local",
                         "vips": [f"/100.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"], "ports": {"80": 8080}})
        policies.append({"name": f"p{i}", "namespace": ns, "scope": "Namespace", "action": "Allow",
                         "dryRun": False, "rules": [[[{"principals": [
                             {"Exact": f"cluster.local/ns/ns{(i + 1) % 100}/sa/sa{i % 50}"}]}],
                             [{"destinationPorts": [8080, 9090]}]]]})
    return {"workloads": workloads, "services": services, "policies": policies}


def measure_config(n: int, directory: Path) -> dict:
    import yaml
    data = scale_config(n)
    out = {}
    for kind in ("json", "yaml"):
        path = directory / f"scale.{kind}"
        path.write_text(json.dumps(data) if kind == "json" else yaml.safe_dump(data))
        # a fresh process each: the first load pays for what a real start pays for
        code = ("import sys, time, json\nfrom meshcore.sources.config import parse\n"
                "from meshcore.state import MeshStore\n"
                "t=time.perf_counter(); p=parse([sys.argv[1]]); t1=time.perf_counter(); c=MeshStore(); "
                "c.replace('files', p.resources, atomic=True); t2=time.perf_counter(); p=parse([sys.argv[1]]); "
                "c.replace('files', p.resources, atomic=True); t3=time.perf_counter()\n"
                "print(json.dumps({'load': t1-t, 'compile': t2-t1, 'reload': t3-t2}))")
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=directory)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        out[kind] = json.loads(proc.stdout)
        out[kind]["bytes"] = path.stat().st_size
    return out


# ------------------------------------------------------------------ the data path

def echo_sink(address: str) -> tuple[subprocess.Popen, int]:
    """The sink workload in its own process (each idle tunnel holds a socket there)."""
    with socket.socket() as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "meshcore.localworkload", "--echo", f"{address}:{port}"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the echo sink did not start")


async def idle_tunnels(pair: NodePair, port: int, count: int) -> dict:
    await asyncio.sleep(1.0)
    before = {n: rss_kib(p.pid) for n, p in pair.procs.items()}
    # 64 opening at once: on a loaded 2-core machine a burst of 200 can overflow node-b's
    # accept backlog while the pool dials; an open that fails anyway is tried again
    slots = asyncio.Semaphore(64)
    opened = []
    retried = 0

    async def one():
        nonlocal retried
        async with slots:
            for attempt in range(3):
                try:
                    reader, writer = await pair.open(port)
                    writer.write(b"x")
                    await reader.readexactly(1)
                    opened.append(writer)
                    return
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    if attempt == 2:
                        raise
                    retried += 1
                    await asyncio.sleep(0.5)
    await asyncio.gather(*(one() for _ in range(count)))
    await asyncio.sleep(2.0)
    after = {n: rss_kib(p.pid) for n, p in pair.procs.items()}
    for w in opened:
        w.close()
    return {n: (after[n] - before[n]) / count for n in before} | {"open": len(opened), "retried": retried}


async def new_tunnels(pair: NodePair, port: int, seconds: float, parallel: int) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker():
        nonlocal done
        while time.monotonic() < deadline:
            reader, writer = await pair.open(port)
            writer.write(b"x")
            await reader.readexactly(1)
            writer.close()
            done += 1
    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return done / (time.monotonic() - started)


async def idle_rss(ca_dir: str, directory: Path, workloads: int) -> dict:
    """MiB: {label: {rss, anon, file}} of node-a, idle."""
    out = {}
    for label, text in (("2 workloads, 1 policy", None),
                        (f"{workloads} workloads, {workloads} services, {workloads} policies", "scale")):
        pair = NodePair(str(directory), None)
        if text == "scale":
            data = scale_config(workloads, "node-a", 50)
            prefix = pair.node_a.rsplit(".", 2)[0]
            for i, w in enumerate(data["workloads"][:50]):      # local ones: addresses it can listen on
                w["workloadIps"] = [f"{prefix}.5.{i + 1}"]
            pair.config.write_text(json.dumps(data))
        await pair.start(ca_dir, log_level="warn")
        pid = pair.procs["node-a"].pid
        await asyncio.sleep(2.0)
        deadline = time.monotonic() + 60
        while children(pid) and time.monotonic() < deadline:   # the CA helper exits when idle
            await asyncio.sleep(0.5)
        out[label] = {k: v / 1024 for k, v in rss_parts_kib(pid).items()} | {"children": len(children(pid))}
        pair.stop()
    return out


async def idle_connections(connections: int, ca_dir: str) -> float:
    """KiB per idle HBONE connection on a meshcore HBONE server (connection_memory.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import connection_memory
    args = argparse.Namespace(connections=connections, pending=0, handshake_timeout=3.0, traffic=0)
    row = await connection_memory.measure("meshcore", args, ca_dir)
    return row["per_idle_connection_kib"]


def median(values: list[float]) -> float:
    return statistics.median(values)


async def run_memory(args) -> dict:
    """The memory rows only, each `args.repeat` times."""
    from meshcore.identity import CertificateAuthority
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca_dir = str(directory / "ca")
        CertificateAuthority.create("cluster.local").save(ca_dir)
        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat}: idle RSS ...", file=sys.stderr, flush=True)
            row = {"idle_rss_MiB": await idle_rss(ca_dir, directory, args.workloads)}
            if args.tunnels:
                print(f"round {r + 1}/{args.repeat}: {args.tunnels} idle tunnels ...", file=sys.stderr, flush=True)
                pair = NodePair(str(directory))
                sink, port = echo_sink(pair.sink)
                await pair.start(ca_dir, log_level="warn")
                try:
                    await new_tunnels(pair, port, 0.5, 1)         # warm: pool, certificates
                    row["idle_tunnel_KiB"] = await idle_tunnels(pair, port, args.tunnels)
                finally:
                    pair.stop()
                    sink.terminate()
                    sink.wait()
            if args.connections:
                print(f"round {r + 1}/{args.repeat}: {args.connections} idle connections ...", file=sys.stderr,
                      flush=True)
                row["idle_connection_KiB"] = await idle_connections(args.connections, ca_dir)
            rounds.append(row)
    return {"rounds": rounds}


async def run(args) -> dict:
    from meshcore.identity import CertificateAuthority
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca_dir = str(directory / "ca")
        CertificateAuthority.create("cluster.local").save(ca_dir)
        print("configuration load and reload ...", file=sys.stderr, flush=True)
        results["config"] = measure_config(args.config_size, directory)
        print("idle RSS ...", file=sys.stderr, flush=True)
        results["idle_rss_MiB"] = await idle_rss(ca_dir, directory, args.workloads)
        pair = NodePair(str(directory))
        sink, port = echo_sink(pair.sink)
        await pair.start(ca_dir, log_level="warn")
        try:
            await new_tunnels(pair, port, 0.5, 1)                 # warm: pool, certificates
            print("new tunnels per second ...", file=sys.stderr, flush=True)
            results["new_tunnels_per_s"] = {str(k): await new_tunnels(pair, port, args.seconds, k) for k in (1, 8)}
            print(f"{args.tunnels} idle tunnels ...", file=sys.stderr, flush=True)
            results["idle_tunnel_KiB"] = await idle_tunnels(pair, port, args.tunnels)
        finally:
            pair.stop()
            sink.terminate()
            sink.wait()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # every tunnel here has the same pool key (one client workload, one destination): the
    # pool carries at most 64 connections x 100 streams = 6,400 of them at once
    parser.add_argument("--tunnels", type=int, default=6000, help="idle tunnels held open at once (at most 6400)")
    parser.add_argument("--workloads", type=int, default=1000, help="configured workloads for the idle RSS")
    parser.add_argument("--config-size", type=int, default=10000,
                        help="workloads, services and policies for the load/reload timing")
    parser.add_argument("--seconds", type=float, default=3.0, help="per new-tunnel measurement")
    parser.add_argument("--memory", action="store_true",
                        help="only the memory rows: idle RSS, per idle tunnel, per idle mTLS connection")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the memory rows with --memory (medians)")
    parser.add_argument("--connections", type=int, default=1000,
                        help="idle mTLS connections for the per-connection row with --memory (0: skip)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "node_proxy.json"))
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))     # the client side of every tunnel
    if args.tunnels + 1024 > hard:
        parser.error(f"--tunnels {args.tunnels} needs more file descriptors than the limit ({hard})")
    import uvloop
    results = uvloop.run(run_memory(args) if args.memory else run(args))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    if args.memory:
        print_memory(results["rounds"], args)
        return 0
    c = results["config"]
    print("| measure | value |\n|---|---|")
    for kind in ("json", "yaml"):
        r = c[kind]
        print(f"| {args.config_size:,} workloads + services + policies, {kind.upper()} ({r['bytes'] / 1e6:.1f} MB): "
              f"load + compile | {r['load'] + r['compile']:.2f} s |")
        print(f"| same, reload | {r['reload']:.2f} s |")
    for label, mib in results["idle_rss_MiB"].items():
        print(f"| node RSS idle, {label} | {mib['rss']:.1f} MiB (anonymous {mib['anon']:.1f}, "
              f"file-backed {mib['file']:.1f}) |")
    t = results["idle_tunnel_KiB"]
    print(f"| RSS per idle tunnel ({t['open']:,} open), node-a / node-b | {t['node-a']:.1f} / {t['node-b']:.1f} KiB |")
    for k, rate in results["new_tunnels_per_s"].items():
        print(f"| new tunnels per second through a warm pool, {k} at a time | {rate:.0f} |")
    return 0


def print_memory(rounds: list[dict], args) -> None:
    n = len(rounds)
    print(f"| measure (median of {n}; all rounds) | value |\n|---|---|")
    for label in rounds[0]["idle_rss_MiB"]:
        rows = [r["idle_rss_MiB"][label] for r in rounds]
        parts = {k: median([row[k] for row in rows]) for k in ("rss", "anon", "file")}
        every = ", ".join(f"{row['rss']:.1f}" for row in rows)
        print(f"| node RSS idle, {label} | {parts['rss']:.1f} MiB (anonymous {parts['anon']:.1f}, "
              f"file-backed {parts['file']:.1f}; {every}) |")
    if "idle_tunnel_KiB" in rounds[0]:
        for side in ("node-a", "node-b"):
            values = [r["idle_tunnel_KiB"][side] for r in rounds]
            print(f"| RSS per idle tunnel ({args.tunnels:,} open), {side} | {median(values):.1f} KiB "
                  f"({', '.join(f'{v:.1f}' for v in values)}) |")
    if "idle_connection_KiB" in rounds[0]:
        values = [r["idle_connection_KiB"] for r in rounds]
        print(f"| RSS per idle mTLS connection ({args.connections:,} open, HBONE server) | {median(values):.1f} KiB "
              f"({', '.join(f'{v:.1f}' for v in values)}) |")


if __name__ == "__main__":
    sys.exit(main())
