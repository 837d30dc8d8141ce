"""What a configuration reload costs the traffic a node proxy carries.

    pip install ".[bench]" && python benchmarks/node_reload.py [--size 10000] [--reloads 1000]

Two `meshcore node` processes (node_proxy.NodePair) carry tunnels from a client
workload to an echo sink.

- stall: with --size workloads, services and policies in force (one JSON file), an
  established tunnel's 64-byte round trips, first for a few seconds without reloads,
  then while both nodes reload the whole file (SIGHUP, one policy changed each time):
  p50/p99/max of each phase;
- churn: a small configuration reloaded --reloads times (SIGHUP, alternating between
  two versions, so each reload applies a change) while 50 tunnels stay open and new
  ones open and close; RSS and the cyclic GC's tracked objects of node-b, sampled
  every tenth of the run and once more after traffic stops.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from node_proxy import NodePair, echo_sink, rss_kib, scale_config  # noqa: E402


def pair_config(pair: NodePair, n: int, version: int) -> str:
    """The pair's client and sink, its policy, and n of each scale resource; `version`
    changes one policy so that each reload applies a change."""
    data = scale_config(n) if n else {"workloads": [], "services": [], "policies": []}
    data["workloads"] += [
        {"uid": "client", "name": "client", "namespace": "bench", "serviceAccount": "client",
         "workloadIps": [pair.client], "protocol": "HBONE", "node": "node-a"},
        {"uid": "sink", "name": "sink", "namespace": "bench", "serviceAccount": "server",
         "workloadIps": [pair.sink], "protocol": "HBONE", "node": "node-b", "labels": {"app": "sink"}}]
    data["policies"] += [
        {"name": "sink-callers", "namespace": "bench", "scope": "Namespace", "action": "Allow",
         "rules": [[[{"principals": [{"Exact": "cluster.local/ns/bench/sa/client"}]}]]]},
        {"name": "changing", "namespace": "other", "scope": "Namespace", "action": "Allow",
         "rules": [[[{"principals": [{"Exact": f"cluster.local/ns/other/sa/v{version}"}]}]]]}]
    return json.dumps(data)


def rewrite(path: Path, text: str) -> None:
    """As a ConfigMap update does: the node's file watcher never sees a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def summary(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"count": len(s), "p50_us": round(statistics.median(s) * 1e6),
            "p99_us": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6), "max_us": round(s[-1] * 1e6)}


def holdings(pair: NodePair, node: str) -> dict:
    from meshcore.localmesh import LocalMesh
    address = pair.node_a if node == "node-a" else pair.node_b
    status, body = LocalMesh.http_get(address, 15000, "/debug/holdings")
    return json.loads(body) if status == 200 else {}


def reload_count(pair: NodePair, node: str) -> int:
    text = (pair.dir / f"{node}.log").read_text(errors="replace")
    return text.count(" applied (SIGHUP)")


async def stall(ca_dir: str, directory: Path, size: int, seconds: float) -> dict:
    pair = NodePair(str(directory), admin=True)
    pair.config.write_text(pair_config(pair, size, 0))
    sink, port = echo_sink(pair.sink)
    try:
        await pair.start(ca_dir)                     # info: each applied reload is logged
        reader, writer = await pair.open(port)
        payload = b"x" * 64

        async def round_trips(duration: float) -> list[float]:
            out = []
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                t = time.perf_counter()
                writer.write(payload)
                await reader.readexactly(64)
                out.append(time.perf_counter() - t)
            return out
        quiet = await round_trips(seconds)
        version, reloads = 0, 0
        during: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < seconds * 3:
            version += 1
            rewrite(pair.config, pair_config(pair, size, version))
            for p in pair.procs.values():
                os.kill(p.pid, signal.SIGHUP)
            before = reload_count(pair, "node-b")
            # round trips until node-b has applied it (the reload's whole duration)
            while reload_count(pair, "node-b") == before and time.monotonic() - started < seconds * 6:
                during += await round_trips(0.05)
            reloads += 1
        writer.close()
        return {"workloads": size + 2, "reloads": reloads, "without_reload": summary(quiet),
                "during_reloads": summary(during)}
    finally:
        pair.stop()
        sink.kill()


async def churn(ca_dir: str, directory: Path, reloads: int) -> dict:
    pair = NodePair(str(directory), admin=True)
    pair.config.write_text(pair_config(pair, 0, 0))
    sink, port = echo_sink(pair.sink)
    series = []
    try:
        await pair.start(ca_dir)
        node_b = pair.procs["node-b"]

        def sample(label):
            h = holdings(pair, "node-b")
            series.append({"at": label, "rss_mib": round(rss_kib(node_b.pid) / 1024, 1),
                           "gc_tracked": h.get("gc_tracked_objects"), "gc_frozen": h.get("gc_frozen_objects"),
                           "tunnels": h.get("inbound_tunnels")})
        held = [await pair.open(port) for _ in range(50)]
        stop = asyncio.Event()
        opened, failures = 0, []

        async def opener():
            nonlocal opened
            while not stop.is_set():
                try:
                    reader, writer = await pair.open(port)
                    writer.write(b"x")
                    await reader.readexactly(1)
                    writer.close()
                    opened += 1
                except (OSError, asyncio.IncompleteReadError) as exc:
                    failures.append(repr(exc))
        workers = [asyncio.ensure_future(opener()) for _ in range(2)]
        await asyncio.sleep(1.0)
        sample("start")
        step = max(1, reloads // 10)
        for i in range(1, reloads + 1):
            rewrite(pair.config, pair_config(pair, 0, i))
            os.kill(node_b.pid, signal.SIGHUP)
            await asyncio.sleep(0.02)
            if i % step == 0:
                sample(i)
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        for _, w in held:
            w.close()
        await asyncio.sleep(2.0)
        sample("after traffic")
        return {"reloads_sent": reloads, "reloads_applied": reload_count(pair, "node-b"),
                "tunnels_opened": opened, "tunnels_failed": len(failures), "first_failures": failures[:3],
                "series": series}
    finally:
        pair.stop()
        sink.kill()


async def run(args) -> dict:
    from meshcore.identity import CertificateAuthority
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca_dir = str(directory / "ca")
        CertificateAuthority.create("cluster.local").save(ca_dir)
        out = {}
        if args.size:
            out["stall"] = await stall(ca_dir, directory, args.size, args.seconds)
        if args.reloads:
            out["churn"] = await churn(ca_dir, directory, args.reloads)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000, help="workloads, services and policies (0: skip)")
    parser.add_argument("--seconds", type=float, default=3.0, help="round trips measured without reloads")
    parser.add_argument("--reloads", type=int, default=1000, help="reloads of the churn run (0: skip)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
