"""Every test here runs on stock asyncio and on uvloop (a missing uvloop skips, and
therefore fails in CI)."""
import asyncio

import pytest

from meshcore.identity import CertificateAuthority, CertificateStore

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOPS)
def run(request):
    """run(coro) on the loop under test, with a hard deadline."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def runner(coro, timeout=60):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, timeout))
    runner.loop_name = request.param
    return runner


@pytest.fixture(scope="session")
def ca():
    return CertificateAuthority.create("cluster.local")


@pytest.fixture(scope="session")
def store(ca):
    return CertificateStore(ca)

