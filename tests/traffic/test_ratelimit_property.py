"""Over any schedule of requests, a bucket lets through at most what it holds plus what
it gained: allowed ≤ maxTokens + fills·tokensPerFill, in every window of time."""
from fractions import Fraction
from itertools import accumulate

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.traffic.ratelimit import AppliedLimit, RateLimiter
from meshcore.traffic.ratelimit_config import (Origin, RateLimitPolicy, RateLimitTarget, TargetKind,
                                               TokenBucketSpec)

specs = st.builds(lambda m, p, ms: (m, p, ms), st.integers(1, 20), st.integers(1, 10), st.integers(50, 5000))
# milliseconds between requests: bursts (0) and gaps, up to a few fill intervals
schedules = st.lists(st.integers(0, 3000) | st.just(0), min_size=1, max_size=120).map(lambda d: list(accumulate(d)))


def limit_of(max_tokens, per_fill, interval_ms, per_source=False):
    spec = TokenBucketSpec(max_tokens, per_fill, interval_ms / 1000)
    target = RateLimitTarget(TargetKind.SERVICE, "reviews")
    return AppliedLimit(RateLimitPolicy("p", "shop", Origin.LOCAL_RATE_LIMIT, (target,), spec, per_source))


def bound(max_tokens, per_fill, interval_ms, first_ms, last_ms):
    return max_tokens + Fraction(last_ms - first_ms, interval_ms) * per_fill


@settings(max_examples=300, deadline=None)
@given(specs, schedules)
def test_allowed_never_exceeds_the_bucket_in_any_window(spec, times):
    limiter, limit = RateLimiter(), limit_of(*spec)
    allowed = [limiter.decide(ms / 1000, [limit]).allowed for ms in times]
    assert allowed[:spec[0]] == [True] * min(spec[0], len(times))     # starts full
    for i in range(len(times)):
        count = 0
        for j in range(i, len(times)):
            count += allowed[j]
            assert count <= bound(*spec, times[i], times[j])


@settings(max_examples=200, deadline=None)
@given(specs, st.lists(st.tuples(st.integers(0, 3000), st.sampled_from("abc")), min_size=1, max_size=150))
def test_each_source_is_bounded_on_its_own(spec, schedule):
    limiter, limit = RateLimiter(), limit_of(*spec, per_source=True)
    now, seen = 0, {}
    for gap, source in schedule:
        now += gap
        decision = limiter.decide(now / 1000, [limit], source)
        first, count = seen.get(source, (now, 0))
        seen[source] = (first, count + decision.allowed)
        assert seen[source][1] <= bound(*spec, first, now)


@settings(max_examples=200, deadline=None)
@given(specs, schedules)
def test_headers_agree_with_the_decision(spec, times):
    limiter, limit = RateLimiter(), limit_of(*spec)
    for ms in times:
        d = limiter.decide(ms / 1000, [limit])
        h = dict(d.headers)
        assert h["x-ratelimit-limit"] == str(spec[0])
        assert 0 <= int(h["x-ratelimit-remaining"]) < spec[0]
        # refused: the wait is at least a second and at most one token's worth of time
        if not d.allowed:
            assert h["x-ratelimit-remaining"] == "0"
            assert 1 <= int(h["x-ratelimit-reset"]) <= -(-spec[2] // (1000 * spec[1])) + 1
        elif int(h["x-ratelimit-remaining"]) > 0:
            assert h["x-ratelimit-reset"] == "0"
