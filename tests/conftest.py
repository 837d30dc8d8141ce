"""Suite-wide policy.

A test that needs an external program marks itself `needs_tool("curl")`: a missing
tool skips it. In CI (CI=true, or MESHCORE_REQUIRE_TOOLS=1) every skip is turned
into a failure, so a green CI run never hides a real peer that did not run.
"""
import os
import shutil

import pytest

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
