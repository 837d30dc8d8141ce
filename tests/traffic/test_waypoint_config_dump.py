"""A waypoint's /config_dump shows the traffic resources it reads: every route with its
conditions per parent, and the VirtualServices and DestinationRules that apply to the
services it serves, in the resources' own field names."""
from __future__ import annotations

import json

import pytest

from meshcore.waypoint.proxy import WaypointOptions, WaypointProxy

MESH = """\
workloads:
- {uid: c/waypoint, name: waypoint, namespace: shop, serviceAccount: waypoint, workloadIps: ["10.0.0.9"],
   protocol: HBONE}
- {uid: c/r1, name: r1, namespace: shop, workloadIps: ["10.0.0.2"], labels: {version: v1},
   services: {"shop/reviews.shop.svc.cluster.local": {80: 8080}}}
services:
- {name: reviews, namespace: shop, hostname: reviews.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080},
   waypoint: {destination: "/10.0.0.9"}}
- {name: ratings, namespace: shop, hostname: ratings.shop.svc.cluster.local, vips: ["/10.96.0.2"], ports: {80: 8080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}, uri: {prefix: /api}, withoutHeaders: {x-skip: {}}}]
    route: [{destination: {host: reviews, subset: v2}}]
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
    fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}}
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90, headers: {request: {set: {x-a: b}}}}
    - {destination: {host: reviews, subset: v3}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  http: [{route: [{destination: {host: ratings}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 10s}}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec: {host: ratings, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}, {group: "", kind: Service, name: gone}]
  rules:
  - matches: [{path: {value: /v1}, headers: [{name: x, value: y}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]
    backendRefs: [{name: ratings, port: 80}, {name: missing, port: 80}]
    timeouts: {request: 5s}
"""


@pytest.fixture
def dump(tmp_path):
    (tmp_path / "mesh.yaml").write_text(MESH)
    options = WaypointOptions(name="waypoint", namespace="shop", config_paths=(str(tmp_path / "mesh.yaml"),),
                              state_dir=str(tmp_path / "state"))
    proxy = WaypointProxy(options)
    proxy.files.load()
    status, content_type, body = proxy._config_dump("GET", {})
    assert status == 200 and content_type == "application/json"
    return json.loads(body)


def test_routes_show_their_conditions_per_parent(dump):
    (route,) = dump["routes"]
    assert (route["kind"], route["name"], route["namespace"]) == ("HTTPRoute", "r", "shop")
    rule = route["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"},
                                "headers": [{"name": "x", "value": "y", "type": "Exact"}]}]
    assert rule["filters"] == [{"type": "RequestHeaderModifier", "set": [{"name": "a", "value": "b"}]}]
    assert rule["timeouts"] == {"request": "5s"}
    assert rule["backendRefs"][0]["service"] == "shop/ratings.shop.svc.cluster.local"
    assert "service" not in rule["backendRefs"][1]                      # it names no service there is
    accepted, refused = route["status"]["parents"]
    assert accepted["parentRef"] == {"name": "reviews", "namespace": "shop", "kind": "Service"}
    assert [(c["type"], c["status"], c["reason"]) for c in accepted["conditions"]] == [
        ("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "BackendNotFound")]
    assert refused["conditions"][0] == {"type": "Accepted", "status": "False", "reason": "NoMatchingParent",
                                        "message": "parent service: 'gone' not found (in namespace shop)"}


def test_virtual_services_that_apply_to_a_served_service_in_their_own_field_names(dump):
    # ratings has no waypoint: this waypoint does not serve it, and its VirtualService is not shown
    (vs,) = dump["virtualServices"]
    assert vs["services"] == ["reviews.shop.svc.cluster.local"]
    assert (vs["name"], vs["namespace"], vs["hosts"]) == ("reviews", "shop", ["reviews.shop.svc.cluster.local"])
    assert vs["creationTimestamp"] == "2024-01-01T00:00:00Z"
    jason, split = vs["http"]
    assert jason["name"] == "jason"
    assert jason["match"] == [{"uri": {"prefix": "/api"}, "headers": {"end-user": {"exact": "jason"}},
                               "withoutHeaders": {"x-skip": {}}}]
    assert jason["timeout"] == "1.5s" and jason["retries"] == {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx"}
    assert jason["fault"] == {"delay": {"fixedDelay": "7s", "percentage": 100.0}}
    assert split["route"][0] == {"destination": {"host": "reviews.shop.svc.cluster.local", "subset": "v1"},
                                 "weight": 90, "headers": {"request": {"set": {"x-a": "b"}}}}


def test_destination_rules_that_apply_to_a_served_service_in_their_own_field_names(dump):
    (dr,) = dump["destinationRules"]
    assert dr["services"] == ["reviews.shop.svc.cluster.local"]
    assert dr["host"] == "reviews.shop.svc.cluster.local"
    policy = dr["trafficPolicy"]
    assert policy["loadBalancer"] == {"consistentHash": {"httpCookie": {"name": "user", "ttl": "10s"},
                                                         "ringHash": {"minimumRingSize": 1024}}}
    assert policy["outlierDetection"]["consecutive5xxErrors"] == 3
    assert policy["outlierDetection"]["interval"] == "1s"
    assert dr["subsets"] == [{"name": "v1", "labels": {"version": "v1"}},
                             {"name": "v2", "labels": {"version": "v2"},
                              "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}]


def test_the_rest_of_the_dump_is_as_it_was(dump):
    assert [s["hostname"] for s in dump["services"]] == ["reviews.shop.svc.cluster.local"]
    assert dump["waypoint"]["identity"] == "spiffe://cluster.local/ns/shop/sa/waypoint"
