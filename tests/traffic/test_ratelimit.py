"""Token buckets and the rate limit decision, driven by explicit times."""
import pytest

from meshcore.traffic.ratelimit import (GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE, AppliedLimit, RateLimiter,
                                        TokenBucket, apply_headers, limits_for_request, local_reply)
from meshcore.traffic.ratelimit_config import (HeaderToAdd, Origin, RateLimitPolicy, RateLimitTarget, TargetKind,
                                               TokenBucketSpec)

GATEWAY = RateLimitTarget(TargetKind.GATEWAY, "waypoint")
SERVICE = RateLimitTarget(TargetKind.SERVICE, "reviews")


def policy(max_tokens=2, per_fill=1, interval=1.0, name="limit", **kw):
    kw.setdefault("targets", (SERVICE,))
    return RateLimitPolicy(name, "shop", kw.pop("origin", Origin.LOCAL_RATE_LIMIT), kw.pop("targets"),
                           TokenBucketSpec(max_tokens, per_fill, interval), **kw)


def takes(bucket, times):
    return [bucket.try_take(t) for t in times]


# -- the bucket --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, times, expected", [
    # starts full: a burst of max_tokens, then nothing
    ((3, 1, 1.0), [0, 0, 0, 0], [True, True, True, False]),
    # one token per second: back exactly at the fill interval, not a nanosecond before
    ((1, 1, 1.0), [0, 0.999999999, 1.0], [True, False, True]),
    # tokens_per_fill arrive continuously: 4 per 2 s is one every 0.5 s
    ((4, 4, 2.0), [0, 0, 0, 0, 0.25, 0.5, 0.75, 1.0], [True, True, True, True, False, True, False, True]),
    # a long idle time never fills above max_tokens
    ((2, 1, 1.0), [0, 0, 100, 100, 100], [True, True, True, True, False]),
    # fractional fills add up: 1 token per 3 s, at 1 s steps
    ((1, 1, 3.0), [0, 1, 2, 3, 4, 5, 6], [True, False, False, True, False, False, True]),
    # 50 ms intervals, Envoy's shortest
    ((1, 1, 0.05), [0, 0.04, 0.05, 0.09, 0.1], [True, False, True, False, True]),
    # a time before the last one (callers out of order) adds nothing and takes nothing away
    ((1, 1, 1.0), [10, 5, 10.5, 11], [True, False, False, True]),
])
def test_refill_arithmetic(spec, times, expected):
    bucket = TokenBucket(TokenBucketSpec(*spec), times[0])
    assert takes(bucket, times) == expected


def test_refill_is_exact_over_many_small_steps():
    # 1000 steps of 1 ms at 1 token per second add exactly one token: no float drift
    bucket = TokenBucket(TokenBucketSpec(1, 1, 1.0), 0.0)
    assert bucket.try_take(0.0)
    for ms in range(1, 1000):
        assert not bucket.try_take(ms / 1000)
    assert bucket.try_take(1.0)


@pytest.mark.parametrize("spec, taken, now, remaining, reset", [
    ((10, 1, 1.0), 0, 0.0, 10, 0),
    ((10, 1, 1.0), 10, 0.0, 0, 1),
    ((10, 1, 1.0), 10, 0.4, 0, 1),          # 0.6 s to go: rounded up, never 0 while empty
    ((10, 1, 60.0), 10, 0.0, 0, 60),
    ((10, 1, 60.0), 10, 59.5, 0, 1),
    ((10, 10, 60.0), 10, 0.0, 0, 6),        # 10 per minute: one every 6 s
    ((10, 1, 1.0), 10, 3.5, 3, 0),
    ((5, 1, 0.05), 5, 0.0, 0, 1),
])
def test_remaining_and_reset(spec, taken, now, remaining, reset):
    bucket = TokenBucket(TokenBucketSpec(*spec), 0.0)
    assert takes(bucket, [0.0] * taken) == [True] * taken
    assert bucket.remaining(now) == remaining
    assert bucket.seconds_until_token(now) == reset


# -- the decision -------------------------------------------------------------------------------

def test_burst_then_429_with_headers():
    limiter, limit = RateLimiter(), AppliedLimit(policy(max_tokens=3, interval=10.0))
    decisions = [limiter.decide(0.0, [limit]) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [dict(d.headers)["x-ratelimit-remaining"] for d in decisions] == ["2", "1", "0", "0"]
    refused = decisions[-1]
    assert refused.status == 429 and refused.grpc_status == GRPC_UNAVAILABLE
    assert refused.headers == (("x-ratelimit-limit", "3"), ("x-ratelimit-remaining", "0"),
                               ("x-ratelimit-reset", "10"))
    assert refused.limited and refused.limited_by == "LocalRateLimit/shop/limit"
    assert not decisions[0].limited
    assert limiter.decide(10.0, [limit]).allowed


def test_no_limits_allows_without_headers():
    d = RateLimiter().decide(0.0, [])
    assert d.allowed and d.headers == () and not d.limited


def test_refusal_carries_the_policys_status_headers_and_grpc_status():
    p = policy(max_tokens=1, status=503, grpc_resource_exhausted=True, x_ratelimit_headers=False,
               response_headers=(HeaderToAdd("x-local-rate-limit", "true"),))
    limiter = RateLimiter()
    assert limiter.decide(0, [AppliedLimit(p)]).headers == ()
    d = limiter.decide(0, [AppliedLimit(p)])
    assert (d.allowed, d.status, d.grpc_status, d.headers) == (False, 503, GRPC_RESOURCE_EXHAUSTED, ())
    assert d.response_headers == (HeaderToAdd("x-local-rate-limit", "true"),)


@pytest.mark.parametrize("status, grpc_status", [(429, 14), (503, 14), (403, 7), (401, 16), (400, 13),
                                                 (404, 12), (500, 2)])
def test_grpc_status_as_envoy_maps_the_http_status(status, grpc_status):
    limiter, limit = RateLimiter(), AppliedLimit(policy(max_tokens=1, status=status))
    limiter.decide(0, [limit])
    assert limiter.decide(0, [limit]).grpc_status == grpc_status


def test_per_source_buckets_are_isolated():
    limiter, limit = RateLimiter(), AppliedLimit(policy(max_tokens=1, per_source=True))
    a, b = "spiffe://cluster.local/ns/shop/sa/a", "spiffe://cluster.local/ns/shop/sa/b"
    assert limiter.decide(0, [limit], a).allowed
    assert not limiter.decide(0, [limit], a).allowed
    assert limiter.decide(0, [limit], b).allowed          # b has its own bucket
    assert limiter.decide(0, [limit], None).allowed       # requests without identity share one
    assert not limiter.decide(0, [limit], "").allowed
    assert limiter.source_buckets == 3


def test_shared_limits_ignore_the_source():
    limiter, limit = RateLimiter(), AppliedLimit(policy(max_tokens=1))
    assert limiter.decide(0, [limit], "spiffe://a").allowed
    assert not limiter.decide(0, [limit], "spiffe://b").allowed


def test_scopes_are_separate_buckets():
    limiter, p = RateLimiter(), policy(max_tokens=1)
    assert limiter.decide(0, [AppliedLimit(p, ("a.shop.svc.cluster.local", 80))]).allowed
    assert limiter.decide(0, [AppliedLimit(p, ("a.shop.svc.cluster.local", 81))]).allowed
    assert not limiter.decide(0, [AppliedLimit(p, ("a.shop.svc.cluster.local", 80))]).allowed


def test_per_source_buckets_are_bounded_least_recently_used_first():
    limiter, limit = RateLimiter(max_source_buckets=2), AppliedLimit(policy(max_tokens=1, per_source=True))
    assert limiter.decide(0, [limit], "a").allowed
    assert limiter.decide(0, [limit], "b").allowed
    assert not limiter.decide(0, [limit], "a").allowed    # a is now the most recently used
    assert limiter.decide(0, [limit], "c").allowed        # forgets b, the least recently used
    assert limiter.source_buckets == 2
    assert not limiter.decide(0, [limit], "a").allowed    # a was kept, still empty
    assert limiter.decide(0, [limit], "b").allowed        # b starts again full
    with pytest.raises(ValueError):
        RateLimiter(max_source_buckets=0)


def test_many_sources_never_exceed_the_bound():
    limiter, limit = RateLimiter(max_source_buckets=100), AppliedLimit(policy(per_source=True))
    for i in range(10_000):
        limiter.decide(i / 1000, [limit], f"spiffe://cluster.local/ns/n/sa/{i}")
    assert limiter.source_buckets == 100 and len(limiter) == 100


def test_slowest_limit_first_and_a_refusal_stops():
    slow = policy(max_tokens=1, interval=60.0, name="slow")
    fast = policy(max_tokens=5, interval=1.0, name="fast")
    limiter = RateLimiter()
    first = limiter.decide(0, [AppliedLimit(fast), AppliedLimit(slow)])
    assert first.allowed and dict(first.headers)["x-ratelimit-limit"] == "1"   # the slowest bucket shows
    second = limiter.decide(0, [AppliedLimit(fast), AppliedLimit(slow)])
    assert not second.allowed and second.limited_by == "LocalRateLimit/shop/slow"
    # the refusal by the slow bucket left the fast one its tokens: 4 of 5 remain
    assert limiter.bucket(0, AppliedLimit(fast)).remaining(0) == 4


def test_enabled_and_enforced_shares():
    p = policy(max_tokens=1, enabled_percent=50.0, enforced_percent=10.0,
               request_headers_when_not_enforced=(HeaderToAdd("x-limited", "1"),))
    limiter, limit = RateLimiter(), AppliedLimit(p)
    # outside the enabled share: not counted, no headers
    skipped = limiter.decide(0, [limit], enabled_roll=50.0)
    assert skipped.allowed and skipped.headers == () and limiter.bucket(0, limit).remaining(0) == 1
    assert limiter.decide(0, [limit], enabled_roll=49.9).allowed                  # takes the token
    shadow = limiter.decide(0, [limit], enforced_roll=10.0)                        # limited, not enforced
    assert shadow.allowed and shadow.limited and shadow.request_headers == (HeaderToAdd("x-limited", "1"),)
    assert not limiter.decide(0, [limit], enforced_roll=9.9).allowed


def test_envoy_filter_defaults_check_nothing():
    # Envoy: without filter_enabled the filter consults no bucket
    limiter, limit = RateLimiter(), AppliedLimit(policy(max_tokens=1, enabled_percent=0.0))
    assert all(limiter.decide(0, [limit]).allowed for _ in range(5)) and len(limiter) == 0


def test_retain_forgets_gone_and_changed_limits_and_keeps_the_rest():
    kept, changed, gone = policy(max_tokens=1, name="kept"), policy(max_tokens=1, name="changed"), \
        policy(max_tokens=1, name="gone", per_source=True)
    limiter = RateLimiter()
    for p in (kept, changed, gone):
        limiter.decide(0, [AppliedLimit(p)], "spiffe://a")
    limiter.retain([kept, policy(max_tokens=2, name="changed")])
    assert len(limiter) == 1 and limiter.source_buckets == 0
    assert not limiter.decide(0, [AppliedLimit(kept)]).allowed                    # kept its empty bucket
    assert limiter.decide(0, [AppliedLimit(policy(max_tokens=2, name="changed"))]).allowed


# -- which limits a request takes -----------------------------------------------------------------

ROUTE = RateLimitTarget(TargetKind.HTTP_ROUTE, "reviews")
CLASS = RateLimitTarget(TargetKind.GATEWAY_CLASS, "istio-waypoint")
RULE = RateLimitTarget(TargetKind.HTTP_ROUTE, "reviews", "v2")
REQUEST = dict(waypoint=("shop", "waypoint"), service=("shop", "reviews"),
               service_host="reviews.shop.svc.cluster.local", port=9080,
               route=("HTTPRoute", "shop", "reviews"), rule="v2")


@pytest.mark.parametrize("targets, request_changes, scope", [
    ((GATEWAY,), {}, GATEWAY),
    ((SERVICE,), {}, SERVICE),
    ((GATEWAY, SERVICE), {}, SERVICE),                      # the most specific target counts
    ((CLASS,), {}, CLASS),
    ((CLASS, GATEWAY), {}, GATEWAY),
    ((CLASS,), {"waypoint": None}, None),
    ((GATEWAY, SERVICE, ROUTE), {}, ROUTE),
    ((ROUTE, RULE), {}, RULE),
    ((ROUTE, RULE), {"rule": "v1"}, ROUTE),
    ((RULE,), {"rule": "v1"}, None),
    ((RULE,), {"rule": ""}, None),
    ((SERVICE,), {"service": ("other", "reviews")}, None),  # targets are in the policy's namespace
    ((GATEWAY,), {"waypoint": ("shop", "other")}, None),
    ((RateLimitTarget(TargetKind.GRPC_ROUTE, "reviews"),), {}, None),
    ((RateLimitTarget(TargetKind.GRPC_ROUTE, "reviews"),), {"route": ("GRPCRoute", "shop", "reviews")},
     RateLimitTarget(TargetKind.GRPC_ROUTE, "reviews")),
])
def test_limits_for_request(targets, request_changes, scope):
    p = policy(targets=targets)
    found = limits_for_request([p], **{**REQUEST, **request_changes})
    assert found == ([] if scope is None else [AppliedLimit(p, scope)])


def test_envoy_filter_bucket_per_service_port():
    p = policy(targets=(GATEWAY,), origin=Origin.ENVOY_FILTER)
    assert limits_for_request([p], **REQUEST) == [AppliedLimit(p, ("reviews.shop.svc.cluster.local", 9080))]
    other = limits_for_request([p], **{**REQUEST, "port": 9081})
    assert other[0].scope != limits_for_request([p], **REQUEST)[0].scope


# -- the answer ------------------------------------------------------------------------------------

def refused(**kw):
    limiter, limit = RateLimiter(), AppliedLimit(policy(max_tokens=1, interval=30.0, **kw))
    limiter.decide(0, [limit])
    return limiter.decide(0, [limit])


def test_local_reply_http():
    status, headers, body = local_reply(refused(response_headers=(HeaderToAdd("x-local-rate-limit", "true"),)))
    assert (status, body) == (429, b"local_rate_limited")
    assert headers == [("content-type", "text/plain"), ("content-length", "18"), ("x-ratelimit-limit", "1"),
                       ("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30"), ("x-local-rate-limit", "true")]


def test_local_reply_grpc_is_trailers_only():
    status, headers, body = local_reply(refused(grpc_resource_exhausted=True), grpc=True)
    assert (status, body) == (200, b"")
    assert headers[:3] == [("content-type", "application/grpc"), ("grpc-status", "8"),
                           ("grpc-message", "local_rate_limited")]
    assert local_reply(refused(), grpc=True)[1][1] == ("grpc-status", "14")
    with pytest.raises(ValueError):
        local_reply(RateLimiter().decide(0, []))


@pytest.mark.parametrize("to_add, expected", [
    (HeaderToAdd("x-a", "2", overwrite=False), [("x-a", "1"), ("x-b", "1"), ("x-a", "2")]),    # append
    (HeaderToAdd("x-a", "2", overwrite=True), [("x-b", "1"), ("x-a", "2")]),                   # replace all
    (HeaderToAdd("x-a", "2", if_absent=True), [("x-a", "1"), ("x-b", "1")]),                   # kept
    (HeaderToAdd("x-c", "2", if_absent=True), [("x-a", "1"), ("x-b", "1"), ("x-c", "2")]),     # added
])
def test_apply_headers(to_add, expected):
    assert apply_headers([("x-a", "1"), ("x-b", "1")], [to_add]) == expected
