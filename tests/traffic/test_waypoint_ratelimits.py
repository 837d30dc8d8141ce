"""The waypoint's RequestLimits: which rate limits a request takes (by waypoint, service,
route and route rule, per source), what is answered over the limit (HTTP and gRPC), the
headers added otherwise, and buckets kept across configuration changes. Times are given."""
from __future__ import annotations

import ipaddress
import types

import pytest

from meshcore.identity.spiffe import SpiffeId
from meshcore.state import Kind, MeshStore, Remove, Service, Upsert
from meshcore.traffic.decide import CORS_PREFLIGHT, LocalReply
from meshcore.traffic.gateway_api import grpc_route, http_route
from meshcore.traffic.ratelimit_config import HeaderToAdd, rate_limit_policy
from meshcore.waypoint.destination import rate_limit
from meshcore.waypoint.ratelimits import NO_LIMIT, Limited, RateHeaders, RequestLimits, route_ref

WAYPOINT = ("shop", "waypoint")
WEB = SpiffeId("cluster.local", "shop", "web")
CART = SpiffeId("cluster.local", "shop", "cart")
GATEWAY = "gateway.networking.k8s.io"


def svc(name: str, vip: str) -> Service:
    return Service(name=name, namespace="shop", hostname=f"{name}.shop.svc.cluster.local",
                   vips=(("", ipaddress.ip_address(vip)),), ports=((80, 8080), (9090, 9090)))


REVIEWS, RATINGS = svc("reviews", "10.96.0.1"), svc("ratings", "10.96.0.2")


def lrl(name: str, *targets, tokens: int = 2, per_source: bool = False, interval: str = "1s",
        namespace: str = "shop"):
    spec = {"targetRefs": [dict(t) for t in targets],
            "tokenBucket": {"maxTokens": tokens, "tokensPerFill": 1, "fillInterval": interval}}
    if per_source:
        spec["perSource"] = True
    return rate_limit_policy({"apiVersion": "meshcore.dev/v1alpha1", "kind": "LocalRateLimit",
                              "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def envoy_filter(name: str = "wp", *, tokens: int = 1, enabled: int = 100, enforced: int = 100, **extra):
    config = {"stat_prefix": "rl", "token_bucket": {"max_tokens": tokens, "fill_interval": "1s"},
              "filter_enabled": {"default_value": {"numerator": enabled}},
              "filter_enforced": {"default_value": {"numerator": enforced}},
              "enable_x_ratelimit_headers": "DRAFT_VERSION_03", **extra}
    return rate_limit_policy({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"targetRefs": [{"kind": "Gateway", "group": GATEWAY, "name": "waypoint"}],
                 "configPatches": [{"applyTo": "HTTP_FILTER", "patch": {
                     "operation": "INSERT_BEFORE",
                     "value": {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                         **config}}}}]}})


ROUTE = http_route({"apiVersion": f"{GATEWAY}/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "shop"},
                    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                             "rules": [{"name": "api", "matches": [{"path": {"value": "/api"}}],
                                        "backendRefs": [{"name": "reviews", "port": 80}]},
                                       {"backendRefs": [{"name": "reviews", "port": 80}]}]}})
GRPC_ROUTE = grpc_route({"apiVersion": f"{GATEWAY}/v1", "kind": "GRPCRoute",
                         "metadata": {"name": "r", "namespace": "shop"},
                         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                                  "rules": [{"name": "calls", "backendRefs": [{"name": "reviews", "port": 80}]}]}})

BY_WAYPOINT = {"group": GATEWAY, "kind": "Gateway", "name": "waypoint"}
EVERY_WAYPOINT = {"group": GATEWAY, "kind": "GatewayClass", "name": "istio-waypoint"}
BY_SERVICE = {"group": "", "kind": "Service", "name": "reviews"}
BY_ROUTE = {"group": GATEWAY, "kind": "HTTPRoute", "name": "r"}
BY_RULE = {"group": GATEWAY, "kind": "HTTPRoute", "name": "r", "sectionName": "api"}
BY_GRPC_ROUTE = {"group": GATEWAY, "kind": "GRPCRoute", "name": "r"}


def store_with(*resources) -> MeshStore:
    store = MeshStore(layer="l7")
    store.apply("files", [Upsert(r) for r in (REVIEWS, RATINGS, ROUTE, *resources)])
    return store


def answers(limits: RequestLimits, view, requests) -> list:
    """For each (now, service, port, route, source, grpc): 'ok' or the status answered."""
    out = []
    for now, service, port, route, source, grpc in requests:
        got = limits.check(view, waypoint=WAYPOINT, service=service, port=port, route=route, source=source,
                           grpc=grpc, now=now)
        out.append(got.status if isinstance(got, Limited) else "ok")
    return out


R, A, B = "shop.r.0", "shop.r.0", "shop.r.1"        # the rule named api, the unnamed rule


@pytest.mark.parametrize("policy, requests, expected", [
    # by waypoint: every request through it, whatever the service, port or route
    (lrl("w", BY_WAYPOINT), [(0, REVIEWS, 80, A, None, False), (0, RATINGS, 80, "", None, False),
                             (0, None, 8080, "", None, False)], ["ok", "ok", 429]),
    (lrl("all", EVERY_WAYPOINT, tokens=1, namespace="istio-system"), [(0, RATINGS, 80, "", None, False)] * 2, ["ok", 429]),
    # by service: that service only
    (lrl("s", BY_SERVICE, tokens=1), [(0, REVIEWS, 80, "", None, False), (0, RATINGS, 80, "", None, False),
                                      (0, REVIEWS, 9090, B, None, False)], ["ok", "ok", 429]),
    # by route: its rules share one bucket; by rule: that rule only
    (lrl("r", BY_ROUTE, tokens=1), [(0, REVIEWS, 80, A, None, False), (0, REVIEWS, 80, B, None, False)], ["ok", 429]),
    (lrl("a", BY_RULE, tokens=1), [(0, REVIEWS, 80, A, None, False), (0, REVIEWS, 80, B, None, False),
                                   (0, REVIEWS, 80, "", None, False), (0, REVIEWS, 80, A, None, False)],
     ["ok", "ok", "ok", 429]),
    # a route name of no route in force, or not of that shape, takes no route limit
    (lrl("r", BY_ROUTE, tokens=1), [(0, REVIEWS, 80, "shop.gone.0", None, False), (0, REVIEWS, 80, "shop.r.7", None, False),
                                    (0, REVIEWS, 80, "junk", None, False)], ["ok", "ok", "ok"]),
    # per source: a bucket per identity; requests without one share a bucket
    (lrl("p", BY_SERVICE, tokens=1, per_source=True),
     [(0, REVIEWS, 80, "", WEB, False), (0, REVIEWS, 80, "", CART, False), (0, REVIEWS, 80, "", WEB, False),
      (0, REVIEWS, 80, "", None, False), (0, REVIEWS, 80, "", None, False)], ["ok", "ok", 429, "ok", 429]),
    # the bucket fills continuously: one token a second
    (lrl("s", BY_SERVICE, tokens=1), [(0, REVIEWS, 80, "", None, False), (0.5, REVIEWS, 80, "", None, False),
                                      (1.0, REVIEWS, 80, "", None, False), (1.5, REVIEWS, 80, "", None, False)],
     ["ok", 429, "ok", 429]),
    # an EnvoyFilter's bucket is per service port
    (envoy_filter(), [(0, REVIEWS, 80, "", None, False), (0, REVIEWS, 9090, "", None, False),
                      (0, RATINGS, 80, "", None, False), (0, REVIEWS, 80, "", None, False)], ["ok", "ok", "ok", 429]),
    # another waypoint's limit is not this one's
    (lrl("o", {**BY_WAYPOINT, "name": "other"}, tokens=1), [(0, REVIEWS, 80, "", None, False)] * 2, ["ok", "ok"]),
], ids=["waypoint", "every-waypoint", "service", "route", "rule", "no-such-route", "per-source", "refill",
        "envoy-filter-per-port", "other-waypoint"])
def test_which_limits_a_request_takes(policy, requests, expected):
    store = store_with(policy)
    assert answers(RequestLimits(), store.view, requests) == expected


def test_no_limit_in_force_is_nothing_to_add():
    view = store_with().view
    got = RequestLimits().check(view, waypoint=WAYPOINT, service=REVIEWS, port=80, route=A, source=WEB, grpc=False,
                                now=0)
    assert got is NO_LIMIT and not got and got.to_response([("a", "b")]) == [("a", "b")]


def test_over_the_limit_is_answered_429_local_rate_limited_with_x_ratelimit_headers():
    view = store_with(lrl("s", BY_SERVICE, tokens=2)).view
    limits = RequestLimits()
    check = lambda now: limits.check(view, waypoint=WAYPOINT, service=REVIEWS, port=80, route="", source=None,  # noqa
                                     grpc=False, now=now)
    first, second, third = check(0), check(0), check(0.25)
    assert first == RateHeaders((("x-ratelimit-limit", "2"), ("x-ratelimit-remaining", "1"),
                                 ("x-ratelimit-reset", "0")))
    assert second.response[1] == ("x-ratelimit-remaining", "0") and second.response[2] == ("x-ratelimit-reset", "1")
    assert second.to_response([("x-ratelimit-limit", "9")]) == [("x-ratelimit-limit", "9"), *second.response]
    assert third == Limited(429, (("content-type", "text/plain"), ("content-length", "18"), ("x-ratelimit-limit", "2"),
                                  ("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")),
                            b"local_rate_limited", "LocalRateLimit/shop/s")
    assert (third.flag, third.reason, third.trailers_only, third.grpc_status) == ("RL", "local_rate_limited", False, "")


def test_a_grpc_call_over_the_limit_gets_unavailable_trailers_only():
    store = store_with(GRPC_ROUTE, lrl("g", BY_GRPC_ROUTE, tokens=1))
    limits = RequestLimits()
    check = lambda grpc: limits.check(store.view, waypoint=WAYPOINT, service=REVIEWS, port=80, route="shop.r.0",  # noqa
                                      source=None, grpc=grpc, now=0)
    # a plain HTTP request named shop.r.0 took the HTTPRoute: not the GRPCRoute's limit
    assert check(False) is NO_LIMIT
    assert isinstance(check(True), RateHeaders)
    refused = check(True)
    assert (refused.status, refused.body, refused.trailers_only, refused.grpc_status) == (200, b"", True, "14")
    assert refused.headers[:3] == (("content-type", "application/grpc"), ("grpc-status", "14"),
                                   ("grpc-message", "local_rate_limited"))
    assert ("x-ratelimit-remaining", "0") in refused.headers


def test_an_envoy_filter_status_and_resource_exhausted():
    view = store_with(envoy_filter(status={"code": 503}, rate_limited_as_resource_exhausted=True,
                                   response_headers_to_add=[{"append": False,
                                                             "header": {"key": "x-local-rate-limit",
                                                                        "value": "true"}}])).view
    limits = RequestLimits()
    for grpc, status in ((False, 503), (True, 200)):
        limits = RequestLimits()
        check = lambda: limits.check(view, waypoint=WAYPOINT, service=REVIEWS, port=80, route="",  # noqa
                                     source=None, grpc=grpc, now=0)
        check()
        refused = check()
        assert refused.status == status and ("x-local-rate-limit", "true") in refused.headers
        assert refused.grpc_status == ("8" if grpc else "")


def test_counted_but_not_enforced_goes_on_with_the_request_headers():
    policy = envoy_filter(enforced=0, request_headers_to_add_when_not_enforced=[
        {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {"key": "x-rl-shadow", "value": "1"}}])
    view = store_with(policy).view
    limits = RequestLimits()
    check = lambda: limits.check(view, waypoint=WAYPOINT, service=REVIEWS, port=80, route="", source=None,  # noqa
                                 grpc=False, now=0)
    assert check().request == ()
    over = check()
    assert isinstance(over, RateHeaders) and over.limited_by == "EnvoyFilter/shop/wp"
    assert over.request == (HeaderToAdd("x-rl-shadow", "1"),)
    assert over.to_request([("x-rl-shadow", "0"), ("a", "b")]) == [("a", "b"), ("x-rl-shadow", "1")]


def test_the_enabled_share_is_drawn_per_request():
    view = store_with(envoy_filter(enabled=50)).view
    draws = iter([0.9, 0.0, 0.1, 0.0, 0.2, 0.0, 0.7, 0.0])      # (enabled, enforced) per request
    limits = RequestLimits(rng=lambda: next(draws))
    got = [limits.check(view, waypoint=WAYPOINT, service=REVIEWS, port=80, route="", source=None, grpc=False, now=0)
           for _ in range(4)]
    # drawn above 50: not counted; below: counted (the second one counted is over)
    assert [type(g).__name__ for g in got] == ["RateHeaders", "RateHeaders", "Limited", "RateHeaders"]
    assert got[0] is NO_LIMIT and got[3] is NO_LIMIT


def test_a_configuration_change_keeps_the_tokens_of_unchanged_limits():
    store = store_with(lrl("s", BY_SERVICE, tokens=1), lrl("w", BY_WAYPOINT, tokens=3))
    limits = RequestLimits()
    limits.subscribe(store)
    check = lambda service: answers(limits, store.view, [(0, service, 80, "", None, False)])[0]  # noqa
    assert (check(REVIEWS), check(REVIEWS)) == ("ok", 429)
    used = len(limits.limiter)
    # another limit added, a route changed: the limits in force keep their buckets
    store.apply("files", [Upsert(lrl("r", BY_RULE, tokens=3))])
    store.apply("files", [Remove(Kind.HTTP_ROUTE, "shop/r")])
    assert check(REVIEWS) == 429 and len(limits.limiter) == used
    # the limit changed: it starts over, full; the waypoint's keeps its tokens (1 of 3 used
    # so far: a refusal by the service's limit, asked first, takes none of the waypoint's)
    store.apply("files", [Upsert(lrl("s", BY_SERVICE, tokens=2))])
    assert [check(REVIEWS), check(REVIEWS), check(REVIEWS)] == ["ok", "ok", 429]
    assert check(RATINGS) == 429
    # removed: nothing limits reviews but the waypoint's, and its bucket is empty
    store.apply("files", [Remove(Kind.RATE_LIMIT, "LocalRateLimit/shop/w")])
    assert check(REVIEWS) == 429
    store.apply("files", [Remove(Kind.RATE_LIMIT, "LocalRateLimit/shop/s")])
    assert check(REVIEWS) == "ok" and len(limits.limiter) == 0


def test_a_view_not_heard_of_yet_is_taken_and_an_older_one_still_answers():
    store = store_with(lrl("s", BY_SERVICE, tokens=1))
    limits = RequestLimits()                                  # not subscribed: told by the views it is given
    old = store.view
    assert answers(limits, old, [(0, REVIEWS, 80, "", None, False)]) == ["ok"]
    store.apply("files", [Upsert(lrl("w", BY_WAYPOINT, tokens=1))])
    new = store.view
    assert answers(limits, new, [(0, RATINGS, 80, "", None, False)] * 2) == ["ok", 429]
    # a request still under the old view: its limits, the same buckets
    assert answers(limits, old, [(0, REVIEWS, 80, "", None, False)]) == [429]
    assert limits.policies(new) == new.rate_limits


def test_route_names_map_to_the_route_and_its_rule_name():
    view = store_with(GRPC_ROUTE).view
    assert route_ref(view, "shop.r.0", False) == (("HTTPRoute", "shop", "r"), "api")
    assert route_ref(view, "shop.r.1", False) == (("HTTPRoute", "shop", "r"), "")
    assert route_ref(view, "shop.r.0", True) == (("GRPCRoute", "shop", "r"), "calls")
    assert route_ref(view, "shop.r.1", True) == (("HTTPRoute", "shop", "r"), "")     # the GRPCRoute has one rule
    assert route_ref(view, "", False) == route_ref(view, "shop.r", False) == route_ref(view, "shop.r.x", False) \
        == (None, "")


def test_a_change_of_another_kind_keeps_what_was_worked_out_and_the_tokens():
    store = store_with(lrl("s", BY_SERVICE, tokens=1))
    limits = RequestLimits()
    limits.subscribe(store)
    assert answers(limits, store.view, [(0, REVIEWS, 80, "", None, False)]) == ["ok"]
    remembered = limits._current.remembered
    store.apply("files", [Upsert(svc("details", "10.96.0.3"))])       # not a kind limits depend on
    assert answers(limits, store.view, [(0, REVIEWS, 80, "", None, False)]) == [429]
    assert limits._current.remembered is remembered and limits._current.view is store.view


# Envoy's fault and CORS filters run ahead of the local rate limit filter (inserted just
# before the router): an injected abort or a preflight is answered without taking a token, while the
# waypoint's other answers of its own (a redirect, a direct response, no route) are
# the router's, after the limit
@pytest.mark.parametrize("flag, reason, limited", [("FI", "", False), ("-", CORS_PREFLIGHT, False), ("NR", "", True),
                                                  ("-", "", True)])
def test_an_injected_abort_or_a_preflight_is_answered_before_the_rate_limit_takes_a_token(flag, reason, limited):
    store = store_with(lrl("s", BY_SERVICE, tokens=1))
    limits = RequestLimits()
    tunnel = types.SimpleNamespace(service=REVIEWS, request=types.SimpleNamespace(port=80, peer_identity=WEB))
    reply = LocalReply(503, "", flag=flag, reason=reason)
    got = [rate_limit(limits, store.view, WAYPOINT, tunnel, reply, False) for _ in range(2)]
    assert [isinstance(g, Limited) for g in got] == [False, limited]
    assert rate_limit(None, store.view, WAYPOINT, tunnel, reply, False) is NO_LIMIT
