"""What a configuration change costs in the mesh store, at 10,000 workloads, services
and policies in force.

    pip install ".[bench]" && python benchmarks/state_store.py [--size 10000] [--rounds 200]

- apply one changed workload, one changed service, one changed policy (p50/p99 of
  --rounds, each round alternating between two versions of the resource), and how
  many policies each change compiled (the engine compiles only what changed);
- the same through replace(): a source's whole set diffed against what it sent;
- the first load of the whole set (what start-up pays).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace as with_fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from node_proxy import scale_config  # noqa: E402


def resources(n: int) -> list:
    import tempfile

    from meshcore.sources.config import parse
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(scale_config(n), f)
        f.flush()
        return parse([f.name]).resources


def compiled_by(before, after) -> int:
    """How many compiled policies the new engine does not share with the old one."""
    old = before._compiled
    return sum(1 for key, c in after._compiled.items() if old.get(key) is not c)


def quantiles(samples: list[float]) -> dict:
    samples = sorted(samples)
    return {"p50_ms": round(statistics.median(samples) * 1e3, 3),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3, 3)}


def run(size: int, rounds: int) -> dict:
    from meshcore.policy.model import Match
    from meshcore.state import Kind, MeshStore, Upsert
    everything = resources(size)
    store = MeshStore()
    t = time.perf_counter()
    store.replace("files", everything, atomic=True)
    out = {"size": size, "first_load_s": round(time.perf_counter() - t, 3)}
    view = store.view
    workload = next(iter(view.by_uid.values()))
    service = next(iter(view.by_service_key.values()))
    policy = next(iter(view.policy_by_key.values()))
    # a second version of each: a label, a port, one more rule
    versions = {
        Kind.WORKLOAD: (workload, with_fields(workload, labels=(("version", "v2"),))),
        Kind.SERVICE: (service, with_fields(service, ports=service.ports + ((443, 8443),))),
        Kind.AUTHORIZATION_POLICY: (policy, with_fields(policy, rules=policy.rules + (
            ((Match(destination_ports=(443,)),),),))),
    }
    for kind, (a, b) in versions.items():
        times, compiled = [], []
        for i in range(rounds):
            before = store.view.engine
            t = time.perf_counter()
            applied = store.apply("files", [Upsert(b if i % 2 == 0 else a)])
            times.append(time.perf_counter() - t)
            compiled.append(compiled_by(before, store.view.engine))
            assert applied.changed == {kind: frozenset({a.key})} and not applied.rejected
        out[f"apply_one_{kind.name.lower()}"] = {**quantiles(times), "policies_compiled": max(compiled)}
    # a source's whole set again with one workload changed: the diff finds it
    times = []
    for i in range(max(5, rounds // 20)):
        changed = [with_fields(r, labels=(("round", str(i)),)) if r is workload else r for r in everything]
        t = time.perf_counter()
        applied = store.replace("files", changed, atomic=True)
        times.append(time.perf_counter() - t)
    out["replace_whole_set_one_changed"] = quantiles(times)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000, help="workloads, services and policies each")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.size, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
