"""A node proxy joined to istiod: start to ready, one change applied, certificates.

    pip install ".[bench]" && python benchmarks/istio_control_plane.py [--sizes 1000,10000] [--rounds 3]

A test istiod (delta ADS, tests/support/xds_server.py) and Istio CA (ca_server.py) on
loopback serve `meshcore node` processes configured by ztunnel's environment only.

- ready: istiod holds N workloads, N services and N policies (none local); a node
  process from exec to /healthz/ready 200, and its RSS then. Baseline in the same run:
  the same resources as one JSON file given with --config (no istiod);
- change: with N of each in force, istiod pushes one changed workload (or policy);
  time from the push to the node's ACK of it (20 each, p50/p90/max);
- stall: in this process, an XdsClient on the event loop receiving N of each in one
  push: time to synced and the longest the loop went without turning (a 1 ms sleeper);
- certificates: 50 local workloads of 50 service accounts; the node's exec-to-ready
  time against the same node with none local (both via xDS), and in this process the
  Istio CA client fetching 50 certificates at once (p50/max per certificate, total).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")     # the test servers' gRPC too: no INFO lines
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "support")]

from ca_server import IstioCa  # noqa: E402
from istiod_tls import IstiodTls, start_grpc_server  # noqa: E402
from node_proxy import ready, rss_kib, scale_config  # noqa: E402
from xds_server import Istiod, service, workload  # noqa: E402

from meshcore.xds.proto import authorization_pb2 as apb  # noqa: E402

TOKEN = "bench-token"
NODE = "bench-node"


def policy(i: int, version: int = 0) -> apb.Authorization:
    ns = f"ns{i % 100}"
    principal = apb.Match(principals=[apb.StringMatch(exact=f"cluster.local/ns/ns{(i + 1) % 100}/sa/sa{i % 50}")])
    ports = apb.Match(destination_ports=[8080, 9090 + version])
    return apb.Authorization(name=f"p{i}", namespace=ns, scope=apb.NAMESPACE, action=apb.ALLOW,
                             rules=[apb.Rule(clauses=[apb.Clause(matches=[principal]), apb.Clause(matches=[ports])])])


def scale_messages(n: int, local: int = 0) -> list:
    """What scale_config(n) writes as ztunnel's local config, as istiod's resources."""
    out = []
    for i in range(n):
        ns = f"ns{i % 100}"
        host = f"svc{i}.{ns}.svc.cluster.local"
        out.append(workload(f"c//v1/Pod/{ns}/w{i}", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                            name=f"w{i}", namespace=ns, service_account=f"sa{i}" if i < local else f"sa{i % 50}",
                            node=NODE if i < local else f"node{i % 20}", services={f"{ns}/{host}": [(80, 8080)]}))
        out.append(service(f"svc{i}", ns, f"100.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"))
        out.append(policy(i))
    return out


class CaThread:
    def __init__(self, tls):
        self.ca = IstioCa(tls.ca, token=TOKEN)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server, self.port = asyncio.run_coroutine_threadsafe(
            start_grpc_server(tls, [self.ca.handler()]), self.loop).result(10)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


class Node:
    """One `meshcore node` process on its own loopback address."""

    def __init__(self, directory: Path, env: dict, args: list[str]):
        self.ip = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.1"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ISTIO_META", "KUBERNETES_"))
                 and k not in ("XDS_ADDRESS", "CA_ADDRESS", "LOCAL_XDS", "LOCAL_XDS_PATH")}
        self.log = directory / f"node-{self.ip}.log"
        with open(self.log, "ab") as log:
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshcore", "node", "--address", self.ip, "--listen", "socks5=off",
                 "--listen", "admin=off", "--listen", "outbound=off", "--listen", "inbound-plaintext=off",
                 # the scale workloads' addresses (10.x) are not this host's: nothing to listen on
                 "--listen", "inbound=off", *args],
                stdout=log, stderr=subprocess.STDOUT, cwd=directory, env={**clean, **env}, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while not ready(self.ip):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()                      # never left running behind a failed measurement
                raise RuntimeError(f"node not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.005)
        return time.perf_counter() - self.started

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def summary(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50_ms": round(statistics.median(s) * 1e3, 2), "p90_ms": round(s[int(len(s) * 0.9)] * 1e3, 2),
            "max_ms": round(s[-1] * 1e3, 2), "n": len(s)}


def wait_ack(istiod: Istiod, nonces: list[str], timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while not all(istiod.ads.answered(n) for n in nonces):
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"no answer to {nonces}")
        time.sleep(0.0005)
    bad = [istiod.ads.answered(n).nack for n in nonces if istiod.ads.answered(n).nack]
    if bad:
        raise RuntimeError(f"NACKed: {bad[0][:300]}")
    return time.perf_counter() - start


def measure_size(n: int, rounds: int, directory: Path, tls: IstiodTls, ca: CaThread) -> dict:
    istiod = Istiod(tls).start()
    istiod.ads.set(*scale_messages(n))
    env = {"XDS_ADDRESS": istiod.address, "CA_ADDRESS": f"127.0.0.1:{ca.port}", "XDS_ROOT_CA": str(tls.root_path),
           "CA_ROOT_CA": str(tls.root_path), "AUTH_TOKEN": TOKEN, "NODE_NAME": NODE}
    config = directory / f"scale-{n}.json"
    config.write_text(json.dumps(scale_config(n)))
    out = {"xds": [], "files": []}
    for _ in range(rounds):
        for kind, node_env, args in (("xds", env, []), ("files", {"NODE_NAME": NODE}, ["--config", str(config)])):
            node = Node(directory, node_env, args)
            seconds = node.wait_ready()
            out[kind].append({"ready_s": round(seconds, 3), "rss_mib": round(rss_kib(node.proc.pid) / 1024, 1)})
            node.stop()
    result = {kind: {"ready_s": statistics.median(r["ready_s"] for r in rows),
                     "rss_mib": statistics.median(r["rss_mib"] for r in rows)} for kind, rows in out.items()}
    result["xds_vs_files_ready"] = round(result["xds"]["ready_s"] / result["files"]["ready_s"], 2)

    # one change at a time, with n of each in force
    node = Node(directory, env, [])
    node.wait_ready()
    changes = {"workload": [], "policy": []}
    try:
        measure_changes(n, istiod, changes)
    finally:
        node.stop()
        istiod.stop()
    result["change_to_ack"] = {kind: summary(s) for kind, s in changes.items()}
    return result


def measure_changes(n: int, istiod: Istiod, changes: dict) -> None:
    for k in range(20):
        i = k % max(n, 1)
        ns = f"ns{i % 100}"
        changed = workload(f"c//v1/Pod/{ns}/w{i}", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", name=f"w{i}",
                           namespace=ns, service_account=f"sa{(i + k + 1) % 50}", node=f"node{i % 20}",
                           services={f"{ns}/svc{i}.{ns}.svc.cluster.local": [(80, 8080)]})
        changes["workload"].append(wait_ack(istiod, istiod.ads.push(changed)))
        changes["policy"].append(wait_ack(istiod, istiod.ads.push(policy(i, version=k + 1))))


async def _stall(n: int, tls: IstiodTls) -> dict:
    from meshcore.state.store import MeshStore
    from meshcore.xds.client import XdsClient
    from meshcore.xds.settings import ControlPlane
    istiod = Istiod(tls).start()
    istiod.ads.set(*scale_messages(n))
    plane = ControlPlane.from_environment({"XDS_ADDRESS": istiod.address, "XDS_ROOT_CA": str(tls.root_path),
                                           "FAKE_CA": "true"})
    store = MeshStore()
    client = XdsClient(plane, store)
    lateness: list[float] = []
    done = asyncio.Event()

    async def sleeper():
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t - 0.001)
    probe = asyncio.ensure_future(sleeper())
    start = time.perf_counter()
    await client.start()
    await client.wait_synced(120)
    synced = time.perf_counter() - start
    await store.settled()
    done.set()
    await probe
    await client.close()
    istiod.stop()
    lateness.sort()
    return {"synced_s": round(synced, 3), "longest_stall_ms": round(lateness[-1] * 1e3, 1),
            "p99_stall_ms": round(lateness[int(len(lateness) * 0.99)] * 1e3, 1)}


def measure_stall(n: int, rounds: int, tls: IstiodTls) -> dict:
    runs = []
    for _ in range(rounds):
        try:
            import uvloop
            runs.append(uvloop.run(_stall(n, tls)))
        except ImportError:
            runs.append(asyncio.run(_stall(n, tls)))
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]} | {"rounds": runs}


def measure_certificates(rounds: int, directory: Path, tls: IstiodTls, ca: CaThread, local: int = 50) -> dict:
    istiod = Istiod(tls).start()
    istiod.ads.set(*scale_messages(local, local=local))
    env = {"XDS_ADDRESS": istiod.address, "CA_ADDRESS": f"127.0.0.1:{ca.port}", "XDS_ROOT_CA": str(tls.root_path),
           "CA_ROOT_CA": str(tls.root_path), "AUTH_TOKEN": TOKEN}
    with_local, without = [], []
    for _ in range(rounds):
        for samples, node_name in ((with_local, NODE), (without, "elsewhere")):
            node = Node(directory, {**env, "NODE_NAME": node_name}, [])
            samples.append(node.wait_ready())
            node.stop()
    istiod.stop()
    per_cert, total = asyncio.run(_fetch_in_process(tls, ca, local))
    return {"node_ready_s": {"50 local": round(statistics.median(with_local), 3),
                             "none local": round(statistics.median(without), 3)},
            "certificates_at_start_s": round(statistics.median(with_local) - statistics.median(without), 3),
            "in_process": {"total_ms": round(total * 1e3, 1), **summary(per_cert)}}


async def _fetch_in_process(tls: IstiodTls, ca: CaThread, count: int):
    from meshcore.identity.spiffe import SpiffeId
    from meshcore.xds.ca import IstioCaClient
    from meshcore.xds.settings import ControlPlane
    plane = ControlPlane.from_environment({"XDS_ADDRESS": f"127.0.0.1:{ca.port}", "XDS_ROOT_CA": str(tls.root_path),
                                           "CA_ROOT_CA": str(tls.root_path), "AUTH_TOKEN": TOKEN})
    client = IstioCaClient(plane, "cluster.local")
    import datetime as dt
    await client.issue_async(SpiffeId("cluster.local", "warm", "up"), lifetime=dt.timedelta(hours=24))

    async def one(i):
        t = time.perf_counter()
        await client.issue_async(SpiffeId("cluster.local", f"ns{i}", f"sa{i}"), lifetime=dt.timedelta(hours=24))
        return time.perf_counter() - t
    start = time.perf_counter()
    per = await asyncio.gather(*(one(i) for i in range(count)))
    total = time.perf_counter() - start
    await client.close()
    return list(per), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        tls = IstiodTls.create(directory / "istio")
        ca = CaThread(tls)
        report = {"sizes": {}}
        for n in (int(s) for s in args.sizes.split(",")):
            report["sizes"][str(n)] = measure_size(n, args.rounds, directory, tls, ca)
            report["sizes"][str(n)]["stall_in_process"] = measure_stall(n, args.rounds, tls)
            print(json.dumps({n: report["sizes"][str(n)]}), file=sys.stderr)
        report["certificates"] = measure_certificates(args.rounds, directory, tls, ca)
        ca.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
