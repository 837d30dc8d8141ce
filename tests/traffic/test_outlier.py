"""Envoy's outlier ejection as istiod configures it, driven by explicit times."""
import pytest

from meshcore.traffic.istio_model import OutlierDetection
from meshcore.traffic.outlier import OutlierDetector, panic_set, panic_threshold

ALL = ["a", "b", "c", "d"]


def detector(endpoints=ALL, **kw):
    kw.setdefault("max_ejection_percent", 100)
    return OutlierDetector(OutlierDetection(**kw), endpoints)


def fail(d, endpoint, times, now=0.0, status=503):
    return [d.record(endpoint, now, status=status) for _ in range(times)]


def test_consecutive_5xx_ejects_on_the_fifth_by_default():
    d = detector()
    assert fail(d, "a", 5) == [False, False, False, False, True]
    assert d.ejected() == {"a"}


def test_a_success_resets_the_count():
    d = detector(consecutive_5xx=3)
    fail(d, "a", 2)
    d.record("a", 0, status=200)
    fail(d, "a", 2)
    assert not d.is_ejected("a")
    assert fail(d, "a", 1) == [True]


def test_4xx_is_not_an_error_unless_listed():
    d = detector(consecutive_5xx=2)
    fail(d, "a", 5, status=404)
    assert not d.is_ejected("a")
    d = detector(consecutive_5xx=2, error_codes=(404,))
    assert fail(d, "a", 2, status=404) == [False, True]
    d = detector(consecutive_5xx=2, error_codes=(404,))
    fail(d, "a", 3, status=500)               # only the listed codes count
    assert not d.is_ejected("a")


def test_gateway_errors_only_when_configured():
    d = detector(consecutive_5xx=10, consecutive_gateway_errors=2)
    assert fail(d, "a", 2, status=502) == [False, True]
    d = detector(consecutive_5xx=10)           # Istio leaves gateway failures unenforced
    fail(d, "a", 9, status=502)
    assert not d.is_ejected("a")
    d = detector(consecutive_5xx=10, consecutive_gateway_errors=2)
    d.record("a", 0, status=502)
    d.record("a", 0, status=500)               # a 5xx that is not a gateway error breaks that run
    d.record("a", 0, status=502)
    assert not d.is_ejected("a")


def test_consecutive_5xx_zero_disables():
    d = detector(consecutive_5xx=0)
    fail(d, "a", 50)
    assert d.ejected() == set()


def test_failures_without_an_answer_count_as_5xx():
    d = detector(consecutive_5xx=3)
    assert [d.record("a", 0, failure=f) for f in ("connect-failure", "reset", "timeout")] == [False, False, True]
    with pytest.raises(ValueError):
        d.record("b", 0, failure="bogus")


def test_split_local_origin_errors():
    d = detector(consecutive_5xx=2, split_external_local_origin_errors=True, consecutive_local_origin_failures=3)
    d.record("a", 0, failure="connect-failure")
    d.record("a", 0, failure="connect-failure")
    d.record("a", 0, status=200)                # the connection worked: the local count starts over
    assert [d.record("a", 0, failure="connect-failure") for _ in range(3)] == [False, False, True]
    d = detector(consecutive_5xx=2, split_external_local_origin_errors=True)
    for _ in range(10):
        d.record("b", 0, failure="reset")       # not counted as 5xx, and no local threshold set
    assert not d.is_ejected("b")


def test_ejection_time_grows_and_endpoints_come_back():
    d = detector(consecutive_5xx=1, interval=10, base_ejection_time=30)
    d.record("a", 0, status=500)
    assert d.ejection_time("a") == 30
    assert d.sweep(20) == [] and d.is_ejected("a")
    assert d.sweep(30) == ["a"] and not d.is_ejected("a")
    d.record("a", 31, status=500)               # ejected a second time: 60 s
    assert d.ejection_time("a") == 60
    assert d.sweep(61) == [] and d.sweep(91) == ["a"]
    d.record("a", 92, status=500)
    assert d.ejection_time("a") == 90


def test_ejection_time_is_capped_at_max_ejection_time():
    d = detector(consecutive_5xx=1, base_ejection_time=100, max_ejection_time=250)
    now = 0.0
    for _ in range(6):
        d.record("a", now, status=500)
        now += d.ejection_time("a")
        assert d.sweep(now) == ["a"]
    assert d.ejection_time("a") == 250


def test_multiplier_shrinks_while_healthy():
    d = detector(consecutive_5xx=1, interval=10, base_ejection_time=30)
    d.record("a", 0, status=500)
    d.sweep(30)
    d.record("a", 30, status=500)
    d.sweep(90)
    assert d.ejection_count("a") == 2
    d.sweep(100)
    d.sweep(110)
    assert d.ejection_count("a") == 0


def test_counts_start_over_on_return():
    d = detector(consecutive_5xx=3, base_ejection_time=1)
    fail(d, "a", 3)
    d.record("a", 0.5, status=500)              # while ejected (panic traffic): counted, not ejected again
    d.sweep(1)
    assert fail(d, "a", 2, now=2) == [False, False]


def test_max_ejection_percent_default_ten_percent():
    d = OutlierDetector(OutlierDetection(consecutive_5xx=1), ALL)    # 4 endpoints, 10 %
    assert d.record("a", 0, status=500) is False                       # 1 of 4 is 25 %: not allowed
    d = OutlierDetector(OutlierDetection(consecutive_5xx=1), [f"e{i}" for i in range(10)])
    assert d.record("e0", 0, status=500) is True                       # 1 of 10
    assert d.record("e1", 0, status=500) is False                      # 2 of 10 would be 20 %


def test_max_ejection_percent_honoured():
    d = detector(consecutive_5xx=1, max_ejection_percent=50)
    assert [d.record(e, 0, status=500) for e in ALL] == [True, True, False, False]


def test_unknown_endpoints_and_endpoint_changes():
    d = detector(consecutive_5xx=1)
    assert d.record("zz", 0, status=500) is False
    d.record("a", 0, status=500)
    d.update_endpoints(["b", "c", "e"])
    assert d.ejected() == set()
    assert d.record("e", 0, status=500) is True


def test_no_panic_by_default_every_endpoint_ejected_leaves_none():
    d = detector(consecutive_5xx=1)                   # minHealthPercent 0: Istio's default
    for e in ALL:
        d.record(e, 0, status=500)
    assert d.load_balancing_set(ALL) == ([], False)  # answered 503, no healthy upstream


def test_panic_below_min_health_percent():
    d = detector(consecutive_5xx=1, min_health_percent=50)
    d.record("a", 0, status=500)
    assert d.load_balancing_set(ALL) == (["b", "c", "d"], False)
    d.record("b", 0, status=500)
    assert d.load_balancing_set(ALL) == (["c", "d"], False)   # 50 % healthy is not under 50 %
    d.record("c", 0, status=500)
    assert d.load_balancing_set(ALL) == (ALL, True)           # 25 %: every endpoint again
    d.sweep(30)
    assert d.load_balancing_set(ALL) == (ALL, False)


@pytest.mark.parametrize("healthy,total,threshold,panic", [
    (10, 10, 50, False), (5, 10, 50, False), (4, 10, 50, True), (0, 10, 50, True), (0, 10, 0, False),
    # 75 % healthy × 1.4 overprovisioning is fully available: no panic even under a threshold of 80
    (75, 100, 80, False), (70, 100, 80, True),
])
def test_panic_rule(healthy, total, threshold, panic):
    endpoints = list(range(total))
    chosen, in_panic = panic_set(endpoints, endpoints[healthy:], threshold)
    assert in_panic is panic
    assert chosen == (endpoints if panic else endpoints[:healthy])


def test_panic_threshold_istio_programs():
    assert panic_threshold(None) == 50                           # no outlierDetection: Envoy's default
    assert panic_threshold(OutlierDetection()) == 0              # outlierDetection: minHealthPercent, 0
    assert panic_threshold(OutlierDetection(min_health_percent=30)) == 30
