"""Retries as Envoy performs them on a waypoint route istiod programmed: the policy a
route gets (Istio's default when it says nothing), the conditions a failed attempt is
retried on, and the back-off between attempts. Pure functions.

    retry_policy(retries, consistent_hash=False) -> RetryPolicy | None
    parse_retry_on("5xx,503") -> (conditions, status codes)
    should_retry(policy, status=, grpc_status=, failure=) -> bool
    backoff_delay(retry_number, r, base=) -> seconds

Istio's default (pilot/pkg/networking/core/route/retry/retry.go): 2 retries on
`connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with no
retriable status code listed (503 was dropped from the default in Istio 1.24), other
hosts preferred on each retry (up to 5 host picks) unless the route hashes
consistently. `retries: {attempts: 0}` turns retries off.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meshcore.traffic.istio_model import HTTPRetry

DEFAULT_NUM_RETRIES = 2
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_BACKOFF_BASE = 0.025          # Envoy's base interval; the cap is 10 times it
HOST_SELECTION_MAX_ATTEMPTS = 5


class RetryOn(StrEnum):
    """Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on conditions."""
    FIVE_XX = "5xx"
    GATEWAY_ERROR = "gateway-error"
    RESET = "reset"
    RESET_BEFORE_REQUEST = "reset-before-request"
    CONNECT_FAILURE = "connect-failure"
    RETRIABLE_4XX = "retriable-4xx"
    REFUSED_STREAM = "refused-stream"
    RETRIABLE_STATUS_CODES = "retriable-status-codes"
    RETRIABLE_HEADERS = "retriable-headers"
    ENVOY_RATELIMITED = "envoy-ratelimited"
    HTTP3_POST_CONNECT_FAILURE = "http3-post-connect-failure"
    GRPC_CANCELLED = "cancelled"
    GRPC_DEADLINE_EXCEEDED = "deadline-exceeded"
    GRPC_INTERNAL = "internal"
    GRPC_RESOURCE_EXHAUSTED = "resource-exhausted"
    GRPC_UNAVAILABLE = "unavailable"


class Failure(StrEnum):
    """How an attempt failed without a response."""
    CONNECT_FAILURE = "connect-failure"     # the upstream connection could not be made
    RESET = "reset"                         # the stream or connection was reset
    REFUSED_STREAM = "refused-stream"       # HTTP/2 REFUSED_STREAM: not processed
    PER_TRY_TIMEOUT = "per-try-timeout"     # the attempt outlived perTryTimeout


_GRPC_CONDITIONS = {RetryOn.GRPC_CANCELLED: 1, RetryOn.GRPC_DEADLINE_EXCEEDED: 4, RetryOn.GRPC_RESOURCE_EXHAUSTED: 8,
                    RetryOn.GRPC_INTERNAL: 13, RetryOn.GRPC_UNAVAILABLE: 14}
_RESPONSE_RETRY_ON_RESET = frozenset((RetryOn.FIVE_XX, RetryOn.GATEWAY_ERROR, RetryOn.RESET))
# the status codes Go's net/http names: istiod takes only these as codes in retryOn
KNOWN_STATUS_CODES = frozenset((*range(100, 104), *range(200, 209), 226, *range(300, 306), 307, 308, *range(400, 419),
                           *range(421, 427), 428, 429, 431, 451, *range(500, 509), 510, 511))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    num_retries: int
    conditions: frozenset[RetryOn]
    retriable_status_codes: tuple[int, ...] = ()
    per_try_timeout: float | None = None
    backoff_base: float = DEFAULT_BACKOFF_BASE
    retry_other_hosts: bool = True        # Envoy's previous_hosts predicate
    host_selection_max_attempts: int = HOST_SELECTION_MAX_ATTEMPTS
    retry_remote_localities: bool = False


def parse_retry_on(retry_on: str) -> tuple[frozenset[RetryOn], tuple[int, ...]]:
    """istiod's parseRetryOn: comma-separated, blanks trimmed, numbers that are HTTP
    status codes become retriable status codes (and switch on retriable-status-codes);
    conditions Envoy does not know are ignored, as Envoy ignores them."""
    conditions, codes = set(), []
    for part in retry_on.split(","):
        part = part.strip()
        if not part:
            continue
        if part.isdigit() and int(part) in KNOWN_STATUS_CODES:
            codes.append(int(part))
            continue
        try:
            conditions.add(RetryOn(part))
        except ValueError:
            pass
    if codes:
        conditions.add(RetryOn.RETRIABLE_STATUS_CODES)
    return frozenset(conditions), tuple(codes)


_DEFAULT_CONDITIONS, _ = parse_retry_on(DEFAULT_RETRY_ON)
DEFAULT_RETRY_POLICY = RetryPolicy(DEFAULT_NUM_RETRIES, _DEFAULT_CONDITIONS)


def retry_policy(retries: HTTPRetry | None, *, consistent_hash: bool = False) -> RetryPolicy | None:
    """The policy Envoy applies to a route (istiod's ConvertPolicy). None: no retries.
    A route hashing consistently keeps retrying on the same host unless the route says
    `retryIgnorePreviousHosts: true`."""
    if retries is None:
        return RetryPolicy(DEFAULT_NUM_RETRIES, _DEFAULT_CONDITIONS, retry_other_hosts=not consistent_hash)
    if retries.attempts <= 0:
        return None
    conditions, codes = _DEFAULT_CONDITIONS, ()
    if retries.retry_on:
        conditions, codes = parse_retry_on(retries.retry_on)
    other_hosts = not consistent_hash
    if retries.retry_ignore_previous_hosts is not None:
        other_hosts = retries.retry_ignore_previous_hosts
    return RetryPolicy(
        num_retries=retries.attempts,
        conditions=conditions,
        retriable_status_codes=codes,
        per_try_timeout=retries.per_try_timeout,
        backoff_base=retries.backoff if retries.backoff is not None else DEFAULT_BACKOFF_BASE,
        retry_other_hosts=other_hosts,
        retry_remote_localities=bool(retries.retry_remote_localities),
    )


def _retry_response(policy: RetryPolicy, status: int, grpc_status: int | None, rate_limited: bool) -> bool:
    on = policy.conditions
    if rate_limited:
        # an upstream Envoy's x-envoy-ratelimited: only its own condition retries it
        return RetryOn.ENVOY_RATELIMITED in on
    if RetryOn.FIVE_XX in on and 500 <= status <= 599:
        return True
    if RetryOn.GATEWAY_ERROR in on and status in (502, 503, 504):
        return True
    if RetryOn.RETRIABLE_4XX in on and status == 409:
        return True
    if RetryOn.RETRIABLE_STATUS_CODES in on and status in policy.retriable_status_codes:
        return True
    if grpc_status is not None:
        return any(c in on and code == grpc_status for c, code in _GRPC_CONDITIONS.items())
    return False


def _retry_failure(policy: RetryPolicy, failure: Failure, request_started: bool) -> bool:
    on = policy.conditions
    if failure is Failure.PER_TRY_TIMEOUT:
        # Envoy retries a timed-out attempt on the policies that mean "no good answer"
        return bool(on & {RetryOn.FIVE_XX, RetryOn.GATEWAY_ERROR})
    if failure is Failure.CONNECT_FAILURE and RetryOn.CONNECT_FAILURE in on:
        return True
    if RetryOn.RESET_BEFORE_REQUEST in on and not request_started:
        return True
    if on & _RESPONSE_RETRY_ON_RESET:
        # 5xx, gateway-error and reset take every kind of reset, connect failures included
        return True
    return failure is Failure.REFUSED_STREAM and RetryOn.REFUSED_STREAM in on


def should_retry(policy: RetryPolicy | None, *, status: int | None = None, grpc_status: int | None = None,
                 failure: Failure | str | None = None, request_started: bool = True,
                 rate_limited: bool = False) -> bool:
    """Whether Envoy retries an attempt that answered `status` (with `grpc_status` in its
    headers, a trailers-only gRPC response) or failed with `failure` (no response).
    `request_started`: the request reached the upstream (reset-before-request);
    `rate_limited`: the answer carried x-envoy-ratelimited. Whether retries are left
    (policy.num_retries) is the caller's count."""
    if policy is None:
        return False
    if failure is not None:
        return _retry_failure(policy, Failure(failure), request_started)
    if status is None:
        return False
    return _retry_response(policy, status, grpc_status, rate_limited)


def backoff_delay(retry_number: int, r: float, *, base: float = DEFAULT_BACKOFF_BASE,
                  max_interval: float | None = None) -> float:
    """Seconds to wait before retry `retry_number` (1 for the first retry), r in [0, 1):
    Envoy's fully jittered exponential back-off as its source computes it
    (JitteredExponentialBackOffStrategy): uniform below base × 2^(N-1), the interval
    capped at `max_interval` (10 × base by default): below 25, 50, 100, 200, then
    250 ms with the default base. (Envoy's router documentation gives (2^N - 1) × base;
    its code doubles from the base.)"""
    if retry_number < 1:
        raise ValueError("retry_number counts retries from 1")
    cap = max_interval if max_interval is not None else 10 * base
    upper = min(base * (1 << min(retry_number - 1, 62)), cap)
    return r * upper
