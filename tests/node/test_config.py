"""The node proxy's configuration: ztunnel's local config (every field ztunnel accepts)
and Istio resources into one view of the mesh; refusals name file, document, field and reason."""
import ipaddress
import textwrap

import pytest

from meshcore.errors import ConfigError
from meshcore.sources.config import load
from meshcore.state.model import Workload

FULL = """
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: sa1
  trustDomain: example.org
  workloadIps: ["127.0.0.1", "::1"]
  protocol: HBONE
  node: node-1
  network: net1
  waypoint: {destination: "net1/10.0.0.9", hboneMtlsPort: 15009}
  networkGateway: {destination: {namespace: istio-system, hostname: eastwest.example}}
  services: {"default/example.com": {80: 8080, 443: 0}}
  authorizationPolicies: ["default/deny-9999"]
  canonicalName: local-app
  canonicalRevision: v1
  workloadName: local-deploy
  workloadType: deployment
  locality: {region: r1, zone: z1, subzone: s1}
  status: Unhealthy
  clusterId: cluster1
  applicationTunnel: {protocol: PROXY, port: 15088}
  networkMode: Standard
  nativeTunnel: false
  capacity: 2
  hostname: local.example
services:
- name: example
  namespace: default
  hostname: example.com
  vips: ["/127.10.0.1", "net1/10.96.0.1"]
  cidrVips: ["10.97.0.0/16"]
  ports: {80: 8080}
  subjectAltNames: ["spiffe://example.org/ns/default/sa/other"]
  endpoints: {}
  waypoint: {destination: "/10.0.0.9"}
  weightedWaypoints: []
  loadBalancer: {routingPreferences: [Zone], mode: Failover, healthPolicy: OnlyHealthy}
  ipFamilies: IPv4
  canonical: true
  visibility: ""
policies:
- name: deny-9999
  namespace: default
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - destinationPorts: [9999]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: default}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: [default]}}]}]
"""


def _write(tmp_path, text, name="mesh.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_every_ztunnel_field_loads_and_is_used(tmp_path):
    state = load([_write(tmp_path, FULL)])
    w = state.by_uid["cluster1//v1/Pod/default/local"]
    assert str(w.identity) == "spiffe://example.org/ns/default/sa/sa1"
    assert w.ips == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert w.network == "net1" and w.node == "node-1" and not w.healthy
    assert str(w.waypoint) == "net1/10.0.0.9:15009"
    assert w.network_gateway.hostname == ("istio-system", "eastwest.example")
    assert w.target_port("default/example.com", 80) == 8080
    assert w.target_port("default/example.com", 443) == 443          # 0: the same port
    assert (w.locality.region, w.locality.zone, w.locality.subzone) == ("r1", "z1", "s1")
    assert dict(w.extra)["applicationTunnel"] == {"protocol": "PROXY", "port": 15088}
    svc = state.service_at("net1", ipaddress.ip_address("10.96.0.1"))
    assert svc.key == "default/example.com" and svc.load_balancer.mode == "Failover"
    assert state.service_at("net1", ipaddress.ip_address("127.10.0.1")) is svc   # default network VIP
    assert state.endpoints["default/example.com"] == (w,)
    assert {p.key for p in state.policies} == {"default/deny-9999", "default/allow-web"}
    assert state.mtls_mode(w, 80) == "STRICT"                         # mesh-wide, from the root namespace


def test_defaults_are_documented_ones(tmp_path):
    state = load([_write(tmp_path, """
        workloads:
        - {namespace: ns, workloadIps: ["10.0.0.1"], services: {}}
        """)])
    w, = state.workloads
    assert (w.trust_domain, w.service_account, w.protocol, w.healthy) == ("cluster.local", "default", "TCP", True)
    assert state.mtls_mode(w, 80) == "PERMISSIVE"


def test_inline_config_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_XDS", "workloads: [{namespace: a, workloadIps: ['10.1.1.1']}]")
    from meshcore.sources.config import inline_from_environment
    state = load(inline=inline_from_environment())
    assert state.workloads[0].namespace == "a"


BAD = [
    # (document, expected fragment of the error: document index, path and reason)
    ("workloads: [{namespace: a, workloadIps: ['10.0.0.1'], serviceAcount: x}]",
     "document 1, at workloads[0].serviceAcount: unknown field"),
    ("workloads: [{workloadIps: ['10.0.0.1']}]", "at workloads[0].namespace: required field is missing"),
    ("workloads: [{namespace: a, workloadIps: ['10.0.0.300']}]",
     "at workloads[0].workloadIps[0]: '10.0.0.300' is not an IP address"),
    ("workloads: [{namespace: a, workloadIps: ['10.0.0.1'], protocol: HTTP}]",
     "at workloads[0].protocol: 'HTTP' is not one of HBONE, TCP"),
    ("workloads: [{namespace: a, workloadIps: ['10.0.0.1'], services: {example.com: {80: 80}}}]",
     "a service is named <namespace>/<hostname>"),
    ("workloads: [{namespace: a, workloadIps: ['10.0.0.1'], waypoint: {destination: '10.0.0.9'}}]",
     "at workloads[0].waypoint.destination: '10.0.0.9' is not <network>/<ip>"),
    ("workloads: [{namespace: a, workloadIps: ['10.0.0.1'], status: Ready}]",
     "at workloads[0].status: 'Ready' is not one of Healthy, Unhealthy"),
    ("workloads: [{namespace: a, workloadIps: ['10.0.0.1'], serviceAccount: 'fro=tend'}]",
     "at workloads[0].serviceAccount: invalid service account 'fro=tend' in SPIFFE id"),
    ("workloads: [{namespace: a, workloadIps: ['10.0.0.1'], trustDomain: 'a b'}]",
     "at workloads[0].trustDomain: invalid SPIFFE trust domain 'a b'"),
    ("services: [{name: s, namespace: a, hostname: h, vips: ['/10.0.0.1'], ports: {80: 99999}}]",
     "at services[0].ports.80: 99999 is not a port number"),
    ("services: [{name: s, namespace: a, hostname: h, vips: ['/10.0.0.1']}]",
     "at services[0].ports: required field is missing"),
    ("services: [{name: s, namespace: a, hostname: h, vips: [], ports: {}, loadBalancer: {mode: Random}}]",
     "at services[0].loadBalancer.mode: 'Random' is not one of Standard, Strict, Failover, Passthrough"),
    ("services: [{name: s, namespace: a, hostname: h, vips: [], ports: {80: 8080}, appProtocols: {80: http3}}]",
     "at services[0].appProtocols.80: 'http3' is not an application protocol meshcore knows (http, http2, grpc"),
    ("services: [{name: s, namespace: a, hostname: h, vips: [], ports: {80: 8080}, appProtocols: {81: http}}]",
     "at services[0].appProtocols.81: 81 is not one of the service's ports (80)"),
    ("policies: [{name: p, namespace: a, rules: [[[{destinationPort: [1]}]]]}]",
     "at policies[0].rules[0][0][0].destinationPort: unknown field"),
    ("workload: []", "at workload: unknown field (allowed: policies, services, workloads)"),
    ("kind: Ingress", "at kind: 'Ingress' is not a kind the node proxy reads"),
    ("kind: {HTTPRoute: 1}", "at kind: kind must be a string, not dict"),
    ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: strict}}",
     "at spec.mtls.mode: 'strict' is not one of UNSET, DISABLE, PERMISSIVE, STRICT"),
    ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
     "spec: {portLevelMtls: {8080: {mode: DISABLE}}}", "portLevelMtls requires spec.selector"),
    ("- just a list", "document 1: a document must be a mapping"),
    ("workloads: [", "not valid YAML"),
]


def test_app_protocols_take_kubernetes_names(tmp_path):
    view = load([_write(tmp_path, "services: [{name: s, namespace: a, hostname: h, vips: [], "
                                  "ports: {80: 8080, 81: 0, 82: 0, 443: 0}, "
                                  "appProtocols: {80: HTTP, 81: kubernetes.io/h2c, 82: grpc, 443: https}}]")])
    (service,) = view.services
    assert service.app_protocols == ((80, "http"), (81, "http2"), (82, "grpc"), (443, "tls"))
    assert [service.app_protocol(p) for p in (80, 81, 443, 9999)] == ["http", "http2", "tls", None]


@pytest.mark.parametrize("text, expected", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_config_is_refused_with_where_and_why(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load([path])
    assert expected in str(err.value)
    assert str(err.value).startswith(path)


def test_second_document_is_named(tmp_path):
    path = _write(tmp_path, "workloads: []\n---\nworkloads: [{namespace: a, workloadIps: [x]}]\n")
    with pytest.raises(ConfigError, match=r"document 2, at workloads\[0\].workloadIps\[0\]"):
        load([path])


@pytest.mark.parametrize("first, second, what", [
    ("workloads: [{uid: u1, namespace: a, workloadIps: ['10.0.0.1']}]",
     "workloads: [{uid: u1, namespace: a, workloadIps: ['10.0.0.2']}]", "workload uid u1 is defined twice"),
    ("workloads: [{uid: u1, namespace: a, workloadIps: ['10.0.0.1']}]",
     "workloads: [{uid: u2, namespace: a, workloadIps: ['10.0.0.1']}]", "workload address /10.0.0.1 is defined twice"),
    ("services: [{name: s, namespace: a, hostname: h, vips: ['/10.0.0.1'], ports: {}}]",
     "services: [{name: t, namespace: a, hostname: i, vips: ['/10.0.0.1'], ports: {}}]",
     "service VIP /10.0.0.1 is defined twice"),
])
def test_duplicates_across_files_name_both_files(tmp_path, first, second, what):
    a, b = _write(tmp_path, first, "a.yaml"), _write(tmp_path, second, "b.yaml")
    with pytest.raises(ConfigError) as err:
        load([a, b])
    assert what in str(err.value) and a in str(err.value) and b in str(err.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load([str(tmp_path / "missing.yaml")])


PA = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {ns}}}
spec: {spec}
"""


@pytest.mark.parametrize("resources, port, expected", [
    ([], 80, "PERMISSIVE"),
    ([("mesh", "istio-system", "{mtls: {mode: STRICT}}")], 80, "STRICT"),
    ([("mesh", "istio-system", "{mtls: {mode: STRICT}}"), ("ns", "shop", "{mtls: {mode: PERMISSIVE}}")],
     80, "PERMISSIVE"),
    ([("ns", "shop", "{mtls: {mode: STRICT}}"),
      ("wl", "shop", "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}")], 80, "PERMISSIVE"),
    ([("ns", "shop", "{mtls: {mode: PERMISSIVE}}"),
      ("wl", "shop", "{selector: {matchLabels: {app: web}}, portLevelMtls: {8080: {mode: STRICT}}}")],
     8080, "STRICT"),
    ([("ns", "shop", "{mtls: {mode: PERMISSIVE}}"),
      ("wl", "shop", "{selector: {matchLabels: {app: web}}, portLevelMtls: {8080: {mode: STRICT}}}")],
     9090, "PERMISSIVE"),                                     # UNSET at workload level: inherits
    ([("mesh", "istio-system", "{mtls: {mode: STRICT}}"), ("ns", "shop", "{mtls: {mode: UNSET}}")], 80, "STRICT"),
    ([("other", "jobs", "{mtls: {mode: STRICT}}")], 80, "PERMISSIVE"),      # another namespace's
    ([("wl", "shop", "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}}")], 80, "PERMISSIVE"),
])
def test_peer_authentication_resolution(tmp_path, resources, port, expected):
    docs = [PA.format(name=n, ns=ns, spec=spec) for n, ns, spec in resources]
    docs.append("workloads: [{name: web, namespace: shop, workloadIps: ['10.0.0.1'], labels: {app: web}}]")
    state = load([_write(tmp_path, "\n---\n".join(docs))])
    workload: Workload = state.workloads[0]
    assert state.mtls_mode(workload, port) == expected


# -- waypoints: Gateways, Namespaces and istio.io/use-waypoint --------------------------

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels: {{istio.io/waypoint-for: {waypoint_for}}}
  name: {name}
  namespace: {ns}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE{routes}
"""


def _gw(name="waypoint", ns="shop", waypoint_for="service", routes=""):
    return GATEWAY.format(name=name, ns=ns, waypoint_for=waypoint_for, routes=routes)


def _ns(name, **labels):
    labels = ", ".join(f"istio.io/{k.replace('_', '-')}: {v}" for k, v in labels.items())
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"


WP_MESH = """
workloads:
- {uid: wp, name: waypoint-7f9, namespace: shop, serviceAccount: waypoint, workloadIps: ["10.0.9.9"]}
- {uid: wp-all, name: all-1, namespace: shop, serviceAccount: x, workloadIps: ["10.0.9.8"],
   labels: {gateway.networking.k8s.io/gateway-name: everything}}
- {uid: edge, name: edge-1, namespace: infra, serviceAccount: edge, workloadIps: ["10.0.8.8"]}
- {uid: web, name: web, namespace: shop, workloadIps: ["10.0.2.1"], services: {"shop/web.shop.svc": {80: 8080}}}
- {uid: pod-labelled, name: p, namespace: shop, workloadIps: ["10.0.2.2"], labels: {istio.io/use-waypoint: everything}}
- {uid: pod-none, name: q, namespace: shop, workloadIps: ["10.0.2.3"], labels: {istio.io/use-waypoint: none}}
- {uid: shipping, name: s, namespace: ship, workloadIps: ["10.0.3.1"]}
services:
- {name: web, namespace: shop, hostname: web.shop.svc, vips: ["/10.96.0.1"], ports: {80: 8080}}
- {name: api, namespace: shop, hostname: api.shop.svc, vips: ["/10.96.0.2"], ports: {80: 80},
   labels: {istio.io/use-waypoint: everything}}
- {name: legacy, namespace: shop, hostname: legacy.shop.svc, vips: ["/10.96.0.3"], ports: {80: 80},
   labels: {istio.io/use-waypoint: none}}
- {name: fixed, namespace: shop, hostname: fixed.shop.svc, vips: ["/10.96.0.4"], ports: {80: 80},
   waypoint: {destination: "/10.0.8.8"}}
- {name: ship, namespace: ship, hostname: ship.ship.svc, vips: ["/10.96.1.1"], ports: {80: 80}}
- {name: cross, namespace: ship, hostname: cross.ship.svc, vips: ["/10.96.1.2"], ports: {80: 80},
   labels: {istio.io/use-waypoint: edge, istio.io/use-waypoint-namespace: infra}}
"""

WP, ALL, EDGE = "/10.0.9.9:15008", "/10.0.9.8:15008", "/10.0.8.8:15008"


def _waypoints(tmp_path, *extra):
    view = load([_write(tmp_path, "---\n".join([WP_MESH, *extra]))])
    return ({s.name: str(s.waypoint) if s.waypoint else None for s in view.services},
            {w.uid: str(w.waypoint) if w.waypoint else None for w in view.workloads})


GATEWAYS = [_gw(), _gw("everything", waypoint_for="all"),
            _gw("edge", "infra", routes="\n    allowedRoutes: {namespaces: {from: All}}")]


@pytest.mark.parametrize("extra, services, workloads", [
    # no namespace label: only what names a waypoint itself
    ([], {"web": None, "api": ALL, "legacy": None, "fixed": EDGE, "ship": None, "cross": EDGE},
     {"web": None, "pod-labelled": ALL, "pod-none": None, "wp": None}),
    # the namespace's waypoint takes service traffic only (the default): workloads keep none
    ([_ns("shop", use_waypoint="waypoint")],
     {"web": WP, "api": ALL, "legacy": None, "fixed": EDGE, "ship": None},
     {"web": None, "pod-labelled": ALL, "pod-none": None, "wp": None}),
    # a waypoint for all traffic: workloads too, but never the waypoint's own workloads
    ([_ns("shop", use_waypoint="everything")],
     {"web": ALL, "api": ALL, "legacy": None, "fixed": EDGE},
     {"web": ALL, "pod-labelled": ALL, "pod-none": None, "wp": None, "wp-all": None}),
    # the namespace opts out: labels of its own resources still count
    ([_ns("shop", use_waypoint="none")], {"web": None, "api": ALL}, {"pod-labelled": ALL}),
    # another namespace's waypoint, admitted by from: All
    ([_ns("ship", use_waypoint="edge", use_waypoint_namespace="infra")],
     {"ship": EDGE, "cross": EDGE, "web": None}, {"shipping": None}),
])
def test_use_waypoint_resolution(tmp_path, extra, services, workloads):
    got_s, got_w = _waypoints(tmp_path, *GATEWAYS, *extra)
    assert {k: got_s[k] for k in services} == services
    assert {k: got_w[k] for k in workloads} == workloads


def test_several_waypoint_replicas_are_reached_through_its_service(tmp_path):
    replicas = """
workloads:
- {uid: r2, name: waypoint-2, namespace: shop, serviceAccount: waypoint, workloadIps: ["10.0.9.7"],
   services: {"shop/waypoint.shop.svc": {15008: 15008}}}
services:
- {name: waypoint, namespace: shop, hostname: waypoint.shop.svc, vips: ["/10.96.9.9"], ports: {15008: 15008}}
"""
    got_s, _ = _waypoints(tmp_path, replicas, *GATEWAYS, _ns("shop", use_waypoint="waypoint"))
    assert got_s["web"] == "shop/waypoint.shop.svc:15008"
    assert got_s["waypoint"] is None                 # its own service is not sent through itself


def test_waypoints_are_found_by_name(tmp_path):
    from meshcore.sources.config import parse
    from meshcore.state.model import WaypointFor
    parsed = parse([_write(tmp_path, "---\n".join([WP_MESH, *GATEWAYS]))])
    assert parsed.waypoints["shop/everything"].waypoint_for is WaypointFor.ALL
    assert parsed.waypoints["infra/edge"].allowed_from == "All"


GEN = _gw()          # what `istioctl waypoint generate` writes (with the label it adds)
BAD_MESH = """
workloads:
- {uid: wp, name: waypoint-7f9, namespace: shop, serviceAccount: waypoint, workloadIps: ["10.0.9.9"]}
"""

WAYPOINT_BAD = [
    # (documents after WP_MESH, expected: document, path and reason)
    ([GEN.replace("istio-waypoint", "istio")],
     "document 2, at spec.gatewayClassName: 'istio' is not 'istio-waypoint'"),
    ([GEN.replace("gateway.networking.k8s.io/v1", "networking.istio.io/v1")],
     "document 2, at apiVersion: 'networking.istio.io/v1' is not gateway.networking.k8s.io/v1"),
    ([GEN.replace("protocol: HBONE", "protocol: HTTP")],
     "at spec.listeners[0].protocol: 'HTTP': a waypoint is reached through HBONE only"),
    ([GEN.replace("port: 15008", "port: 15009")], "at spec.listeners[0].port: 15009: a waypoint's HBONE listener"),
    ([GEN.replace("  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE", "  listeners: []")],
     "at spec.listeners: a waypoint needs its HBONE listener"),
    ([GEN.replace("service}", "pods}")], "at metadata.labels.istio.io/waypoint-for: 'pods' is not one of"),
    ([_gw(routes="\n    allowedRoutes: {namespaces: {from: Other}}")],
     "at spec.listeners[0].allowedRoutes.namespaces.from: 'Other' is not one of Same, All, Selector"),
    ([GEN, GEN], "waypoint shop/waypoint is defined twice (documents 2 and 3)"),
    (["apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1}"],
     "document 2, at kind: a Kubernetes Service is not read"),
    (["apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, namespace: x}"],
     "at metadata.namespace: a Namespace is not in a namespace"),
    # references
    ([GEN, "services: [{name: n, namespace: shop, hostname: n, vips: ['/10.96.5.1'], ports: {80: 80}, "
           "labels: {istio.io/use-waypoint: nope}}]"],
     "document 3, at services[0].labels.istio.io/use-waypoint: waypoint shop/nope is not defined"),
    ([GEN, _ns("shop", use_waypoint="nope")],
     "document 3, at metadata.labels.istio.io/use-waypoint: waypoint shop/nope is not defined"),
    ([GEN, _ns("ship", use_waypoint="waypoint", use_waypoint_namespace="shop")],
     "at metadata.labels.istio.io/use-waypoint: waypoint shop/waypoint does not admit namespace ship "
     "(its HBONE listener's allowedRoutes.namespaces.from is Same)"),
    ([GEN, "workloads: [{namespace: shop, workloadIps: ['10.0.7.1'], labels: {istio.io/use-waypoint: waypoint}}]"],
     "at workloads[0].labels.istio.io/use-waypoint: waypoint shop/waypoint does not take workload traffic "
     "(istio.io/waypoint-for: service)"),
    ([_gw("ghost"), _ns("shop", use_waypoint="ghost")],
     "at metadata.labels.istio.io/use-waypoint: waypoint shop/ghost has no workload"),
    ([GEN, "workloads: [{namespace: shop, workloadIps: ['10.0.7.1'], labels: {istio.io/use-waypoint-namespace: x}}]"],
     "at workloads[0].labels.istio.io/use-waypoint-namespace: names a namespace but no waypoint"),
    ([_gw(waypoint_for="all"), "workloads: [{namespace: shop, workloadIps: ['10.0.7.1'], "
                               "waypoint: {destination: '/10.0.9.9'}, labels: {istio.io/use-waypoint: waypoint}}]"],
     "at workloads[0].labels.istio.io/use-waypoint: the waypoint field names a waypoint already"),
    ([_gw(ns="ship", routes="\n    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}"),
      "workloads: [{namespace: ship, serviceAccount: waypoint, workloadIps: ['10.0.7.1']}]\n",
      _ns("shop", use_waypoint="waypoint", use_waypoint_namespace="ship")],
     "waypoint ship/waypoint does not admit namespace shop (its HBONE listener's allowedRoutes.namespaces.from "
     "is Selector)"),
]


@pytest.mark.parametrize("extra, expected", WAYPOINT_BAD, ids=[b[1][:50] for b in WAYPOINT_BAD])
def test_waypoint_config_is_refused_with_where_and_why(tmp_path, extra, expected):
    path = _write(tmp_path, "---\n".join([BAD_MESH, *extra]))
    with pytest.raises(ConfigError) as err:
        load([path])
    assert expected in str(err.value)
    assert str(err.value).startswith(path)


def test_namespace_selector_admits_the_namespaces_it_matches(tmp_path):
    selector = "\n    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}"
    ship = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a, " \
           "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: ship}}\n"
    got_s, _ = _waypoints(tmp_path, *GATEWAYS, _gw(ns="ship", routes=selector), ship,
                          "workloads: [{namespace: ship, serviceAccount: waypoint, workloadIps: ['10.0.7.1']}]")
    assert got_s["web"] == "/10.0.7.1:15008"


# -- Istio's VirtualService and DestinationRule ----------------------------------------------

VS_DOC = """apiVersion: networking.istio.io/{version}
kind: VirtualService
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [reviews]
  http: [{{route: [{{destination: {{host: reviews, subset: v1}}}}]}}]
"""
DR_DOC = """apiVersion: networking.istio.io/{version}
kind: DestinationRule
metadata: {{name: {name}, namespace: shop}}
spec:
  host: reviews
  subsets: [{{name: v1, labels: {{version: v1}}}}]
"""


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_virtual_services_and_destination_rules_load_in_each_version(tmp_path, version):
    view = load([_write(tmp_path, VS_DOC.format(version=version, name="r") + "---\n"
                        + DR_DOC.format(version=version, name="r"))])
    (vs,) = view.virtual_services
    (dr,) = view.destination_rules
    assert vs.key == dr.key == "shop/r"
    assert vs.hosts == ("reviews.shop.svc.cluster.local",) and dr.host == "reviews.shop.svc.cluster.local"
    assert dr.subset("v1").labels == (("version", "v1"),)


ISTIO_BAD = [
    (VS_DOC.format(version="v2", name="r"),
     "document 1, at apiVersion: 'networking.istio.io/v2' is not one of networking.istio.io/v1"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {http: []}\n",
     "document 1, at spec.hosts: a VirtualService without hosts is a delegate"),
    (VS_DOC.format(version="v1", name="r").replace("subset: v1}", "subset: v1}, weight: -1"),
     "at spec.http[0].route[0].weight: "),
    (DR_DOC.format(version="v1", name="r") + "  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n",
     "document 1, at spec.trafficPolicy.loadBalancer.simple: 'FASTEST' is not one of"),
    (DR_DOC.format(version="v1", name="r").replace("labels: {version: v1}}]", "labels: {version: v1}}, {name: v1}]"),
     "at spec.subsets[1].name: duplicate subset names: v1"),
]


@pytest.mark.parametrize("text, expected", ISTIO_BAD, ids=[b[1][:50] for b in ISTIO_BAD])
def test_virtual_services_and_destination_rules_are_refused_with_where_and_why(tmp_path, text, expected):
    path = _write(tmp_path, "workloads: []\n---\n" + text)
    with pytest.raises(ConfigError) as err:
        load([path])
    assert expected.replace("document 1", "document 2") in str(err.value)
    assert str(err.value).startswith(path)


@pytest.mark.parametrize("doc, kind", [(VS_DOC, "VirtualService"), (DR_DOC, "DestinationRule")])
def test_a_virtual_service_or_destination_rule_defined_twice_names_both_files(tmp_path, doc, kind):
    a = _write(tmp_path, doc.format(version="v1", name="r"), "a.yaml")
    b = _write(tmp_path, doc.format(version="v1beta1", name="r"), "b.yaml")
    with pytest.raises(ConfigError) as err:
        load([a, b])
    assert f"{kind} shop/r is defined twice" in str(err.value) and a in str(err.value) and b in str(err.value)
    # a VirtualService and a DestinationRule of one name are two resources
    assert load([_write(tmp_path, VS_DOC.format(version="v1", name="r") + "---\n"
                        + DR_DOC.format(version="v1", name="r"), "c.yaml")]).virtual_services


def test_the_unknown_kind_message_names_virtual_service_and_destination_rule(tmp_path):
    with pytest.raises(ConfigError, match="HTTPRoute, GRPCRoute, ReferenceGrant, VirtualService, DestinationRule"):
        load([_write(tmp_path, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\n")])


# -- local rate limits: LocalRateLimit and the waypoint EnvoyFilter --------------------------

LRL_DOC = """apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {{name: {name}, namespace: shop}}
spec:
  targetRefs: [{{group: "", kind: Service, name: reviews}}]
  tokenBucket: {{maxTokens: {tokens}, fillInterval: 1s}}
"""
EF_DOC = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: {name}, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: http_local_rate_limiter
          token_bucket: {{max_tokens: {tokens}, fill_interval: 1s}}
"""


def test_local_rate_limits_and_envoy_filters_load_with_their_file(tmp_path):
    path = _write(tmp_path, LRL_DOC.format(name="reviews", tokens=10) + "---\n" + EF_DOC.format(name="wp", tokens=5))
    view = load([path])
    assert [p.key for p in view.rate_limits] == ["EnvoyFilter/shop/wp", "LocalRateLimit/shop/reviews"]
    ef, lrl = view.rate_limits
    assert (lrl.bucket.max_tokens, ef.bucket.max_tokens) == (10, 5)
    assert lrl.source == ef.source == path


RATE_LIMIT_BAD = [
    (LRL_DOC.format(name="r", tokens=0), "document 2, at spec.tokenBucket.maxTokens: "),
    (LRL_DOC.format(name="r", tokens=1).replace("fillInterval: 1s", "fillInterval: 10ms"),
     "document 2, at spec.tokenBucket.fillInterval: '10ms': the fill interval must be at least 50ms"),
    (LRL_DOC.format(name="r", tokens=1).replace("kind: Service", "kind: Pod"),
     "document 2, at spec.targetRefs[0].kind: 'Pod' cannot be a target here"),
    (LRL_DOC.format(name="r", tokens=1).replace("apiVersion: meshcore.dev/v1alpha1", "apiVersion: meshcore.dev/v1"),
     "document 2, at apiVersion: 'meshcore.dev/v1': a LocalRateLimit is meshcore.dev/v1alpha1"),
    (EF_DOC.format(name="wp", tokens=1).replace("applyTo: HTTP_FILTER", "applyTo: CLUSTER"),
     "document 2, at spec.configPatches[0].applyTo: 'CLUSTER': meshcore reads only an HTTP_FILTER patch"),
    (EF_DOC.format(name="wp", tokens=1).replace("stat_prefix: http_local_rate_limiter",
                                                     "stat_prefix: l\n          descriptors: [{}]"),
     "document 2, at spec.configPatches[0].patch.value.typed_config.descriptors: descriptors match entries"),
    (EF_DOC.format(name="wp", tokens=1).replace("kind: Gateway", "kind: Service"),
     "document 2, at spec.targetRefs[0].kind: Service: istiod attaches an EnvoyFilter to a waypoint by its Gateway"),
]


@pytest.mark.parametrize("text, expected", RATE_LIMIT_BAD, ids=[b[1][12:60] for b in RATE_LIMIT_BAD])
def test_rate_limits_are_refused_with_where_and_why(tmp_path, text, expected):
    path = _write(tmp_path, "workloads: []\n---\n" + text)
    with pytest.raises(ConfigError) as err:
        load([path])
    assert expected in str(err.value)
    assert str(err.value).startswith(path)


@pytest.mark.parametrize("doc, kind", [(LRL_DOC, "LocalRateLimit"), (EF_DOC, "EnvoyFilter")])
def test_a_rate_limit_defined_twice_names_both_files(tmp_path, doc, kind):
    a = _write(tmp_path, doc.format(name="r", tokens=1), "a.yaml")
    b = _write(tmp_path, doc.format(name="r", tokens=2), "b.yaml")
    with pytest.raises(ConfigError) as err:
        load([a, b])
    assert f"{kind} shop/r is defined twice" in str(err.value) and a in str(err.value) and b in str(err.value)


def test_a_local_rate_limit_and_an_envoy_filter_of_one_name_are_two_resources(tmp_path):
    view = load([_write(tmp_path, LRL_DOC.format(name="r", tokens=1) + "---\n" + EF_DOC.format(name="r", tokens=1))])
    assert [p.key for p in view.rate_limits] == ["EnvoyFilter/shop/r", "LocalRateLimit/shop/r"]


def test_the_unknown_kind_message_names_the_rate_limit_kinds(tmp_path):
    with pytest.raises(ConfigError, match="DestinationRule, LocalRateLimit, EnvoyFilter, or ztunnel's"):
        load([_write(tmp_path, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\n")])
