"""The waypoint's endpoint choice under a DestinationRule: subsets, load balancers,
outlier ejection and its return, panic; with the clock and randomness handed in."""
from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from meshcore.node.routing import HBONE, REFUSE
from meshcore.sources.config import load
from meshcore.traffic.istio_model import RequestAttributes
from meshcore.waypoint.endpoints import EndpointPicker

MESH = """\
workloads:
- {uid: a, name: a, namespace: shop, workloadIps: ["10.0.0.1"], protocol: HBONE, labels: {version: v1},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: b, name: b, namespace: shop, workloadIps: ["10.0.0.2"], protocol: HBONE, labels: {version: v1},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: c, name: c, namespace: shop, workloadIps: ["10.0.0.3"], protocol: HBONE, labels: {version: v2},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: w, name: waypoint, namespace: shop, workloadIps: ["10.0.0.9"], protocol: HBONE}
services:
- {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
"""


def setup(policy: str):
    view = load(inline=MESH + textwrap.indent(textwrap.dedent(policy), "  "))
    service = view.by_service_key["shop/web.shop.svc.cluster.local"]
    me = view.by_uid["w"]
    rule = view.destination_rule_for(service, "shop")
    return view, service, me, rule


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def picks(picker, view, service, me, rule, n, subset="", **kw):
    return [picker.choose(view, me, service, 80, subset, rule, **kw).workload.uid for _ in range(n)]


def test_round_robin_takes_each_endpoint_in_turn_and_subsets_narrow_them():
    view, service, me, rule = setup("""\
        trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
        subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
        """)
    picker = EndpointPicker()
    assert picks(picker, view, service, me, rule, 6) == ["a", "b", "c", "a", "b", "c"]
    assert set(picks(picker, view, service, me, rule, 4, subset="v1")) == {"a", "b"}
    assert picks(picker, view, service, me, rule, 2, subset="v2") == ["c", "c"]
    route = picker.choose(view, me, service, 80, "v3", rule)
    assert route.kind is REFUSE and "no subset 'v3'" in route.reason


def test_least_request_prefers_the_endpoint_with_fewer_requests_in_flight():
    view, service, me, rule = setup("trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n")
    picker = EndpointPicker(rand=iter([0.0, 0.5] * 100).__next__)     # two choices: a and b
    first = picker.choose(view, me, service, 80, "", rule)             # a (both idle: the first)
    second = picker.choose(view, me, service, 80, "", rule)            # b: a has one in flight
    assert (first.workload.uid, second.workload.uid) == ("a", "b")
    picker.finished(first, (service.key, "", 80), status=200)
    assert picker.choose(view, me, service, 80, "", rule).workload.uid == "a"


def test_a_consistent_hash_sends_one_key_to_one_endpoint():
    view, service, me, rule = setup("trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n")
    picker = EndpointPicker()

    def request(user):
        return RequestAttributes("GET", "/", headers=(("x-user", user),))
    for user in ("alice", "bob", "carol"):
        assert len(set(picks(picker, view, service, me, rule, 5, request=request(user)))) == 1


def test_an_ejected_endpoint_is_left_out_until_its_time_is_up():
    view, service, me, rule = setup("""\
        trafficPolicy:
          loadBalancer: {simple: ROUND_ROBIN}
          outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
        """)
    clock = Clock()
    picker = EndpointPicker(clock=clock)
    key = (service.key, "", 80)
    route_a = picker.choose(view, me, service, 80, "", rule)
    assert route_a.kind is HBONE and route_a.workload.uid == "a"
    for _ in range(2):
        picker.finished(route_a, key, status=503)
    assert Counter(picks(picker, view, service, me, rule, 6)) == {"b": 3, "c": 3}
    # maxEjectionPercent 50: a second ejection (2 of 3) is not allowed
    route_b = picker.choose(view, me, service, 80, "", rule)
    for _ in range(2):
        picker.finished(route_b, key, failure="connect-failure")
    assert set(picks(picker, view, service, me, rule, 4)) == {"b", "c"}
    clock.now += 30
    assert set(picks(picker, view, service, me, rule, 6)) == {"a", "b", "c"}


@pytest.mark.parametrize("min_health, panics", [(0, False), (50, True)])
def test_panic_balances_over_every_endpoint_when_too_few_are_healthy(min_health, panics):
    view, service, me, rule = setup(f"""\
        trafficPolicy:
          loadBalancer: {{simple: ROUND_ROBIN}}
          outlierDetection: {{consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100,
                              minHealthPercent: {min_health}}}
        """)
    picker = EndpointPicker(clock=Clock())
    key = (service.key, "", 80)
    failed = set()
    for _ in range(2):                       # two endpoints fail once each and are ejected
        route = picker.choose(view, me, service, 80, "", rule)
        failed.add(route.workload.uid)
        picker.finished(route, key, status=500)
    # one of three healthy (33 %): under a 50 % threshold every endpoint is balanced over
    expected = {"a", "b", "c"} if panics else {"a", "b", "c"} - failed
    assert len(failed) == 2 and set(picks(picker, view, service, me, rule, 6)) == expected


@pytest.mark.parametrize("authority, shadow", [
    ("web.shop", "web.shop-shadow"), ("web.shop:8080", "web.shop-shadow:8080"), ("10.0.0.1:80", "10.0.0.1-shadow:80"),
    ("[fd00::1]:80", "[fd00::1]-shadow:80"), ("[fd00::1]", "[fd00::1]-shadow"),
])
def test_a_mirrors_host_is_envoys_shadow_host(authority, shadow):
    from meshcore.waypoint.mirrors import shadow_authority
    assert shadow_authority(authority) == shadow
