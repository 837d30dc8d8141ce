"""The shared keepalive clock: checks run once each, in deadline order, within a slot
of their time; cancelled ones never run; a clock with nothing pending lets go of its
loop; and one connection's failing check does not stop the others."""
import asyncio

from meshcore.aio import keepalive
from meshcore.aio.keepalive import RESOLUTION, keepalive_clock


class Conn:
    def __init__(self, name, log, fail=False):
        self.name, self.log, self.fail = name, log, fail
        self.peer_identity = name

    def _keepalive(self):
        self.log.append((self.name, asyncio.get_running_loop().time()))
        if self.fail:
            raise RuntimeError("broken check")


def test_checks_run_once_in_order_and_cancelled_ones_never(run):
    async def scenario():
        loop = asyncio.get_running_loop()
        log = []
        clock = keepalive_clock(loop)
        start = loop.time()
        delays = {"c": 0.30, "a": 0.10, "broken": 0.10, "b": 0.20, "gone": 0.15}
        conns = {name: Conn(name, log, fail=name == "broken") for name in delays}
        slots = {name: clock.schedule(conns[name], d) for name, d in delays.items()}
        clock.cancel(conns["gone"], slots["gone"])
        await asyncio.sleep(0.5)
        assert sorted(n for n, _ in log) == ["a", "b", "broken", "c"]
        assert [n for n, _ in log if n != "broken"] == ["a", "b", "c"]
        for name, at in log:
            assert delays[name] - RESOLUTION / 2 - 0.01 <= at - start <= delays[name] + RESOLUTION + 0.05, (name, at - start)
        assert id(loop) not in keepalive._clocks          # nothing pending: dropped
    run(scenario())


def test_a_check_may_schedule_the_next_one(run):
    async def scenario():
        loop = asyncio.get_running_loop()
        log = []

        class Repeating(Conn):
            def _keepalive(self):
                super()._keepalive()
                if len(self.log) < 3:
                    keepalive_clock(loop).schedule(self, 0.05)
        keepalive_clock(loop).schedule(Repeating("r", log), 0.05)
        await asyncio.sleep(0.5)
        assert [n for n, _ in log] == ["r", "r", "r"]
        assert id(loop) not in keepalive._clocks
    run(scenario())
