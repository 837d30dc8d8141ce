"""Retries as Envoy performs them for istiod's retry policies."""
import pytest

from meshcore.traffic.istio_model import HTTPRetry
from meshcore.traffic.retry import (
    DEFAULT_RETRY_POLICY, Failure, RetryOn, backoff_delay, parse_retry_on, retry_policy, should_retry,
)


def test_default_policy_is_istios():
    p = retry_policy(None)
    assert p == DEFAULT_RETRY_POLICY
    assert p.num_retries == 2
    assert p.conditions == {RetryOn.CONNECT_FAILURE, RetryOn.REFUSED_STREAM, RetryOn.GRPC_UNAVAILABLE,
                            RetryOn.GRPC_CANCELLED, RetryOn.RETRIABLE_STATUS_CODES}
    assert p.retriable_status_codes == ()          # 503 is no longer retried by default
    assert p.retry_other_hosts and p.host_selection_max_attempts == 5
    assert not retry_policy(None, consistent_hash=True).retry_other_hosts


def test_attempts_zero_disables_retries():
    assert retry_policy(HTTPRetry(attempts=0)) is None
    assert not should_retry(None, failure="connect-failure")


def test_attempts_only_keeps_default_conditions():
    p = retry_policy(HTTPRetry(attempts=5))
    assert p.num_retries == 5 and p.conditions == DEFAULT_RETRY_POLICY.conditions


def test_retry_on_parsing():
    assert parse_retry_on("gateway-error,retriable-status-codes,503") == (
        {RetryOn.GATEWAY_ERROR, RetryOn.RETRIABLE_STATUS_CODES}, (503,))
    # numbers switch retriable-status-codes on; blanks are trimmed; unknown conditions ignored
    assert parse_retry_on(" 5xx , 404,some,503") == ({RetryOn.FIVE_XX, RetryOn.RETRIABLE_STATUS_CODES}, (404, 503))
    assert parse_retry_on("reset,999") == ({RetryOn.RESET}, ())


def test_policy_fields():
    p = retry_policy(HTTPRetry(attempts=3, per_try_timeout=0.5, retry_on="5xx", retry_ignore_previous_hosts=False,
                               backoff=0.1, retry_remote_localities=True), consistent_hash=False)
    assert (p.num_retries, p.per_try_timeout, p.backoff_base) == (3, 0.5, 0.1)
    assert not p.retry_other_hosts and p.retry_remote_localities
    assert retry_policy(HTTPRetry(attempts=1, retry_ignore_previous_hosts=True), consistent_hash=True).retry_other_hosts


def policy(retry_on):
    return retry_policy(HTTPRetry(attempts=2, retry_on=retry_on))


@pytest.mark.parametrize("retry_on,kw,expected", [
    ("5xx", {"status": 500}, True),
    ("5xx", {"status": 503}, True),
    ("5xx", {"status": 404}, False),
    ("5xx", {"failure": "reset"}, True),
    ("5xx", {"failure": "connect-failure"}, True),
    ("5xx", {"failure": "refused-stream"}, True),
    ("gateway-error", {"status": 502}, True),
    ("gateway-error", {"status": 504}, True),
    ("gateway-error", {"status": 500}, False),
    ("gateway-error", {"failure": "reset"}, True),
    ("reset", {"failure": "reset"}, True),
    ("reset", {"failure": "connect-failure"}, True),
    ("reset", {"status": 503}, False),
    ("connect-failure", {"failure": "connect-failure"}, True),
    ("connect-failure", {"failure": "reset"}, False),
    ("connect-failure", {"status": 503}, False),
    ("refused-stream", {"failure": "refused-stream"}, True),
    ("refused-stream", {"failure": "reset"}, False),
    ("reset-before-request", {"failure": "reset", "request_started": False}, True),
    ("reset-before-request", {"failure": "reset"}, False),
    ("retriable-4xx", {"status": 409}, True),
    ("retriable-4xx", {"status": 404}, False),
    ("503", {"status": 503}, True),
    ("503", {"status": 502}, False),
    ("retriable-status-codes", {"status": 503}, False),     # the condition without codes retries nothing
    ("5xx", {"status": 503, "rate_limited": True}, False),
    ("envoy-ratelimited", {"status": 429, "rate_limited": True}, True),
    ("unavailable", {"status": 200, "grpc_status": 14}, True),
    ("unavailable", {"status": 200, "grpc_status": 13}, False),
    ("cancelled", {"status": 200, "grpc_status": 1}, True),
    ("deadline-exceeded", {"status": 200, "grpc_status": 4}, True),
    ("internal", {"status": 200, "grpc_status": 13}, True),
    ("resource-exhausted", {"status": 200, "grpc_status": 8}, True),
    ("5xx", {"status": 200, "grpc_status": 14}, False),
    ("5xx", {}, False),
    ("5xx", {"failure": "per-try-timeout"}, True),
    ("gateway-error", {"failure": "per-try-timeout"}, True),
    ("reset", {"failure": "per-try-timeout"}, False),
    ("connect-failure", {"failure": "per-try-timeout"}, False),
])
def test_should_retry(retry_on, kw, expected):
    assert should_retry(policy(retry_on), **kw) is expected


@pytest.mark.parametrize("kw,expected", [
    ({"failure": Failure.CONNECT_FAILURE}, True),
    ({"failure": Failure.REFUSED_STREAM}, True),
    ({"failure": Failure.RESET}, False),
    ({"status": 503}, False),
    ({"status": 200, "grpc_status": 14}, True),
    ({"status": 200, "grpc_status": 1}, True),
    ({"status": 200, "grpc_status": 4}, False),
])
def test_default_policy_conditions(kw, expected):
    assert should_retry(DEFAULT_RETRY_POLICY, **kw) is expected


@pytest.mark.parametrize("n,upper", [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (10, 0.25), (80, 0.25)])
def test_backoff_full_jitter(n, upper):
    assert backoff_delay(n, 0.0) == 0
    assert backoff_delay(n, 0.999999) == pytest.approx(upper, rel=1e-4)
    assert backoff_delay(n, 0.5) == pytest.approx(upper / 2)


def test_backoff_from_the_route():
    assert backoff_delay(2, 0.999999, base=0.1) == pytest.approx(0.2, rel=1e-4)
    assert backoff_delay(9, 0.999999, base=0.1) == pytest.approx(1.0, rel=1e-4)     # 10 × base
    with pytest.raises(ValueError):
        backoff_delay(0, 0.5)
