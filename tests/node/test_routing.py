"""The outbound routing decision, row by row (docs/hbone.md, The CONNECT request and 7, ztunnel's outbound)."""
import ipaddress

import pytest

from meshcore.sources.config import load
from meshcore.node.routing import HBONE, PASSTHROUGH, REFUSE, route

MESH = """
workloads:
- {uid: client, name: client, namespace: shop, serviceAccount: client, workloadIps: ["10.0.1.1", "fd00::1:1"], protocol: HBONE, node: a}
- {uid: web-1, name: web-1, namespace: shop, serviceAccount: web, workloadIps: ["10.0.2.1"], protocol: HBONE, node: b,
   services: {"shop/web.shop.svc": {80: 8080}}}
- {uid: web-2, name: web-2, namespace: shop, serviceAccount: web, workloadIps: ["10.0.2.2"], protocol: HBONE, node: b,
   services: {"shop/web.shop.svc": {80: 8081}}}
- {uid: web-sick, name: web-sick, namespace: shop, serviceAccount: web, workloadIps: ["10.0.2.3"], protocol: HBONE, node: b,
   status: Unhealthy, services: {"shop/web.shop.svc": {80: 8080}}}
- {uid: legacy, name: legacy, namespace: old, workloadIps: ["10.0.3.1"], protocol: TCP,
   services: {"old/legacy.old.svc": {80: 80}}}
- {uid: guarded, name: guarded, namespace: bank, serviceAccount: vault, workloadIps: ["10.0.4.1"], protocol: HBONE,
   waypoint: {destination: "/10.0.9.9"}}
- {uid: wp, name: waypoint, namespace: bank, serviceAccount: waypoint, workloadIps: ["10.0.9.9"], protocol: HBONE}
- {uid: remote, name: remote, namespace: shop, workloadIps: ["10.8.0.1"], protocol: HBONE, network: far,
   services: {"shop/far.shop.svc": {80: 80}}}
- {uid: v6, name: v6, namespace: shop, serviceAccount: v6, workloadIps: ["fd00::2:1"], protocol: HBONE}
- {uid: db-vm, name: db-vm, namespace: shop, serviceAccount: db, workloadIps: ["10.0.5.1"], protocol: HBONE,
   services: {"shop/db.example.com": {5432: 5432}}}
services:
- {name: web, namespace: shop, hostname: web.shop.svc, vips: ["/10.96.0.1"], ports: {80: 8080},
   subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/web-canary"]}
- {name: legacy, namespace: old, hostname: legacy.old.svc, vips: ["/10.96.0.2"], ports: {80: 80}}
- {name: vault, namespace: bank, hostname: vault.bank.svc, vips: ["/10.96.0.3"], ports: {443: 8443},
   waypoint: {destination: "/10.0.9.9", hboneMtlsPort: 15008}}
- {name: empty, namespace: shop, hostname: empty.shop.svc, vips: ["/10.96.0.4"], ports: {80: 80}}
- {name: far, namespace: shop, hostname: far.shop.svc, vips: ["/10.96.0.5"], ports: {80: 80}}
- {name: db, namespace: shop, hostname: db.example.com, vips: ["/10.96.0.6"], ports: {5432: 5432},
   loadBalancer: {mode: Passthrough}}
- {name: api, namespace: bank, hostname: api.example.com, vips: ["/10.96.0.7"], ports: {443: 443},
   waypoint: {destination: "/10.0.9.9"}, loadBalancer: {mode: Passthrough}}
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    path = tmp_path_factory.mktemp("routing") / "mesh.yaml"
    path.write_text(MESH)
    return load([str(path)])


def _id(name, ns="shop"):
    return f"spiffe://cluster.local/ns/{ns}/sa/{name}"


ROWS = [
    # destination, port, choice -> kind, dial, authority, expected identities, note
    ("10.0.2.1", 8080, 0, HBONE, ("10.0.2.1", 15008), "10.0.2.1:8080", [_id("web")], "workload: HBONE to its 15008"),
    ("10.96.0.1", 80, 0, HBONE, ("10.0.2.1", 15008), "10.0.2.1:8080",
     [_id("web"), _id("web-canary")], "VIP: endpoint + port map, service SANs expected too"),
    ("10.96.0.1", 80, 1, HBONE, ("10.0.2.2", 15008), "10.0.2.2:8081",
     [_id("web"), _id("web-canary")], "round-robin, per-endpoint port; unhealthy skipped"),
    ("10.96.0.1", 80, 2, HBONE, ("10.0.2.1", 15008), "10.0.2.1:8080",
     [_id("web"), _id("web-canary")], "round-robin wraps over the two healthy endpoints"),
    ("10.96.0.1", 81, 0, REFUSE, None, "", [], "service has no such port"),
    ("10.96.0.4", 80, 0, REFUSE, None, "", [], "service without endpoints"),
    ("10.0.3.1", 80, 0, PASSTHROUGH, ("10.0.3.1", 80), "", [], "protocol TCP workload: plain TCP"),
    ("10.96.0.2", 80, 0, PASSTHROUGH, ("10.0.3.1", 80), "", [], "VIP of a non-mesh service: plain TCP to endpoint"),
    ("192.0.2.7", 443, 0, PASSTHROUGH, ("192.0.2.7", 443), "", [], "outside the mesh: plain TCP"),
    ("10.0.4.1", 5432, 0, HBONE, ("10.0.9.9", 15008), "10.0.4.1:5432", [_id("waypoint", "bank")],
     "workload with a waypoint: to the waypoint, authority = the workload"),
    ("10.96.0.3", 443, 0, HBONE, ("10.0.9.9", 15008), "10.96.0.3:443", [_id("waypoint", "bank")],
     "service with a waypoint: authority keeps the VIP:port"),
    ("10.96.0.5", 80, 0, REFUSE, None, "", [], "endpoint on another network: needs a gateway (not supported)"),
    ("10.8.0.1", 80, 0, PASSTHROUGH, ("10.8.0.1", 80), "", [], "another network's address is not ours: plain TCP"),
    ("10.96.0.6", 5432, 0, PASSTHROUGH, ("10.96.0.6", 5432), "", [],
     "PASSTHROUGH service: the original destination, its endpoint not picked"),
    ("10.96.0.6", 9999, 0, PASSTHROUGH, ("10.96.0.6", 9999), "", [], "PASSTHROUGH service: any port"),
    ("10.96.0.7", 443, 0, HBONE, ("10.0.9.9", 15008), "10.96.0.7:443", [_id("waypoint", "bank")],
     "PASSTHROUGH service with a waypoint: to the waypoint"),
    ("127.0.0.1", 15008, 0, REFUSE, None, "", [], "loop guard: proxy port on loopback"),
    ("10.0.0.100", 15001, 0, REFUSE, None, "", [], "loop guard: proxy port on an own address"),
    ("fd00::2:1", 80, 0, HBONE, ("fd00::2:1", 15008), "[fd00::2:1]:80", [_id("v6")], "IPv6 authority in brackets"),
]


@pytest.mark.parametrize("dst, port, choice, kind, dial, authority, expected, note", ROWS,
                         ids=[r[-1] for r in ROWS])
def test_route(state, dst, port, choice, kind, dial, authority, expected, note):
    source = state.by_uid["client"]
    r = route(state, source, dst, port, choice=choice, own_addresses=frozenset({ipaddress.ip_address("10.0.0.100")}))
    assert r.kind == kind, r.reason
    assert r.dial == dial
    assert r.authority == authority
    assert [e.uri for e in r.expected] == expected
    if kind == HBONE:
        assert r.source_identity.uri == _id("client")
    assert r.reason


def test_waypoint_does_not_route_to_itself(state):
    waypoint = state.by_uid["wp"]
    r = route(state, waypoint, "10.96.0.3", 443)
    # traffic leaving the waypoint goes to the service's endpoints (none here), never back to it
    assert r.kind == REFUSE and "no healthy endpoint" in r.reason


LABELLED = """
workloads:
- {uid: client, name: client, namespace: shop, serviceAccount: client, workloadIps: ["10.0.1.1"]}
- {uid: wp, name: waypoint-1, namespace: bank, serviceAccount: waypoint, workloadIps: ["10.0.9.9"], protocol: HBONE}
- {uid: teller, name: teller, namespace: bank, serviceAccount: teller, workloadIps: ["10.0.4.1"],
   services: {"bank/teller.bank.svc": {80: 8080}}}
- {uid: vault, name: vault, namespace: bank, serviceAccount: vault, workloadIps: ["10.0.4.2"],
   labels: {istio.io/use-waypoint: waypoint}}
services:
- {name: teller, namespace: bank, hostname: teller.bank.svc, vips: ["/10.96.4.1"], ports: {80: 8080}}
- {name: open, namespace: bank, hostname: open.bank.svc, vips: ["/10.96.4.2"], ports: {80: 8080},
   labels: {istio.io/use-waypoint: none}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bank, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Namespace
metadata: {name: bank, labels: {istio.io/use-waypoint: waypoint}}
"""

LABELLED_ROWS = [
    # destination, port -> dial, authority, expected, through the waypoint
    ("10.96.4.1", 80, ("10.0.9.9", 15008), "10.96.4.1:80", [_id("waypoint", "bank")], True),
    ("10.0.4.1", 8080, ("10.0.9.9", 15008), "10.0.4.1:8080", [_id("waypoint", "bank")], True),
    ("10.0.4.2", 8080, ("10.0.9.9", 15008), "10.0.4.2:8080", [_id("waypoint", "bank")], True),
    ("10.0.9.9", 80, ("10.0.9.9", 15008), "10.0.9.9:80", [_id("waypoint", "bank")], False),
]


@pytest.mark.parametrize("dst, port, dial, authority, expected, via_waypoint", LABELLED_ROWS,
                         ids=["service by namespace label", "workload by namespace label (waypoint-for: all)",
                              "workload by its own label", "the waypoint itself is not enrolled"])
def test_route_through_a_label_resolved_waypoint(tmp_path, dst, port, dial, authority, expected, via_waypoint):
    path = tmp_path / "mesh.yaml"
    path.write_text(LABELLED)
    state = load([str(path)])
    r = route(state, state.by_uid["client"], dst, port)
    assert r.kind == HBONE, r.reason
    assert (r.dial, r.authority, [e.uri for e in r.expected], r.waypoint) == (dial, authority, expected, via_waypoint)


def test_a_service_that_opts_out_is_not_sent_through_its_namespace_waypoint(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(LABELLED)
    state = load([str(path)])
    assert state.by_service_key["bank/open.bank.svc"].waypoint is None
    r = route(state, state.by_uid["client"], "10.96.4.2", 80)
    assert r.kind == REFUSE and "no healthy endpoint" in r.reason      # not the waypoint
