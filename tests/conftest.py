"""Suite-wide policy.

A test that needs an external program marks itself `needs_tool("curl")`: a missing
tool skips it. In CI (CI=true, or MESHCORE_REQUIRE_TOOLS=1) every skip is turned
into a failure, so a green CI run never hides a real peer that did not run.
"""
import os
import shutil
import sys
from pathlib import Path

import pytest

# `python -m pytest` puts the checkout first on sys.path, and the checkout's meshcore/
# has no compiled core unless it was built in place: test the installed package then.
_ROOT = Path(__file__).resolve().parent.parent
if not any((_ROOT / "meshcore" / "_core").glob("*.so")):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

# peers and helpers shared by the test folders (independent HBONE peers, workloads)
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from loops import LOOPS, loop_runner  # noqa: E402  (tests/support, just put on the path)

REQUIRE_TOOLS = os.environ.get("MESHCORE_REQUIRE_TOOLS") == "1" or os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("needs_tool"):
            tool = mark.args[0]
            if shutil.which(tool) is None:
                item.add_marker(pytest.mark.skip(reason=f"{tool} is not installed"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_TOOLS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {reason}"


@pytest.fixture(params=LOOPS)
def run(request):
    """run(coro) on each loop under test: stock asyncio and uvloop."""
    return loop_runner(request.param)


@pytest.fixture(scope="session")
def ca():
    from meshcore.identity import CertificateAuthority
    return CertificateAuthority.create("cluster.local")
