"""Run the core benchmarks once and print the README table: medians, meshcore's
speed-up over the python-hyper baseline measured in the same run, throughput.

    python benchmarks/report.py [--json benchmarks/results/core.json]
"""
import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=str(HERE / "results" / "core.json"))
    args = parser.parse_args()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(HERE / "test_core_bench.py"),
           str(HERE / "test_identity_bench.py"), str(HERE / "test_policy_bench.py"),
           "-q", "-p", "no:cacheprovider",
           "--benchmark-only", f"--benchmark-json={args.json}", "--benchmark-min-rounds=20",
           "--benchmark-disable-gc", "--benchmark-warmup=on"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(Path(args.json).read_text())
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b["params"]["impl"]
        groups[b["group"]][impl] = b
    print(f"machine: {data['machine_info']['cpu'].get('brand_raw', '?')}, "
          f"{data['machine_info']['cpu'].get('count', '?')} cores, Python {data['machine_info']['python_version']}")
    print()
    print("| benchmark | meshcore (median) | baseline (median) | baseline ÷ meshcore | meshcore rate |")
    print("|---|---|---|---|---|")
    for group, impls in groups.items():
        ours = impls.pop("meshcore")
        m = ours["stats"]["median"]
        info = ours.get("extra_info", {})
        ops = info.get("operations", 1)
        size = info.get("bytes")
        if size is None and ("16KiB" in group or "1MiB" in group):
            size = 16384 if "16KiB" in group else 1 << 20
        if "decode" in group and size:
            rate = "view into the input, no copy"
        elif size:
            rate = f"{size / m / 1e9:.2f} GB/s"
        else:
            rate = f"{ops / m:,.0f} /s"
        if "memory_mb" in info:
            rate = f"{info['memory_mb']} MB retained, {info['peak_mb']} MB peak"
        per_op = m / ops if info.get("per_operation") else m
        if impls:
            (base_name, base), = impls.items()
            bm = base["stats"]["median"]
            print(f"| {group} | {fmt_time(per_op)} | {fmt_time(bm)} ({base_name}) | {bm / per_op:,.1f}x | {rate} |")
        else:
            print(f"| {group} | {fmt_time(per_op)} | - | - | {rate} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
