"""One tunnel never hurts another: hundreds of tunnels on shared HBONE connections
through a real outbound + inbound pair over mTLS, each ending its own way (clean
half-closes, upstream FIN early, upstream reset, client reset, client leaving,
window-blocked then reset, a pooled connection drained by GOAWAY meanwhile), random
sizes and write splits. Every tunnel that was not ended on purpose arrives SHA-256
intact, and the file descriptors come back to where they were.
The same scenario runs for minutes, RSS recorded each second: benchmarks/soak_tunnels.py."""
import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import wait_until
from isolation import CLEAN, ENDINGS, Tunnel, proxy_pair, run_batch

SIZES = (0, 1, 1000, 65535, 65536, 300_000, 1 << 20)

tunnels = st.lists(st.builds(Tunnel, st.sampled_from(ENDINGS + (CLEAN, CLEAN)), st.sampled_from(SIZES),
                             st.integers(0, 2 ** 32)), min_size=60, max_size=160)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=tunnels, drain_one=st.booleans())
def test_tunnels_that_were_not_ended_arrive_intact(run, ca, batch, drain_one):
    async def go():
        async with proxy_pair(ca) as (address, mesh, server):     # what a loop creates once (uvloop's
            await run_batch(address, mesh, [Tunnel(CLEAN, 10, 0)])  # resolver pool): not counted
        before = open_fds()
        async with proxy_pair(ca) as (address, mesh, server):
            results = await asyncio.wait_for(run_batch(address, mesh, batch, drain_one), 120)
            clean = [r for t, r in zip(batch, results) if t.ending == CLEAN]
            assert clean and all(clean), f"{clean.count(False)} of {len(clean)} clean tunnels damaged"
            assert len(mesh.pool.connections) >= 1
        await wait_until(lambda: open_fds() <= before, 10)
        assert open_fds() <= before, (open_fds(), before)
    run(go())
