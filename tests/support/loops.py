"""The event loops every transport test runs on."""
import asyncio

import pytest

LOOPS = ["asyncio", "uvloop"]


def loop_runner(loop_name: str):
    """run(coro, timeout) on a new event loop of that kind ("asyncio" or "uvloop"; a
    missing uvloop skips, and therefore fails in CI), with a hard deadline."""
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def runner(coro, timeout=60):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, timeout))
    runner.loop_name = loop_name
    return runner
