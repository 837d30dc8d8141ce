"""Istio's Bookinfo traffic-management examples (request routing, fault injection,
traffic shifting, circuit breaking), as the waypoint decides them: the same YAML users
apply, the outcomes Istio's documentation describes."""
from dataclasses import dataclass

import yaml

from meshcore.traffic.destinationrule import cluster_policy, destination_rule, subset_endpoints
from meshcore.traffic.istio_model import RequestAttributes as Req
from meshcore.traffic.outlier import OutlierDetector
from meshcore.traffic.virtualservice import virtual_service
from meshcore.traffic.virtualservice_select import (
    choose_destination, fault_decision, select_http_route, waypoint_virtual_services,
)

DESTINATION_RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: bookinfo}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

JASON = Req("GET", "/reviews/0", "reviews:9080", headers=(("end-user", "jason"),), port=9080)
ANONYMOUS = Req("GET", "/reviews/0", "reviews:9080", port=9080)


def load(text):
    return [virtual_service(d) if d["kind"] == "VirtualService" else destination_rule(d)
            for d in yaml.safe_load_all(text)]


def decide(vs_yaml, request, r=0.5):
    vss = waypoint_virtual_services(load(vs_yaml), hostname=load(vs_yaml)[0].hosts[0],
                                    service_namespace="bookinfo", waypoint_namespace="bookinfo")
    selected = select_http_route(vss, request, waypoint_namespace="bookinfo")
    return selected, choose_destination(selected.route, r).destination


@dataclass(frozen=True)
class Pod:
    name: str
    labels: tuple


PODS = [Pod(f"reviews-{v}", (("app", "reviews"), ("version", v))) for v in ("v1", "v2", "v3")]


def test_request_routing_by_user():
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""
    reviews = load(DESTINATION_RULES)[0]
    _, to = decide(vs, JASON)
    assert to.host == "reviews.bookinfo.svc.cluster.local" and to.subset == "v2"
    assert [p.name for p in subset_endpoints(reviews, to.subset, PODS)] == ["reviews-v2"]
    _, to = decide(vs, ANONYMOUS)
    assert [p.name for p in subset_endpoints(reviews, to.subset, PODS)] == ["reviews-v1"]


def test_fault_injection_delay_and_abort_for_jason():
    delay = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault: {delay: {percentage: {value: 100.0}, fixedDelay: 7s}}
    route: [{destination: {host: ratings, subset: v1}}]
  - route: [{destination: {host: ratings, subset: v1}}]
"""
    selected, _ = decide(delay, JASON)
    assert fault_decision(selected.route.fault, 0.999, 0.999).delay == 7
    selected, _ = decide(delay, ANONYMOUS)
    assert fault_decision(selected.route.fault, 0.0, 0.0).delay is None
    abort = delay.replace("{delay: {percentage: {value: 100.0}, fixedDelay: 7s}}",
                          "{abort: {percentage: {value: 100.0}, httpStatus: 500}}")
    selected, _ = decide(abort, JASON)
    assert fault_decision(selected.route.fault, 0.5, 0.999).http_status == 500


def test_traffic_shifting_80_20():
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"""
    subsets = [decide(vs, ANONYMOUS, r=i / 500)[1].subset for i in range(500)]
    assert subsets.count("v1") == 400 and subsets.count("v2") == 100


def test_circuit_breaking_rule():
    rule = destination_rule(yaml.safe_load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""))
    policy = cluster_policy(rule, "", 8000)
    assert policy.connection_pool.tcp.max_connections == 1
    assert policy.connection_pool.http.http1_max_pending_requests == 1
    detector = OutlierDetector(policy.outlier_detection, ["10.0.0.1:8080", "10.0.0.2:8080"])
    assert detector.record("10.0.0.1:8080", 0.0, status=503)               # one 5xx ejects
    assert detector.load_balancing_set(["10.0.0.1:8080", "10.0.0.2:8080"]) == (["10.0.0.2:8080"], False)
    assert detector.sweep(179.0) == [] and detector.sweep(180.0) == ["10.0.0.1:8080"]   # back after 3m
