"""HTTP/1.1 requests through the waypoint, with wrk (keep-alive, --latency), against
baselines measured in the same rounds:

    direct    wrk → nginx (the web workload's HTTP, a fixed 200)
    node      wrk → forwarder → node-a → node-b → nginx              (service web, L4)
    waypoint  wrk → forwarder → node-a → waypoint → node-b → nginx   (service web-l7)
    nginx     wrk → nginx as a reverse proxy (worker_processes 1, kept-alive upstream) → nginx
    direct-h2, waypoint-h2   h2load (h2c, prior knowledge) to nginx's HTTP/2 port, directly
              and through the waypoint (service web-l7, port 81), in the same rounds

    pip install ".[bench]" && python benchmarks/waypoint_http.py [--seconds 3] [--repeat 3]

The forwarder (tests/support/socks_forwarder.py) turns wrk's connections into SOCKS5
connections through node-a from the client workload's address; it is on the node and
waypoint paths alike. Each round measures every mode at two loads: one connection (the
latency of a request with nothing queued: what each hop adds) and --connections
(throughput, and latency under load). Medians of the rounds are reported.

Nothing is pinned: a mesh path is six processes (wrk, forwarder, node-a, waypoint,
node-b, nginx) on this machine's cores, so a path's requests/s is what the whole chain
carries on them, not what one proxy can. What one core of a proxy serves is measured
by its CPU time: requests / CPU-seconds of the waypoint process in the waypoint mode,
and of the nginx worker in the nginx mode (both single-threaded event loops).

Needs wrk and nginx (Debian: wrk, nginx-light); h2load (nghttp2-client) for the HTTP/2 rows
(--no-h2 leaves them out).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from waypoint_load import NginxMesh, NginxProxy, cpu_seconds, open_fds, rss_kib, wrk  # noqa: E402

MODES = ("direct", "node", "waypoint", "nginx")
H2_CLIENTS = 4               # h2load connections; --connections streams in all, as many as wrk's


class RssSampler:
    """The peak RSS of a process while a block runs (sampled every 50 ms)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(mode: str, url: str, pids: dict[str, int], seconds: float, connections: int) -> dict:
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    with RssSampler(pids["waypoint"]) as rss:
        run = wrk(url, seconds=seconds, connections=connections)
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    row = {k: run[k] for k in ("requests", "rps", "p50_ms", "p99_ms", "failures")}
    row |= {"mode": mode, "connections": connections, "waypoint_rss_peak_kib": rss.peak}
    # CPU per request of each process that serves this mode (µs)
    serving = {"direct": ("backend",), "node": ("forwarder-node", "node-a", "node-b", "backend"),
               "waypoint": ("forwarder-waypoint", "node-a", "waypoint", "node-b", "backend"),
               "nginx": ("nginx-proxy", "backend")}[mode]
    row["cpu_us_per_request"] = {n: cpu[n] / max(1, run["requests"]) * 1e6 for n in serving}
    return row


def median_row(runs: list[dict]) -> dict:
    row = {"mode": runs[0]["mode"], "connections": runs[0]["connections"], "rounds": len(runs)}
    for key in ("rps", "p50_ms", "p99_ms", "requests", "failures", "waypoint_rss_peak_kib"):
        row[key] = statistics.median(r[key] for r in runs)
    row["cpu_us_per_request"] = {n: statistics.median(r["cpu_us_per_request"][n] for r in runs)
                                 for n in runs[0]["cpu_us_per_request"]}
    return row


def h2load(mode: str, url: str, pids: dict[str, int], seconds: float, clients: int, streams: int) -> dict:
    """One h2load run (h2c, prior knowledge): `clients` connections × `streams` concurrent
    streams each."""
    import re
    import subprocess
    cpu0 = cpu_seconds(pids["waypoint"])
    with RssSampler(pids["waypoint"]) as rss:
        proc = subprocess.run(["h2load", "-D", str(max(1, round(seconds))), "-c", str(clients), "-m", str(streams),
                               url], capture_output=True, text=True, timeout=seconds + 60)
    cpu = cpu_seconds(pids["waypoint"]) - cpu0
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                     r"(\d+) timeout", proc.stdout)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", proc.stdout)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", proc.stdout)
    if not (done and rate and mean):
        raise RuntimeError(f"h2load {url} failed:\n{proc.stdout}{proc.stderr}")
    unit = re.fullmatch(r"([\d.]+)(us|ms|s)", mean.group(1))
    row = {"mode": mode, "connections": f"{clients}x{streams} streams", "rps": float(rate.group(1)),
           "mean_ms": float(unit.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit.group(2)],
           "requests": int(done.group(2)), "failures": int(done.group(3)) + int(done.group(4)) + int(done.group(5)),
           "waypoint_rss_peak_kib": rss.peak}
    if mode.startswith("waypoint"):
        row["cpu_us_per_request"] = {"waypoint": cpu / max(1, row["requests"]) * 1e6}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections for the loaded runs")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, each measuring every mode at both loads")
    parser.add_argument("--h2", action=argparse.BooleanOptionalAction, default=shutil.which("h2load") is not None,
                        help="also HTTP/2 (h2c, prior knowledge) with h2load: direct and through the waypoint")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "waypoint_http.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        mesh = NginxMesh(directory, access_log=False)
        forwarders, proxy = {}, None
        try:
            mesh.start()
            forwarders = {"node": mesh.forwarder(mesh.vip), "waypoint": mesh.forwarder(mesh.vip_l7)}
            proxy = NginxProxy(Path(directory), mesh.web, f"127.{mesh.octet}.5.1:8080")
            if args.h2:
                forwarders["waypoint-h2"] = mesh.forwarder(mesh.vip_l7, mesh.H2_PORT)
            urls = {"direct": f"http://{mesh.web}:8080/", "node": forwarders["node"].url,
                    "waypoint": forwarders["waypoint"].url, "nginx": proxy.url}
            pids = {"node-a": mesh.processes["node-a"].pid, "node-b": mesh.processes["node-b"].pid,
                    "waypoint": mesh.processes["waypoint"].pid, "backend": mesh.processes["nginx"].pid,
                    "forwarder-node": forwarders["node"].proc.pid,
                    "forwarder-waypoint": forwarders["waypoint"].proc.pid,
                    "nginx-proxy": proxy.worker_pids()[0]}
            h2_urls = {"direct-h2": f"http://{mesh.web}:8081/", "waypoint-h2": forwarders["waypoint-h2"].url} \
                if args.h2 else {}
            waypoint = pids["waypoint"]
            rss_start = rss_kib(waypoint)
            for mode in MODES:                 # warm: certificates, pools, buffers
                warm = wrk(urls[mode], seconds=1, connections=args.connections)
                if warm["failures"]:
                    raise RuntimeError(f"{mode}: failures while warming up:\n{warm['output']}")
            for mode, url in h2_urls.items():
                h2load(mode, url, pids, 1, H2_CLIENTS, args.connections // H2_CLIENTS)
            time.sleep(1.0)
            rss_idle, fds_idle = rss_kib(waypoint), open_fds(waypoint)
            runs, h2runs = [], []
            for r in range(args.repeat):
                for mode in MODES:
                    for connections in (1, args.connections):
                        print(f"  round {r + 1}: {mode}, {connections} connection(s)", file=sys.stderr, flush=True)
                        runs.append(measure(mode, urls[mode], pids, args.seconds, connections))
                for mode, url in h2_urls.items():
                    print(f"  round {r + 1}: {mode}", file=sys.stderr, flush=True)
                    h2runs.append(h2load(mode, url, pids, args.seconds, H2_CLIENTS, args.connections // H2_CLIENTS))
            time.sleep(1.0)
            rss_after, fds_after = rss_kib(waypoint), open_fds(waypoint)
        finally:
            for f in forwarders.values():
                f.stop()
            if proxy is not None:
                proxy.stop()
            codes = mesh.stop()

    rows = [median_row([r for r in runs if r["mode"] == m and r["connections"] == c])
            for m in MODES for c in (1, args.connections)]
    by = {(r["mode"], r["connections"]): r for r in rows}
    h2 = []
    for mode in ("direct-h2", "waypoint-h2"):
        mine = [r for r in h2runs if r["mode"] == mode]
        if mine:
            row = {"mode": mode, "connections": mine[0]["connections"], "rounds": len(mine)}
            row |= {k: statistics.median(r[k] for r in mine) for k in ("rps", "mean_ms", "requests", "failures")}
            if "cpu_us_per_request" in mine[0]:
                row["cpu_us_per_request"] = {"waypoint": statistics.median(r["cpu_us_per_request"]["waypoint"]
                                                                           for r in mine)}
            h2.append(row)
    c = args.connections

    def added(mode, conns, key):
        return by[(mode, conns)][key] - by[("direct", conns)][key]
    summary = {
        "waypoint_added_p50_ms_1conn": added("waypoint", 1, "p50_ms"),
        "node_pair_added_p50_ms_1conn": added("node", 1, "p50_ms"),
        "waypoint_vs_node_pair_added_p50_1conn": added("waypoint", 1, "p50_ms") / added("node", 1, "p50_ms"),
        f"waypoint_added_p50_ms_{c}conn": added("waypoint", c, "p50_ms"),
        f"node_pair_added_p50_ms_{c}conn": added("node", c, "p50_ms"),
        f"waypoint_vs_node_pair_added_p50_{c}conn": added("waypoint", c, "p50_ms") / added("node", c, "p50_ms"),
        "waypoint_vs_nginx_rps_path": by[("waypoint", c)]["rps"] / by[("nginx", c)]["rps"],
        "waypoint_requests_per_cpu_second": 1e6 / by[("waypoint", c)]["cpu_us_per_request"]["waypoint"],
        "nginx_requests_per_cpu_second": 1e6 / by[("nginx", c)]["cpu_us_per_request"]["nginx-proxy"],
        "waypoint_rss_kib": {"start": rss_start, "idle_after_warmup": rss_idle,
                             "peak_under_load": max(r["waypoint_rss_peak_kib"] for r in runs if r["mode"] == "waypoint"),
                             "idle_after": rss_after},
        "waypoint_fds": {"idle_after_warmup": fds_idle, "idle_after": fds_after},
        "failures": sum(r["failures"] for r in runs + h2runs),
        "exit_codes": codes,
    }
    summary["waypoint_vs_nginx_per_core"] = (summary["waypoint_requests_per_cpu_second"]
                                             / summary["nginx_requests_per_cpu_second"])
    result = {"command": " ".join(["python", "benchmarks/waypoint_http.py", *sys.argv[1:]]),
              "cpus": os.cpu_count(), "pinned": "nothing", "medians": rows, "summary": summary, "runs": runs,
              "h2load": {"medians": h2, "runs": h2runs}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))

    print(f"medians of {args.repeat} rounds, {args.seconds:g} s each; wrk -t1, keep-alive")
    print("| mode | conns | requests/s | p50 ms | p99 ms | CPU µs/request (per process) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cpu = ", ".join(f"{n} {v:.0f}" for n, v in r["cpu_us_per_request"].items())
        print(f"| {r['mode']} | {r['connections']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {cpu} |")
    for r in h2:
        cpu = ", ".join(f"{n} {v:.0f}" for n, v in r.get("cpu_us_per_request", {}).items())
        print(f"| {r['mode']} (h2load) | {r['connections']} | {r['rps']:.0f} | mean {r['mean_ms']:.2f} | | {cpu} |")
    print(json.dumps({"summary": summary, "h2load": h2}, indent=2))
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
