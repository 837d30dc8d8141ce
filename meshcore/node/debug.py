"""What the admin listener's /debug endpoints report: a sampling CPU profile of the
event loop's thread (Python's equivalent of ztunnel's pprof), the asyncio tasks, and
the proxy's own counts of what it holds."""
from __future__ import annotations

import asyncio
import collections
import gc
import sys
import threading
import time

MAX_PROFILE_SECONDS = 30.0


def _stack_of(frame) -> str:
    names = []
    while frame is not None:
        code = frame.f_code
        names.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}")
        frame = frame.f_back
    return ";".join(reversed(names))


def sample_stacks(thread_id: int, seconds: float, interval: float = 0.005) -> str:
    """Sample one thread's Python stack every `interval` for `seconds`; the result is
    in the collapsed form flame-graph tools read (`a;b;c count` per line, hottest first).
    Run it in another thread: the sampled one keeps working meanwhile."""
    counts: collections.Counter = collections.Counter()
    deadline = time.monotonic() + min(seconds, MAX_PROFILE_SECONDS)
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread_id)
        counts[_stack_of(frame) if frame is not None else "(idle)"] += 1
        time.sleep(interval)
    return "".join(f"{stack} {n}\n" for stack, n in counts.most_common())


async def profile(seconds: float) -> str:
    loop_thread = threading.get_ident()
    return await asyncio.to_thread(sample_stacks, loop_thread, seconds)


def tasks() -> dict:
    """The event loop's tasks, counted by what they run."""
    by_name = collections.Counter()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        by_name[getattr(coro, "__qualname__", type(coro).__name__)] += 1
    return {"tasks": sum(by_name.values()), "by_coroutine": dict(by_name.most_common())}


def holdings(proxy) -> dict:
    """How many of each resource the proxy holds now (each should return to its
    baseline when traffic stops)."""
    return {
        "hbone_inbound_listeners": len(proxy.inbound.servers),
        "hbone_inbound_connections": proxy.inbound.connections,
        "inbound_tunnels": len(proxy.inbound.active),
        "hbone_outbound_connections": len(proxy.pool.connections),
        "relayed_connections": len(proxy.outbound.relay.splices) + (
            len(proxy.inbound.plaintext.splices) if proxy.inbound.plaintext else 0),
        "certificates": len(proxy.certs.identities),
        "gc_tracked_objects": len(gc.get_objects()),
        "gc_frozen_objects": gc.get_freeze_count(),
    }
