"""Local rate limiting for the waypoint: token buckets and the decision for one request,
driven by explicit times (no clock inside), as Envoy's local_ratelimit filter decides.

    limits = limits_for_request(policies, waypoint=("shop", "waypoint"), service=("shop", "reviews"),
                                service_host="reviews.shop.svc.cluster.local", port=9080,
                                route=("HTTPRoute", "shop", "reviews"), rule="v2")
    decision = limiter.decide(now, limits, source="spiffe://cluster.local/ns/shop/sa/web")
    if not decision.allowed:
        status, headers, body = local_reply(decision, grpc=is_grpc)      # answer this, forward nothing
    else:
        forward (adding decision.request_headers), then add decision.headers to the response

What Envoy does, and so meshcore:
- a bucket starts full with max_tokens and gains tokens_per_fill every fill_interval,
  continuously (Envoy's token bucket since the timer-based one was retired), never
  above max_tokens; each request takes one token, and is refused when there is none.
  meshcore counts in whole nanoseconds and fractions of a token exactly, so refills
  never round in anyone's favour.
- with several limits on one request, the one that refills slowest is consulted first
  (Envoy orders matched descriptors so), and the first refusal stops: later buckets
  keep their tokens.
- x-ratelimit-limit is max_tokens, x-ratelimit-remaining the whole tokens left after
  this request, x-ratelimit-reset the whole seconds until the next token (0 while one
  is left), of the bucket that refused the request, or else of the slowest one.
  Envoy truncates that wait to whole seconds, so a wait under a second reads 0;
  meshcore rounds it up, so that a client waiting `reset` seconds finds a token.
- filter_enabled and filter_enforced are fractions: a request outside the enabled
  share is not counted; one counted but outside the enforced share goes on, with the
  policy's request_headers_when_not_enforced, and is reported as limited.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass

from meshcore.traffic.grpc import http_to_grpc_status
from meshcore.traffic.ratelimit_config import (HeaderToAdd, Origin, RateLimitPolicy, RateLimitTarget, TargetKind,
                                               TokenBucketSpec)

NANOS = 1_000_000_000
LOCAL_RATE_LIMITED_BODY = "local_rate_limited"   # Envoy's body and gRPC message for a refusal
GRPC_UNAVAILABLE = 14                             # what Envoy maps a 429 to for gRPC
GRPC_RESOURCE_EXHAUSTED = 8                       # with rate_limited_as_resource_exhausted
DEFAULT_MAX_SOURCE_BUCKETS = 10_000
X_RATELIMIT_LIMIT = "x-ratelimit-limit"
X_RATELIMIT_REMAINING = "x-ratelimit-remaining"
X_RATELIMIT_RESET = "x-ratelimit-reset"


def _nanos(now: float) -> int:
    return round(now * NANOS)


class TokenBucket:
    """One bucket. Its level is kept in units of 1/fill_interval_ns of a token, so that
    a refill of (elapsed ns × tokens_per_fill) units is exact integer arithmetic."""
    __slots__ = ("spec", "_unit", "_capacity", "_level", "_at")

    def __init__(self, spec: TokenBucketSpec, now: float) -> None:
        self.spec = spec
        self._unit = max(1, round(spec.fill_interval * NANOS))      # units in one token
        self._capacity = spec.max_tokens * self._unit
        self._level = self._capacity                                 # Envoy's buckets start full
        self._at = _nanos(now)

    def _refill(self, now: float) -> None:
        t = _nanos(now)
        if t > self._at:            # a time before the last one (reordered callers) adds nothing
            self._level = min(self._capacity, self._level + (t - self._at) * self.spec.tokens_per_fill)
            self._at = t

    def try_take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._level < self._unit:
            return False
        self._level -= self._unit
        return True

    def remaining(self, now: float) -> int:
        """Whole tokens in the bucket."""
        self._refill(now)
        return self._level // self._unit

    def seconds_until_token(self, now: float) -> int:
        """Whole seconds, rounded up, until a token is there; 0 while one is."""
        self._refill(now)
        missing = self._unit - self._level
        if missing <= 0:
            return 0
        nanos = -(-missing // self.spec.tokens_per_fill)
        return -(-nanos // NANOS)


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    """A policy applying to a request, and which of its buckets: `scope` names it (see
    limits_for_request), so that requests sharing a scope share a bucket."""
    policy: RateLimitPolicy
    scope: Hashable = ()


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool                                     # False: answer now with `status`, do not forward
    headers: tuple[tuple[str, str], ...] = ()         # x-ratelimit-*: add to the response either way
    status: int = 0                                   # when refused: 429, or the policy's status
    grpc_status: int = 0                              # when refused and the request is gRPC
    response_headers: tuple[HeaderToAdd, ...] = ()    # when refused: the policy's response_headers_to_add
    request_headers: tuple[HeaderToAdd, ...] = ()     # limited, not enforced: add to the forwarded request
    limited_by: str = ""                              # the policy whose bucket was empty ("": none)

    @property
    def limited(self) -> bool:
        """A bucket was empty, whether or not the request was refused (Envoy's rate_limited)."""
        return bool(self.limited_by)


ALLOWED = RateDecision(True)


def _x_ratelimit(bucket: TokenBucket, now: float) -> tuple[tuple[str, str], ...]:
    return ((X_RATELIMIT_LIMIT, str(bucket.spec.max_tokens)),
            (X_RATELIMIT_REMAINING, str(bucket.remaining(now))),
            (X_RATELIMIT_RESET, str(bucket.seconds_until_token(now))))


class RateLimiter:
    """The buckets of every limit in force, keyed by (policy, its bucket settings,
    scope, source identity when per source). Buckets of shared limits are as many as
    the configuration's attachments; per-source buckets are bounded: at most
    `max_source_buckets` in all, the least recently used forgotten first. A forgotten
    source starts again with a full bucket, so the bound can let a source through
    sooner, never later."""

    def __init__(self, max_source_buckets: int = DEFAULT_MAX_SOURCE_BUCKETS) -> None:
        if max_source_buckets < 1:
            raise ValueError("max_source_buckets must be at least 1")
        self.max_source_buckets = max_source_buckets
        self._shared: dict[tuple, TokenBucket] = {}
        self._per_source: OrderedDict[tuple, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._shared) + len(self._per_source)

    @property
    def source_buckets(self) -> int:
        return len(self._per_source)

    def bucket(self, now: float, limit: AppliedLimit, source: str | None = None) -> TokenBucket:
        """The bucket a request of `source` takes from under `limit`, made full when new."""
        p = limit.policy
        if not p.per_source:
            key = (p.key, p.bucket, limit.scope)
            found = self._shared.get(key)
            if found is None:
                found = self._shared[key] = TokenBucket(p.bucket, now)
            return found
        # requests without a peer identity share one bucket
        key = (p.key, p.bucket, limit.scope, source or "")
        found = self._per_source.get(key)
        if found is not None:
            self._per_source.move_to_end(key)
            return found
        found = self._per_source[key] = TokenBucket(p.bucket, now)
        while len(self._per_source) > self.max_source_buckets:
            self._per_source.popitem(last=False)
        return found

    def decide(self, now: float, limits: Iterable[AppliedLimit], source: str | None = None, *,
               enabled_roll: float = 0.0, enforced_roll: float = 0.0) -> RateDecision:
        """Whether the request goes on. `source` is its peer's SPIFFE id (for per-source
        limits); the rolls are the caller's uniform draws in [0, 100) for the enabled
        and enforced shares, one each per request (0: every share above 0 % applies)."""
        # slowest-filling first, as Envoy orders the descriptors a request matched
        ordered = sorted((limit for limit in limits if enabled_roll < limit.policy.enabled_percent),
                         key=lambda limit: limit.policy.bucket.fill_rate)
        if not ordered:
            return ALLOWED
        shown: TokenBucket | None = None           # whose x-ratelimit-* an allowed request gets
        shadowed: AppliedLimit | None = None
        for limit in ordered:
            bucket = self.bucket(now, limit, source)
            if shown is None and limit.policy.x_ratelimit_headers:
                shown = bucket
            if bucket.try_take(now):
                continue
            p = limit.policy
            if enforced_roll < p.enforced_percent:
                grpc = GRPC_RESOURCE_EXHAUSTED if p.grpc_resource_exhausted else http_to_grpc_status(p.status)
                return RateDecision(False, _x_ratelimit(bucket, now) if p.x_ratelimit_headers else (), p.status,
                                    grpc, p.response_headers, (), p.key)
            shadowed = shadowed or limit
        headers = _x_ratelimit(shown, now) if shown is not None else ()
        if shadowed is None:
            return RateDecision(True, headers)
        return RateDecision(True, headers, request_headers=shadowed.policy.request_headers_when_not_enforced,
                            limited_by=shadowed.policy.key)

    def retain(self, policies: Iterable[RateLimitPolicy]) -> None:
        """After a configuration change: forget the buckets of policies gone or whose
        bucket settings changed; the others keep their tokens."""
        live = {(p.key, p.bucket) for p in policies}
        self._shared = {k: b for k, b in self._shared.items() if k[:2] in live}
        for key in [k for k in self._per_source if k[:2] not in live]:
            del self._per_source[key]


# -- which limits a request takes ------------------------------------------------------------

_SPECIFICITY = {TargetKind.GATEWAY_CLASS: -1, TargetKind.GATEWAY: 0, TargetKind.SERVICE: 1,
                TargetKind.HTTP_ROUTE: 2, TargetKind.GRPC_ROUTE: 2}


def _matches(target: RateLimitTarget, namespace: str, *, waypoint, service, route, rule: str) -> bool:
    if target.kind is TargetKind.GATEWAY_CLASS:
        return waypoint is not None
    if target.kind is TargetKind.GATEWAY:
        return waypoint == (namespace, target.name)
    if target.kind is TargetKind.SERVICE:
        return service == (namespace, target.name)
    return (route == (target.kind.value, namespace, target.name)
            and (not target.section_name or target.section_name == rule))


def limits_for_request(policies: Sequence[RateLimitPolicy], *, waypoint: tuple[str, str] | None = None,
                       service: tuple[str, str] | None = None, service_host: str = "", port: int = 0,
                       route: tuple[str, str, str] | None = None, rule: str = "") -> list[AppliedLimit]:
    """The limits on one request through `waypoint` (namespace, name) to `service`
    (namespace, name; its hostname and port), taken by `route` (kind, namespace, name)
    and its rule named `rule` (may be ""). One bucket per policy:
    - a LocalRateLimit counts the request against its most specific matching target
      (a route rule over a route, a route over a Service, a Service over the Gateway,
      the Gateway over the istio-waypoint GatewayClass),
      each target being one bucket: targeting an HTTPRoute, its rules share a bucket;
      targeting one rule by sectionName, that rule has its own.
    - an EnvoyFilter's filter sits in each of the waypoint's per-service-port filter
      chains, each with its own bucket (Envoy builds one filter config per chain): the
      scope is (service hostname, port)."""
    out = []
    for p in policies:
        found = [t for t in p.targets
                 if _matches(t, p.namespace, waypoint=waypoint, service=service, route=route, rule=rule)]
        if not found:
            continue
        if p.origin is Origin.ENVOY_FILTER:
            out.append(AppliedLimit(p, (service_host, port)))
        else:
            best = max(found, key=lambda t: (_SPECIFICITY[t.kind], bool(t.section_name)))
            out.append(AppliedLimit(p, best))
    return out


def attached(policy: RateLimitPolicy, *, waypoint: tuple[str, str], services: Collection[tuple[str, str]] = (),
             routes: Collection[tuple[str, str, str]] = ()) -> bool:
    """Whether `policy` can limit requests through `waypoint` (namespace, name): it targets
    that waypoint, every waypoint, one of the `services` (namespace, name) it serves, or
    one of the `routes` (kind, namespace, name) attached to them (any rule of it)."""
    ns = policy.namespace
    for t in policy.targets:
        if t.kind is TargetKind.GATEWAY_CLASS:
            return True
        if t.kind is TargetKind.GATEWAY:
            if (ns, t.name) == waypoint:
                return True
        elif t.kind is TargetKind.SERVICE:
            if (ns, t.name) in services:
                return True
        elif (t.kind.value, ns, t.name) in routes:
            return True
    return False


# -- the answer to a refused request -------------------------------------------------------------

def apply_headers(headers: list[tuple[str, str]], to_add: Iterable[HeaderToAdd]) -> list[tuple[str, str]]:
    """`headers` (lower-case names) with `to_add` applied as Envoy's HeaderValueOption
    does: overwrite replaces every same-named header, ADD_IF_ABSENT adds only a header
    not there yet, and otherwise the header is added beside any others."""
    out = list(headers)
    for h in to_add:
        present = any(n == h.name for n, _ in out)
        if h.if_absent and present:
            continue
        if h.overwrite:
            out = [(n, v) for n, v in out if n != h.name]
        out.append((h.name, h.value))
    return out


def local_reply(decision: RateDecision, *, grpc: bool = False) -> tuple[int, list[tuple[str, str]], bytes]:
    """What the waypoint answers a refused request with, as Envoy's local reply: status,
    headers and body. For gRPC, a trailers-only answer: HTTP 200, grpc-status and
    grpc-message in the headers, no body."""
    if decision.allowed:
        raise ValueError("an allowed request is forwarded, not answered")
    if grpc:
        headers = [("content-type", "application/grpc"), ("grpc-status", str(decision.grpc_status)),
                   ("grpc-message", LOCAL_RATE_LIMITED_BODY), *decision.headers]
        return 200, apply_headers(headers, decision.response_headers), b""
    body = LOCAL_RATE_LIMITED_BODY.encode()
    headers = [("content-type", "text/plain"), ("content-length", str(len(body))), *decision.headers]
    return decision.status, apply_headers(headers, decision.response_headers), body
