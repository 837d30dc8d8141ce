"""Authorization benchmarks in ztunnel's shape (benchmarks/policy_shape.py):
10,000 policies x 10 rules. Decisions per second from Python for allowed and denied
requests, beside the simple reference evaluator the tests check the engine against;
compile time and memory of the whole set.

    pip install ".[bench]" && python benchmarks/report.py
"""
import gc
import sys
import tracemalloc
from pathlib import Path

import pytest

import policy_shape as shape
from meshcore._core.policy import PolicyEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "policy"))
import reference  # noqa: E402

BATCH = 1000


@pytest.fixture(scope="module")
def policies():
    return shape.build()


@pytest.fixture(scope="module")
def table(policies):
    return PolicyEngine(policies).for_workload(shape.WORKLOAD)


def _request(args):
    return reference.Request(args[0], args[1], args[2], args[3])


@pytest.mark.parametrize("case", ["allowed", "denied"])
@pytest.mark.parametrize("impl", ["meshcore", "reference"])
def test_decisions(benchmark, policies, table, impl, case):
    benchmark.group = f"authorize one request, {case} (10,000 policies x 10 rules)"
    args = shape.ALLOWED if case == "allowed" else shape.DENIED
    expected = case == "allowed"
    if impl == "meshcore":
        evaluate = table.evaluate
        a, b, c, d = args
        benchmark.extra_info["operations"] = BATCH

        def batch():
            for _ in range(BATCH):
                r = evaluate(a, b, c, d)
            return r
        assert benchmark(batch).allowed == expected
        benchmark.extra_info["per_operation"] = True
    else:
        req = _request(args)
        result = benchmark.pedantic(reference.decide, args=(policies, shape.WORKLOAD, req), rounds=3)
        assert result[0] == expected


@pytest.mark.parametrize("impl", ["meshcore"])
def test_compile(benchmark, policies, impl):
    benchmark.group = "compile 10,000 policies x 10 rules"
    engine = benchmark.pedantic(PolicyEngine, args=(policies,), rounds=5)
    gc.collect()
    tracemalloc.start()
    engine = PolicyEngine(policies)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    benchmark.extra_info["memory_mb"] = round(current / 1e6, 1)
    benchmark.extra_info["peak_mb"] = round(peak / 1e6, 1)
    assert engine.for_workload(shape.WORKLOAD).evaluate(*shape.ALLOWED).allowed
