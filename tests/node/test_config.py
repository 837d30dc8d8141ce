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
    ("policies: [{name: p, namespace: a, rules: [[[{destinationPort: [1]}]]]}]",
     "at policies[0].rules[0][0][0].destinationPort: unknown field"),
    ("workload: []", "at workload: unknown field (allowed: policies, services, workloads)"),
    ("kind: Gateway", "at kind: 'Gateway' is not a kind the node proxy reads"),
    ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: strict}}",
     "at spec.mtls.mode: 'strict' is not one of UNSET, DISABLE, PERMISSIVE, STRICT"),
    ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
     "spec: {portLevelMtls: {8080: {mode: DISABLE}}}", "portLevelMtls requires spec.selector"),
    ("- just a list", "document 1: a document must be a mapping"),
    ("workloads: [", "not valid YAML"),
]


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
