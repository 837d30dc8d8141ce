"""Soak: the tunnel-isolation scenario (tests/aio/test_tunnel_isolation.py) for
minutes, in one process: batches of tunnels ending every way on shared HBONE
connections, RSS and open file descriptors recorded each second. Fails (exit 1) when a
clean tunnel arrives damaged, or when RSS or descriptors keep growing.

    pip install ".[test]" && python benchmarks/soak_tunnels.py --minutes 10 [--loop uvloop]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from isolation import CLEAN, ENDINGS, Tunnel, proxy_pair, run_batch  # noqa: E402

from meshcore.aio.memory import trimmer  # noqa: E402

SIZES = (0, 1, 1000, 65536, 300_000, 1 << 20)


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def soak(minutes: float, seed: int) -> dict:
    from meshcore.identity import CertificateAuthority
    rnd = random.Random(seed)
    ca = CertificateAuthority.create("cluster.local")
    samples, damaged, batches, tunnels = [], 0, 0, 0
    deadline = time.monotonic() + minutes * 60

    async def sampler():
        while True:
            samples.append((round(time.monotonic(), 1), round(rss_mib(), 1), len(os.listdir("/proc/self/fd"))))
            await asyncio.sleep(1)
    task = asyncio.ensure_future(sampler())
    async with proxy_pair(ca) as (address, mesh, server):
        while time.monotonic() < deadline:
            batch = [Tunnel(rnd.choice(ENDINGS + (CLEAN, CLEAN)), rnd.choice(SIZES), rnd.randrange(2 ** 32))
                     for _ in range(rnd.randint(50, 200))]
            results = await run_batch(address, mesh, batch, drain_one=rnd.random() < 0.2)
            damaged += sum(1 for t, r in zip(batch, results) if t.ending == CLEAN and not r)
            # free memory goes back to the system between batches, so what RSS keeps is
            # what is still held (a leak shows; the allocator's high-water mark does not)
            trimmer.trim_now()
            batches += 1
            tunnels += len(batch)
    task.cancel()
    return {"samples": samples, "damaged": damaged, "batches": batches, "tunnels": tunnels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "soak.json"))
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop
        result = uvloop.run(soak(args.minutes, args.seed))
    else:
        result = asyncio.run(soak(args.minutes, args.seed))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result))
    rss = [r for _, r, _ in result["samples"]]
    fds = [f for _, _, f in result["samples"]]
    third = max(1, len(rss) // 3)
    early, late = statistics.median(rss[third:2 * third] or rss), statistics.median(rss[-third:])
    grew = late > early * 1.10 + 2
    fd_grew = statistics.median(fds[-third:]) > statistics.median(fds[third:2 * third] or fds) + 8
    print(f"{result['tunnels']} tunnels in {result['batches']} batches over {args.minutes:g} min on {args.loop}: "
          f"{result['damaged']} clean tunnels damaged; RSS median {early:.1f} MiB (middle third) -> "
          f"{late:.1f} MiB (last third), peak {max(rss):.1f}; descriptors {min(fds)}..{max(fds)}")
    if result["damaged"] or grew or fd_grew:
        print("FAILED: " + ", ".join(w for w, bad in (("damaged tunnels", result["damaged"]),
                                                        ("RSS grew", grew), ("descriptors grew", fd_grew)) if bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
