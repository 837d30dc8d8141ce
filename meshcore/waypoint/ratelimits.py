"""The waypoint's local rate limits: one `RequestLimits` per waypoint owns the token
buckets, follows the mesh store, and answers for each request once its route is
decided, before anything goes upstream.

    limits = RequestLimits()
    limits.subscribe(store)                   # buckets of unchanged limits keep their tokens
    answer = limits.check(view, waypoint=("shop", "waypoint"), service=service, port=9080,
                          route=where.route, source=peer_identity, grpc=grpc, now=time.monotonic())
    if isinstance(answer, Limited):           # 429 local_rate_limited (gRPC: UNAVAILABLE), flag RL
        send answer.status, answer.headers, answer.body (answer.trailers_only: one header block)
    else:                                     # RateHeaders, empty when no limit applies
        forward with answer.to_request(headers); answer.to_response(the upstream's headers)

What limits a request is worked out once per (service, port, route rule) and view,
from the view's rate limits (traffic.ratelimit.limits_for_request), and remembered:
a request no limit applies to costs a dictionary lookup. The buckets and the decision
are traffic.ratelimit's; docs/rate-limiting.md says what applies and what is answered.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from meshcore.identity.spiffe import SpiffeId
from meshcore.state.changes import Kind
from meshcore.state.model import Service
from meshcore.traffic.ratelimit import (DEFAULT_MAX_SOURCE_BUCKETS, LOCAL_RATE_LIMITED_BODY, AppliedLimit,
                                        RateLimiter, apply_headers, limits_for_request, local_reply)
from meshcore.traffic.ratelimit_config import HeaderToAdd, RateLimitPolicy

RATE_LIMITED_FLAG = "RL"                  # Envoy's response flag for a locally rate-limited request
# the kinds a change of which changes what limits a request: the limits themselves, and
# the routes whose rule names a sectionName target picks
WATCHED_KINDS = frozenset((Kind.RATE_LIMIT, Kind.HTTP_ROUTE, Kind.GRPC_ROUTE))
# at most this many (service, port, route) answers remembered per view; a client cannot
# grow it past that by the ports it sends to
MAX_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class Limited:
    """Answer the request with this and forward nothing. For gRPC, `status` is 200 and
    `headers` carry grpc-status and grpc-message: send them as the only header block,
    ending the stream (`trailers_only`, gRPC's Trailers-Only form)."""
    status: int                                  # 429, or the EnvoyFilter's status; 200 for gRPC
    headers: tuple[tuple[str, str], ...]         # content-type, content-length or grpc-*, x-ratelimit-*, the policy's
    body: bytes                                  # b"local_rate_limited"; empty for gRPC
    policy: str                                  # the key of the limit that refused it
    trailers_only: bool = False
    grpc_status: str = ""                        # gRPC: the grpc-status sent ("14": UNAVAILABLE)
    flag: str = RATE_LIMITED_FLAG                # the access log's response flag
    reason: str = LOCAL_RATE_LIMITED_BODY        # Envoy's response code details


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """The request goes on. `response`: the x-ratelimit-* headers to add to the upstream's
    response; `request`: headers to add to the request sent upstream (a limit that
    counted it as over but does not enforce, `request_headers_to_add_when_not_enforced`);
    `limited_by`: that limit's key ("" when none). Empty (false) when no limit applies."""
    response: tuple[tuple[str, str], ...] = ()
    request: tuple[HeaderToAdd, ...] = ()
    limited_by: str = ""

    def __bool__(self) -> bool:
        return bool(self.response or self.request)

    def to_request(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The forwarded request's headers (lower-case names) with `request` applied."""
        return apply_headers(headers, self.request) if self.request else headers

    def to_response(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The upstream's response headers with `response` added beside any the upstream
        sent, as Envoy adds them."""
        return [*headers, *self.response] if self.response else headers


NO_LIMIT = RateHeaders()


@dataclass(frozen=True, slots=True)
class _Applying:
    """The limits on one (service, port, route) and what deciding them needs."""
    limits: tuple[AppliedLimit, ...]
    per_source: bool             # some limit keeps a bucket per source identity
    rolls: bool                  # some limit checks or enforces a share of requests only


_NONE = _Applying((), False, False)


def route_ref(view, route: str, grpc: bool) -> tuple[tuple[str, str, str] | None, str]:
    """The route a waypoint's decision names, "namespace.name.index" (traffic.decide's
    route_name), as limits_for_request takes it: ((kind, namespace, name), the rule's
    name), or (None, "") for no route or one not in `view`. A namespace has no dots and
    the index is the last part, so a name with dots is read whole. The name does not say
    the kind: a gRPC request is matched against GRPCRoutes first, so a GRPCRoute of that
    name is taken before an HTTPRoute; other requests only take HTTPRoutes."""
    namespace, _, rest = route.partition(".")
    name, _, index = rest.rpartition(".")
    if not namespace or not name or not index.isdigit():
        return None, ""
    key, i = f"{namespace}/{name}", int(index)
    kinds = (("GRPCRoute", view.grpc_route_by_key), ("HTTPRoute", view.http_route_by_key)) if grpc else \
        (("HTTPRoute", view.http_route_by_key),)
    for kind, by_key in kinds:
        found = by_key.get(key)
        if found is not None and i < len(found.rules):
            return (kind, namespace, name), found.rules[i].name
    return None, ""


class _ViewLimits:
    """What limits requests under one view (and under every later view whose rate limits
    and routes are the same dictionaries: the store copies an index it changes)."""
    __slots__ = ("view", "policies", "remembered")

    def __init__(self, view):
        self.view = view
        self.policies: tuple[RateLimitPolicy, ...] = view.rate_limits
        self.remembered: dict[tuple, _Applying] = {}

    def same(self, view) -> bool:
        v = self.view
        return (view.rate_limit_by_key is v.rate_limit_by_key and view.http_route_by_key is v.http_route_by_key
                and view.grpc_route_by_key is v.grpc_route_by_key)

    def applying(self, view, key: tuple, waypoint, service: Service | None, port: int, route: str,
                 grpc: bool) -> _Applying:
        route_key, rule = route_ref(view, route, grpc) if route else (None, "")
        limits = tuple(limits_for_request(
            self.policies, waypoint=waypoint,
            service=(service.namespace, service.name) if service is not None else None,
            service_host=service.hostname if service is not None else "", port=port, route=route_key, rule=rule))
        found = _Applying(limits, any(a.policy.per_source for a in limits),
                          any(0 < a.policy.enabled_percent < 100 or 0 < a.policy.enforced_percent < 100
                              for a in limits)) if limits else _NONE
        if len(self.remembered) >= MAX_REMEMBERED:
            self.remembered.clear()
        self.remembered[key] = found
        return found


class RequestLimits:
    """The waypoint's rate limiter and what applies under the view in force. `rng()`
    draws in [0, 1) for a limit's enabled and enforced shares."""

    def __init__(self, *, max_source_buckets: int = DEFAULT_MAX_SOURCE_BUCKETS,
                 rng: Callable[[], float] = random.random) -> None:
        self.limiter = RateLimiter(max_source_buckets=max_source_buckets)
        self.rng = rng
        self._current: _ViewLimits | None = None
        self._retained: dict | None = None        # the rate limit index the buckets were last kept for

    # -- following the configuration -----------------------------------------------------
    def subscribe(self, store) -> Callable[[], None]:
        """Follow `store` from its view in force; returns the call that stops it."""
        self.adopt(store.view)
        return store.subscribe(lambda change: self.adopt(change.new), WATCHED_KINDS)

    def adopt(self, view) -> None:
        """`view` is now in force: the buckets of limits gone or changed are dropped, once
        per change of the rate limits (the others keep their tokens)."""
        if view.rate_limit_by_key is not self._retained:
            self.limiter.retain(view.rate_limit_by_key.values())
            self._retained = view.rate_limit_by_key
        current = self._current
        if current is None or not current.same(view):
            self._current = _ViewLimits(view)
        else:
            current.view = view

    def _for(self, view) -> _ViewLimits:
        current = self._current
        if current is not None and current.same(view):
            if view.generation > current.view.generation:
                current.view = view               # a change of other kinds: the next call is an identity test
            return current
        if current is None or view.generation >= current.view.generation:
            self.adopt(view)                      # a change not heard of yet
            return self._current
        # a request still under a view older than the one in force: worked out for it alone
        return _ViewLimits(view)

    def policies(self, view) -> tuple[RateLimitPolicy, ...]:
        """Every rate limit in force under `view`, as check() reads them."""
        return self._for(view).policies

    # -- one request ---------------------------------------------------------------------
    def check(self, view, *, waypoint: tuple[str, str], service: Service | None, port: int, route: str,
              source: SpiffeId | None, grpc: bool, now: float) -> Limited | RateHeaders:
        """The rate limits on one request through `waypoint` (namespace, name) to
        `service`:`port` (None: a workload addressed directly), taken by `route` (the
        decision's route rule, "namespace.name.index"; "" when no route applied), from
        the peer `source`, at `now` (seconds, monotonic). Call it once per request, after
        the route is decided and before anything goes upstream: it takes the tokens."""
        limits = self._current if self._current is not None and view is self._current.view else self._for(view)
        if not limits.policies:
            return NO_LIMIT
        key = (waypoint, service.namespace, service.name, service.hostname, port, route, grpc) if service is not None \
            else (waypoint, None, None, None, port, route, grpc)
        applying = limits.remembered.get(key)
        if applying is None:
            applying = limits.applying(view, key, waypoint, service, port, route, grpc)
        if not applying.limits:
            return NO_LIMIT
        enabled_roll = enforced_roll = 0.0
        if applying.rolls:
            enabled_roll, enforced_roll = self.rng() * 100, self.rng() * 100
        decision = self.limiter.decide(
            now, applying.limits, source.uri if applying.per_source and source is not None else None,
            enabled_roll=enabled_roll, enforced_roll=enforced_roll)
        if not decision.allowed:
            status, headers, body = local_reply(decision, grpc=grpc)
            return Limited(status, tuple(headers), body, decision.limited_by, trailers_only=grpc,
                           grpc_status=str(decision.grpc_status) if grpc else "")
        if not decision.headers and not decision.request_headers and not decision.limited_by:
            return NO_LIMIT
        return RateHeaders(decision.headers, decision.request_headers, decision.limited_by)


__all__ = ["Limited", "NO_LIMIT", "RateHeaders", "RequestLimits", "route_ref"]
