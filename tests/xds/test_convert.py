"""meshcore.xds.convert: istiod's Address / Authorization resources → the mesh model.

Every resource here is a real proto message, serialized, packed in an Any inside a
discovery Resource, as istiod sends it. The differential tests write the same resources
in ztunnel's local-config YAML (meshcore.sources.config.parse) and require equal objects.
"""
import dataclasses
import ipaddress

import pytest

pytest.importorskip("google.protobuf")

from google.protobuf.any_pb2 import Any  # noqa: E402
from google.protobuf.wrappers_pb2 import UInt32Value  # noqa: E402

from meshcore.errors import ConfigError  # noqa: E402
from meshcore.policy.model import Action, Match, Policy, Scope, StringMatch  # noqa: E402
from meshcore.sources.config import parse  # noqa: E402
from meshcore.state.model import (GatewayAddress, HealthPolicy, LoadBalancer, LoadBalancerMode,  # noqa: E402
                                  Locality, Protocol, Service, Workload)
from meshcore.xds.convert import ADDRESS_TYPE, AUTHORIZATION_TYPE, ResourceError, decode  # noqa: E402
from meshcore.xds.proto import authorization_pb2 as apb  # noqa: E402
from meshcore.xds.proto import discovery_pb2 as dpb  # noqa: E402
from meshcore.xds.proto import workload_pb2 as wpb  # noqa: E402

ip = ipaddress.ip_address
net = ipaddress.ip_network


def b(text: str) -> bytes:
    return ip(text).packed


def resource(message, name: str) -> dpb.Resource:
    """A message as istiod sends it: serialized to bytes inside an Any inside a Resource."""
    wire = message.SerializeToString()
    fresh = type(message)()
    fresh.ParseFromString(wire)
    packed = Any()
    packed.Pack(fresh)
    return dpb.Resource(name=name, version="1", resource=packed)


def workload_resource(rname=None, **fields) -> dpb.Resource:
    fields.setdefault("uid", "Kubernetes//Pod/ns1/pod-a")
    fields.setdefault("name", "pod-a")
    fields.setdefault("namespace", "ns1")
    w = wpb.Workload(**fields)
    return resource(wpb.Address(workload=w), w.uid if rname is None else rname)


def service_resource(rname=None, **fields) -> dpb.Resource:
    fields.setdefault("name", "svc")
    fields.setdefault("namespace", "ns1")
    fields.setdefault("hostname", "svc.ns1.svc.cluster.local")
    s = wpb.Service(**fields)
    return resource(wpb.Address(service=s), f"{s.namespace}/{s.hostname}" if rname is None else rname)


def policy_resource(rname=None, **fields) -> dpb.Resource:
    fields.setdefault("name", "pol")
    fields.setdefault("namespace", "ns1")
    a = apb.Authorization(**fields)
    return resource(a, f"{a.namespace}/{a.name}" if rname is None else rname)


def workload(**fields) -> Workload:
    return decode(ADDRESS_TYPE, workload_resource(**fields))


def service(**fields) -> Service:
    return decode(ADDRESS_TYPE, service_resource(**fields))


def policy(**fields) -> Policy:
    return decode(AUTHORIZATION_TYPE, policy_resource(**fields))


def match(**fields) -> Match:
    p = policy(rules=[apb.Rule(clauses=[apb.Clause(matches=[apb.Match(**fields)])])])
    return p.rules[0][0][0]


HOST_GW = wpb.GatewayAddress(hostname=wpb.NamespacedHostname(namespace="ns1", hostname="wp.ns1.svc.cluster.local"),
                             hbone_mtls_port=15009)
ADDR_GW = wpb.GatewayAddress(address=wpb.NetworkAddress(network="net2", address=b("192.0.2.7")))


# --- Workload field mappings --------------------------------------------------------------

def test_workload_defaults():
    w = workload()
    assert (w.uid, w.name, w.namespace) == ("Kubernetes//Pod/ns1/pod-a", "pod-a", "ns1")
    assert w.ips == ()
    assert w.trust_domain == "cluster.local" and w.service_account == "default"
    assert w.protocol is Protocol.TCP                     # tunnel_protocol NONE
    assert w.healthy is True
    assert w.cluster_id == "Kubernetes"
    assert w.workload_type == "deployment"                # the proto's 0 (ztunnel: as_str_name().to_lowercase())
    assert w.locality == Locality()
    assert (w.waypoint, w.network_gateway, w.services, w.extra, w.labels) == (None, None, (), (), ())


@pytest.mark.parametrize("fields, attribute, expected", [
    ({"addresses": [b("10.0.0.1"), b("2001:db8::1")]}, "ips", (ip("10.0.0.1"), ip("2001:db8::1"))),
    ({"trust_domain": "example.org"}, "trust_domain", "example.org"),
    ({"service_account": "sa1"}, "service_account", "sa1"),
    ({"tunnel_protocol": wpb.HBONE}, "protocol", Protocol.HBONE),
    ({"tunnel_protocol": wpb.NONE}, "protocol", Protocol.TCP),
    ({"status": wpb.UNHEALTHY}, "healthy", False),
    ({"status": wpb.HEALTHY}, "healthy", True),
    ({"workload_type": wpb.POD}, "workload_type", "pod"),
    ({"workload_type": wpb.CRONJOB}, "workload_type", "cronjob"),
    ({"workload_type": wpb.JOB}, "workload_type", "job"),
    ({"cluster_id": "east"}, "cluster_id", "east"),
    ({"node": "node-1"}, "node", "node-1"),
    ({"network": "net1"}, "network", "net1"),
    ({"canonical_name": "app"}, "canonical_name", "app"),
    ({"canonical_revision": "v2"}, "canonical_revision", "v2"),
    ({"workload_name": "deploy-a"}, "workload_name", "deploy-a"),
    ({"authorization_policies": ["ns1/p1", "istio-system/p2"]}, "authorization_policies",
     ("ns1/p1", "istio-system/p2")),
    ({"locality": wpb.Locality(region="r", zone="z", subzone="s")}, "locality", Locality("r", "z", "s")),
    ({"locality": wpb.Locality(zone="z")}, "locality", Locality("", "z", "")),
    ({"services": {"ns1/b.example": wpb.PortList(ports=[wpb.Port(service_port=443, target_port=8443),
                                                         wpb.Port(service_port=80)]),
                   "ns2/a.example": wpb.PortList()}},
     "services", (("ns1/b.example", ((80, 0), (443, 8443))), ("ns2/a.example", ()))),
    ({"services": {"ns1/a": wpb.PortList(ports=[wpb.Port(service_port=80, target_port=1),
                                                wpb.Port(service_port=80, target_port=2)])}},
     "services", (("ns1/a", ((80, 2),)),)),                 # a repeated port: the last wins (ztunnel's map)
    ({"waypoint": HOST_GW}, "waypoint", GatewayAddress(hostname=("ns1", "wp.ns1.svc.cluster.local"),
                                                       hbone_mtls_port=15009)),
    ({"waypoint": ADDR_GW}, "waypoint", GatewayAddress(address=("net2", ip("192.0.2.7")), hbone_mtls_port=15008)),
    ({"network_gateway": ADDR_GW}, "network_gateway", GatewayAddress(address=("net2", ip("192.0.2.7")))),
    ({"hostname": "vm.example"}, "extra", (("hostname", "vm.example"),)),
    ({"native_tunnel": True}, "extra", (("nativeTunnel", True),)),
    ({"network_mode": wpb.HOST_NETWORK}, "extra", (("networkMode", "HostNetwork"),)),
    ({"network_mode": wpb.STANDARD}, "extra", ()),
    ({"capacity": UInt32Value(value=3)}, "extra", (("capacity", 3),)),
    ({"capacity": UInt32Value(value=0)}, "extra", (("capacity", 0),)),    # set, even to 0
    ({"application_tunnel": wpb.ApplicationTunnel(protocol=wpb.ApplicationTunnel.PROXY, port=15088)},
     "extra", (("applicationTunnel", {"protocol": "PROXY", "port": 15088}),)),
    ({"application_tunnel": wpb.ApplicationTunnel()}, "extra", (("applicationTunnel", {"protocol": "NONE"}),)),
    ({"hostname": "h", "capacity": UInt32Value(value=2), "native_tunnel": True,
      "application_tunnel": wpb.ApplicationTunnel(), "network_mode": wpb.HOST_NETWORK},
     "extra", (("applicationTunnel", {"protocol": "NONE"}), ("networkMode", "HostNetwork"), ("nativeTunnel", True),
               ("capacity", 2), ("hostname", "h"))),
    ({"extensions": [wpb.Extension(name="x")]}, "extra", ()),                # no semantics for a node proxy
])
def test_workload_field(fields, attribute, expected):
    assert getattr(workload(**fields), attribute) == expected


def test_workload_services_are_sorted_by_key():
    # a proto map has no order (upb iterates in hash order): sorted, so equal maps give equal workloads
    keys = [f"ns/h{i:02d}" for i in range(20)]
    given = {k: wpb.PortList(ports=[wpb.Port(service_port=i)]) for i, k in reversed(list(enumerate(keys)))}
    w = workload(services=given)
    assert [k for k, _ in w.services] == keys
    assert w.services[3] == ("ns/h03", ((3, 0),))


def test_workload_target_port_through_services():
    w = workload(services={"ns1/a": wpb.PortList(ports=[wpb.Port(service_port=80, target_port=8080),
                                                        wpb.Port(service_port=90)])})
    assert w.target_port("ns1/a", 80) == 8080
    assert w.target_port("ns1/a", 90) == 90


# --- Service field mappings ---------------------------------------------------------------

def test_service_defaults():
    s = service()
    assert (s.name, s.namespace, s.hostname, s.key) == ("svc", "ns1", "svc.ns1.svc.cluster.local",
                                                        "ns1/svc.ns1.svc.cluster.local")
    assert (s.vips, s.cidr_vips, s.ports, s.subject_alt_names) == ((), (), (), ())
    assert (s.waypoint, s.load_balancer, s.extra) == (None, None, ())


@pytest.mark.parametrize("fields, attribute, expected", [
    ({"addresses": [wpb.NetworkAddress(address=b("10.96.0.1")),
                    wpb.NetworkAddress(network="net1", address=b("2001:db8::10"))]},
     "vips", (("", ip("10.96.0.1")), ("net1", ip("2001:db8::10")))),
    ({"addresses": [wpb.NetworkAddress(address=b("10.96.0.1"), length=32)]},      # a full prefix is a VIP
     "vips", (("", ip("10.96.0.1")),)),
    ({"addresses": [wpb.NetworkAddress(address=b("10.96.0.1"), length=32)]}, "cidr_vips", ()),
    ({"addresses": [wpb.NetworkAddress(address=b("10.20.0.0"), length=16),
                    wpb.NetworkAddress(address=b("2001:db8::"), length=64)]},
     "cidr_vips", (net("10.20.0.0/16"), net("2001:db8::/64"))),
    ({"addresses": [wpb.NetworkAddress(address=b("10.20.0.0"), length=16)]}, "vips", ()),
    ({"addresses": [wpb.NetworkAddress(address=b("10.20.3.4"), length=16)]}, "cidr_vips", (net("10.20.0.0/16"),)),
    ({"addresses": [wpb.NetworkAddress(address=b("10.20.0.0"), length=0)]}, "cidr_vips", (net("0.0.0.0/0"),)),
    ({"addresses": [wpb.NetworkAddress(network="net1", address=b("10.20.0.0"), length=16)]},
     "extra", (("cidrVipNetworks", ("net1/10.20.0.0/16",)),)),
    ({"ports": [wpb.Port(service_port=80, target_port=8080, app_protocol=wpb.HTTP11), wpb.Port(service_port=53)]},
     "ports", ((53, 0), (80, 8080))),
    ({"ports": [wpb.Port(service_port=80, app_protocol=wpb.HTTP11), wpb.Port(service_port=81, app_protocol=wpb.GRPC),
                wpb.Port(service_port=53), wpb.Port(service_port=5432, app_protocol=wpb.TCP)]},
     "app_protocols", ((80, "http"), (81, "grpc"), (5432, "tcp"))),
    ({"subject_alt_names": ["spiffe://cluster.local/ns/ns1/sa/a", "x"]}, "subject_alt_names",
     ("spiffe://cluster.local/ns/ns1/sa/a", "x")),
    ({"waypoint": HOST_GW}, "waypoint", GatewayAddress(hostname=("ns1", "wp.ns1.svc.cluster.local"),
                                                       hbone_mtls_port=15009)),
    ({"load_balancing": wpb.LoadBalancing()}, "load_balancer", LoadBalancer()),
    ({"load_balancing": wpb.LoadBalancing(
        routing_preference=[wpb.LoadBalancing.NETWORK, wpb.LoadBalancing.REGION, wpb.LoadBalancing.ZONE,
                            wpb.LoadBalancing.SUBZONE, wpb.LoadBalancing.NODE, wpb.LoadBalancing.CLUSTER],
        mode=wpb.LoadBalancing.FAILOVER, health_policy=wpb.LoadBalancing.ALLOW_ALL)},
     "load_balancer", LoadBalancer(("Network", "Region", "Zone", "Subzone", "Node", "Cluster"),
                                   LoadBalancerMode.FAILOVER, HealthPolicy.ALLOW_ALL)),
    ({"load_balancing": wpb.LoadBalancing(mode=wpb.LoadBalancing.STRICT)}, "load_balancer",
     LoadBalancer((), LoadBalancerMode.STRICT, HealthPolicy.ONLY_HEALTHY)),
    # istiod's form of a ServiceEntry with `resolution: NONE`
    ({"load_balancing": wpb.LoadBalancing(mode=wpb.LoadBalancing.PASSTHROUGH)}, "load_balancer",
     LoadBalancer((), LoadBalancerMode.PASSTHROUGH, HealthPolicy.ONLY_HEALTHY)),
    ({"ip_families": wpb.DUAL}, "extra", (("ipFamilies", "Dual"),)),
    ({"ip_families": wpb.IPV4_ONLY}, "extra", (("ipFamilies", "IPv4"),)),
    ({"ip_families": wpb.IPV6_ONLY}, "extra", (("ipFamilies", "IPv6"),)),
    ({"ip_families": wpb.AUTOMATIC}, "extra", ()),
    ({"canonical": True}, "extra", (("canonical", True),)),
    ({"visibility": wpb.Service.NAMESPACE}, "extra", (("visibility", "Namespace"),)),
    ({"visibility": 7}, "extra", ()),                      # unknown: Public, as ztunnel (fails open)
    ({"weighted_waypoints": [wpb.WeightedWaypoint(destination=HOST_GW, weight=3),
                             wpb.WeightedWaypoint(destination=ADDR_GW)]},
     "extra", (("weightedWaypoints", [
         {"destination": {"destination": {"namespace": "ns1", "hostname": "wp.ns1.svc.cluster.local"},
                          "hboneMtlsPort": 15009}, "weight": 3},
         {"destination": {"destination": "net2/192.0.2.7", "hboneMtlsPort": 15008}, "weight": 0}]),)),
    ({"ingress_use_waypoint": True, "extensions": [wpb.Extension(name="x")]}, "extra", ()),
])
def test_service_field(fields, attribute, expected):
    assert getattr(service(**fields), attribute) == expected


# --- Authorization field mappings ---------------------------------------------------------

def test_policy_defaults():
    p = policy()
    assert p == Policy("pol", "ns1", Action.ALLOW, (), Scope.GLOBAL, None, False, "xds")


@pytest.mark.parametrize("fields, attribute, expected", [
    ({"scope": apb.GLOBAL}, "scope", Scope.GLOBAL),
    ({"scope": apb.NAMESPACE}, "scope", Scope.NAMESPACE),
    ({"scope": apb.WORKLOAD_SELECTOR}, "scope", Scope.WORKLOAD_SELECTOR),
    ({"action": apb.ALLOW}, "action", Action.ALLOW),
    ({"action": apb.DENY}, "action", Action.DENY),
    ({"dry_run": True}, "dry_run", True),
    ({"rules": [apb.Rule()]}, "rules", ((),)),
    ({"rules": [apb.Rule(clauses=[apb.Clause()])]}, "rules", (((),),)),
    ({"rules": [apb.Rule(clauses=[apb.Clause(matches=[apb.Match(), apb.Match(destination_ports=[80])]),
                                  apb.Clause(matches=[apb.Match(namespaces=[apb.StringMatch(exact="a")])])]),
                apb.Rule(clauses=[apb.Clause(matches=[apb.Match(not_destination_ports=[22])])])]},
     "rules", (((Match(), Match(destination_ports=(80,))), (Match(namespaces=(StringMatch("exact", "a"),)),)),
               ((Match(not_destination_ports=(22,)),),))),
    ({"extensions": [wpb.Extension(name="x")]}, "rules", ()),
])
def test_policy_field(fields, attribute, expected):
    assert getattr(policy(**fields), attribute) == expected


STRINGS = [apb.StringMatch(exact="ns-a"), apb.StringMatch(prefix="ns-"), apb.StringMatch(suffix="-prod"),
           apb.StringMatch(presence={})]
STRING_MODEL = (StringMatch("exact", "ns-a"), StringMatch("prefix", "ns-"), StringMatch("suffix", "-prod"),
                StringMatch("presence"))


@pytest.mark.parametrize("field", ["namespaces", "not_namespaces", "principals", "not_principals"])
def test_match_strings(field):
    assert getattr(match(**{field: STRINGS}), field) == STRING_MODEL


def test_match_principal_is_kept_without_scheme():
    m = match(principals=[apb.StringMatch(exact="cluster.local/ns/a/sa/b")])
    assert m.principals == (StringMatch("exact", "cluster.local/ns/a/sa/b"),)
    assert m.principals[0].matches("cluster.local/ns/a/sa/b")


@pytest.mark.parametrize("field", ["source_ips", "not_source_ips", "destination_ips", "not_destination_ips"])
@pytest.mark.parametrize("addresses, expected", [
    ([apb.Address(address=b("10.1.2.3"), length=32)], (net("10.1.2.3/32"),)),
    ([apb.Address(address=b("10.1.0.0"), length=16)], (net("10.1.0.0/16"),)),
    ([apb.Address(address=b("10.1.2.3"), length=16)], (net("10.1.0.0/16"),)),       # host bits dropped
    ([apb.Address(address=b("2001:db8::1"), length=128), apb.Address(address=b("2001:db8::"), length=32)],
     (net("2001:db8::1/128"), net("2001:db8::/32"))),
    # length 0 is /0, as ztunnel reads it (IpNet::new(ip, 0)); istiod sends 32/128 for an address
    ([apb.Address(address=b("10.1.2.3"), length=0)], (net("0.0.0.0/0"),)),
])
def test_match_networks(field, addresses, expected):
    assert getattr(match(**{field: addresses}), field) == expected


@pytest.mark.parametrize("field", ["destination_ports", "not_destination_ports"])
def test_match_ports(field):
    assert getattr(match(**{field: [80, 443, 65535]}), field) == (80, 443, 65535)


@pytest.mark.parametrize("field", ["service_accounts", "not_service_accounts"])
def test_match_service_accounts(field):
    m = match(**{field: [apb.ServiceAccountMatch(namespace="ns1", serviceAccount="sa1"),
                         apb.ServiceAccountMatch(namespace="ns2", serviceAccount="sa2")]})
    assert getattr(m, field) == (("ns1", "sa1"), ("ns2", "sa2"))


# --- refusals -----------------------------------------------------------------------------

def any_of(type_url: str, value: bytes) -> Any:
    return Any(type_url=type_url, value=value)


BIG = 70000


@pytest.mark.parametrize("type_url, res, path, reason", [
    # the envelope
    (ADDRESS_TYPE, dpb.Resource(name="x", resource=any_of(AUTHORIZATION_TYPE, b"")), "resource.type_url",
     "'type.googleapis.com/istio.security.Authorization' where 'type.googleapis.com/istio.workload.Address' "
     "was expected"),
    (ADDRESS_TYPE, dpb.Resource(name="x"), "resource.type_url", "'nothing' where"),
    (ADDRESS_TYPE, dpb.Resource(name="x", resource=any_of(ADDRESS_TYPE, b"\xff\xff\xff")), "resource.value",
     "not a serialized istio.workload.Address"),
    (AUTHORIZATION_TYPE, dpb.Resource(name="x", resource=any_of(AUTHORIZATION_TYPE, b"\x0a\x05ab")),
     "resource.value", "not a serialized istio.security.Authorization"),
    ("type.googleapis.com/envoy.config.cluster.v3.Cluster",
     dpb.Resource(name="x", resource=any_of("type.googleapis.com/envoy.config.cluster.v3.Cluster", b"")),
     "type_url", "is not a type meshcore reads"),
    (ADDRESS_TYPE, resource(wpb.Address(), "x"), "address", "an Address holds neither a workload nor a service"),
    # names
    (ADDRESS_TYPE, workload_resource(rname="other"), "name",
     "the resource is named 'other' but its uid is 'Kubernetes//Pod/ns1/pod-a'"),
    (ADDRESS_TYPE, service_resource(rname="ns1/svc"), "name",
     "the resource is named 'ns1/svc' but its namespace/hostname is 'ns1/svc.ns1.svc.cluster.local'"),
    (AUTHORIZATION_TYPE, policy_resource(rname="pol"), "name",
     "the resource is named 'pol' but its namespace/name is 'ns1/pol'"),
    (ADDRESS_TYPE, workload_resource(rname="", uid=""), "workload.uid", "required field is missing"),
    (ADDRESS_TYPE, workload_resource(rname=""), "name", "the resource is named ''"),
    (ADDRESS_TYPE, workload_resource(namespace=""),
     "workload.namespace", "required field is missing"),
    (ADDRESS_TYPE, workload_resource(name=""),
     "workload.name", "required field is missing"),
    (ADDRESS_TYPE, service_resource(name=""),
     "service.name", "required field is missing"),
    (ADDRESS_TYPE, service_resource(namespace=""), "service.namespace",
     "required field is missing"),
    (ADDRESS_TYPE, service_resource(hostname=""), "service.hostname", "required field is missing"),
    (AUTHORIZATION_TYPE, policy_resource(name=""), "authorization.name",
     "required field is missing"),
    (AUTHORIZATION_TYPE, policy_resource(namespace=""), "authorization.namespace",
     "required field is missing"),
    # addresses
    (ADDRESS_TYPE, workload_resource(addresses=[b("10.0.0.1"), b"\x0a\x00\x00"]), "workload.addresses[1]",
     "an address is 4 or 16 bytes, got 3"),
    (ADDRESS_TYPE, workload_resource(addresses=[b""]), "workload.addresses[0]", "an address is 4 or 16 bytes, got 0"),
    (ADDRESS_TYPE, service_resource(addresses=[wpb.NetworkAddress(address=b"\x01" * 5)]),
     "service.addresses[0].address", "an address is 4 or 16 bytes, got 5"),
    (ADDRESS_TYPE, service_resource(addresses=[wpb.NetworkAddress(address=b("10.0.0.0"), length=33)]),
     "service.addresses[0].length", "prefix length 33 is out of range for IPv4 (0-32)"),
    (ADDRESS_TYPE, service_resource(addresses=[wpb.NetworkAddress(address=b("2001:db8::"), length=129)]),
     "service.addresses[0].length", "prefix length 129 is out of range for IPv6 (0-128)"),
    (ADDRESS_TYPE, workload_resource(waypoint=wpb.GatewayAddress(address=wpb.NetworkAddress(address=b"\x01"))),
     "workload.waypoint.address.address", "an address is 4 or 16 bytes, got 1"),
    # ports
    (ADDRESS_TYPE, service_resource(ports=[wpb.Port(service_port=80), wpb.Port(service_port=BIG)]),
     "service.ports[1].service_port", "70000 is not a port number (0-65535)"),
    (ADDRESS_TYPE, service_resource(ports=[wpb.Port(service_port=80, target_port=BIG)]),
     "service.ports[0].target_port", "70000 is not a port number (0-65535)"),
    (ADDRESS_TYPE, workload_resource(services={"ns1/a": wpb.PortList(ports=[wpb.Port(service_port=BIG)])}),
     "workload.services['ns1/a'].ports[0].service_port", "70000 is not a port number"),
    (ADDRESS_TYPE, workload_resource(waypoint=wpb.GatewayAddress(hostname=wpb.NamespacedHostname(
        namespace="a", hostname="b"), hbone_mtls_port=BIG)), "workload.waypoint.hbone_mtls_port",
     "70000 is not a port number"),
    (ADDRESS_TYPE, workload_resource(application_tunnel=wpb.ApplicationTunnel(port=BIG)),
     "workload.application_tunnel.port", "70000 is not a port number"),
    # services map keys, gateways
    (ADDRESS_TYPE, workload_resource(services={"nohost": wpb.PortList()}), "workload.services['nohost']",
     "a service is named <namespace>/<hostname>"),
    (ADDRESS_TYPE, workload_resource(services={"/h": wpb.PortList()}), "workload.services['/h']",
     "a service is named <namespace>/<hostname>"),
    (ADDRESS_TYPE, workload_resource(waypoint=wpb.GatewayAddress(hbone_mtls_port=15008)), "workload.waypoint",
     "a gateway address needs a destination"),
    (ADDRESS_TYPE, workload_resource(network_gateway=wpb.GatewayAddress(
        hostname=wpb.NamespacedHostname(hostname="h"))), "workload.network_gateway.hostname.namespace",
     "must not be empty"),
    (ADDRESS_TYPE, service_resource(waypoint=wpb.GatewayAddress(hostname=wpb.NamespacedHostname(namespace="n"))),
     "service.waypoint.hostname.hostname", "must not be empty"),
    (ADDRESS_TYPE, service_resource(weighted_waypoints=[wpb.WeightedWaypoint(weight=1)]),
     "service.weighted_waypoints[0].destination", "a weighted waypoint needs a destination"),
    # identity
    (ADDRESS_TYPE, workload_resource(trust_domain="Bad Domain"), "workload.trust_domain",
     "invalid SPIFFE trust domain 'Bad Domain'"),
    (ADDRESS_TYPE, workload_resource(service_account="a/b"), "workload.service_account",
     "invalid service account 'a/b' in SPIFFE id"),
    (ADDRESS_TYPE, workload_resource(namespace=".."), "workload.namespace",
     "invalid namespace '..' in SPIFFE id"),
    # enums
    (ADDRESS_TYPE, workload_resource(tunnel_protocol=wpb.LEGACY_ISTIO_MTLS), "workload.tunnel_protocol",
     "unsupported tunnel protocol LEGACY_ISTIO_MTLS"),
    (ADDRESS_TYPE, workload_resource(tunnel_protocol=9), "workload.tunnel_protocol", "unknown tunnel protocol value 9"),
    (ADDRESS_TYPE, workload_resource(status=5), "workload.status", "unknown workload status value 5"),
    (ADDRESS_TYPE, workload_resource(workload_type=8), "workload.workload_type", "unknown workload type value 8"),
    (ADDRESS_TYPE, workload_resource(network_mode=4), "workload.network_mode", "unknown network mode value 4"),
    (ADDRESS_TYPE, workload_resource(application_tunnel=wpb.ApplicationTunnel(protocol=3)),
     "workload.application_tunnel.protocol", "unknown application tunnel protocol value 3"),
    (ADDRESS_TYPE, service_resource(ip_families=6), "service.ip_families", "unknown IP families value 6"),
    (ADDRESS_TYPE, service_resource(load_balancing=wpb.LoadBalancing(mode=9)), "service.load_balancing.mode",
     "unknown load balancing mode value 9"),
    (ADDRESS_TYPE, service_resource(load_balancing=wpb.LoadBalancing(health_policy=4)),
     "service.load_balancing.health_policy", "unknown health policy value 4"),
    (ADDRESS_TYPE, service_resource(load_balancing=wpb.LoadBalancing(
        routing_preference=[wpb.LoadBalancing.ZONE, wpb.LoadBalancing.UNSPECIFIED_SCOPE])),
     "service.load_balancing.routing_preference[1]", "unknown routing preference scope value 0"),
    (AUTHORIZATION_TYPE, policy_resource(scope=3), "authorization.scope", "unknown scope value 3"),
    (AUTHORIZATION_TYPE, policy_resource(action=2), "authorization.action", "unknown action value 2"),
    # policy matches
    (AUTHORIZATION_TYPE, policy_resource(rules=[apb.Rule(), apb.Rule(clauses=[apb.Clause(), apb.Clause(matches=[
        apb.Match(), apb.Match(source_ips=[apb.Address(address=b"\x01\x02", length=8)])])])]),
     "authorization.rules[1].clauses[1].matches[1].source_ips[0].address", "an address is 4 or 16 bytes, got 2"),
    (AUTHORIZATION_TYPE, policy_resource(rules=[apb.Rule(clauses=[apb.Clause(matches=[apb.Match(
        not_destination_ips=[apb.Address(address=b("10.0.0.0"), length=40)])])])]),
     "authorization.rules[0].clauses[0].matches[0].not_destination_ips[0].length",
     "prefix length 40 is out of range for IPv4 (0-32)"),
    (AUTHORIZATION_TYPE, policy_resource(rules=[apb.Rule(clauses=[apb.Clause(matches=[apb.Match(
        destination_ports=[80, BIG])])])]),
     "authorization.rules[0].clauses[0].matches[0].destination_ports[1]", "70000 is not a port number"),
    (AUTHORIZATION_TYPE, policy_resource(rules=[apb.Rule(clauses=[apb.Clause(matches=[apb.Match(
        principals=[apb.StringMatch(exact="a"), apb.StringMatch()])])])]),
     "authorization.rules[0].clauses[0].matches[0].principals[1]",
     "a string match needs one of exact, prefix, suffix, presence"),
    (AUTHORIZATION_TYPE, policy_resource(rules=[apb.Rule(clauses=[apb.Clause(matches=[apb.Match(
        service_accounts=[apb.ServiceAccountMatch(serviceAccount="sa")])])])]),
     "authorization.rules[0].clauses[0].matches[0].service_accounts[0].namespace", "must not be empty"),
    (AUTHORIZATION_TYPE, policy_resource(rules=[apb.Rule(clauses=[apb.Clause(matches=[apb.Match(
        not_service_accounts=[apb.ServiceAccountMatch(namespace="ns")])])])]),
     "authorization.rules[0].clauses[0].matches[0].not_service_accounts[0].serviceAccount", "must not be empty"),
])
def test_refusal(type_url, res, path, reason):
    with pytest.raises(ResourceError) as info:
        decode(type_url, res)
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.path == path
    assert reason in err.reason
    assert err.resource == res.name
    assert repr(res.name) in str(err) and path in str(err) and err.reason in str(err)


def test_refusal_names_the_resource_type():
    with pytest.raises(ResourceError, match=r"^istio\.workload\.Address 'Kubernetes//Pod/ns1/pod-a', at "
                                            r"workload\.addresses\[0\]: an address is 4 or 16 bytes, got 2$"):
        decode(ADDRESS_TYPE, workload_resource(addresses=[b"\x01\x02"]))
    with pytest.raises(ResourceError, match=r"^istio\.security\.Authorization 'ns1/pol', at authorization\.action"):
        decode(AUTHORIZATION_TYPE, policy_resource(action=7))


# --- differential: ztunnel's YAML and istiod's protos give equal objects --------------------

YAML = """
workloads:
- uid: "east//v1/Pod/ns1/pod-a"
  name: pod-a
  namespace: ns1
  serviceAccount: sa-a
  trustDomain: example.org
  workloadIps: ["10.0.0.1", "2001:db8::1"]
  protocol: HBONE
  node: node-1
  network: net1
  canonicalName: app-a
  canonicalRevision: v1
  workloadName: deploy-a
  workloadType: deployment
  clusterId: east
  status: Unhealthy
  locality: {region: r1, zone: z1, subzone: s1}
  authorizationPolicies: [ns1/allow-a]
  waypoint:
    destination: {namespace: ns1, hostname: wp.ns1.svc.cluster.local}
    hboneMtlsPort: 15009
  networkGateway:
    destination: "net2/192.0.2.7"
  services:
    "ns1/a.ns1.svc.cluster.local": {80: 8080, 443: 8443}
    "ns1/b.ns1.svc.cluster.local": {9090: 0}
  applicationTunnel: {protocol: PROXY, port: 15088}
  networkMode: HostNetwork
  nativeTunnel: true
  capacity: 4
  hostname: vm-a.example
- uid: "Kubernetes//Pod/ns2/pod-b"
  name: pod-b
  namespace: ns2
  workloadIps: ["10.0.0.2"]
  workloadType: pod
services:
- name: a
  namespace: ns1
  hostname: a.ns1.svc.cluster.local
  vips: ["/10.96.0.10", "net1/2001:db8::a"]
  cidrVips: ["10.200.0.0/16"]
  ports: {80: 8080, 443: 0}
  appProtocols: {80: http2}
  subjectAltNames: ["spiffe://example.org/ns/ns1/sa/sa-a"]
  waypoint:
    destination: "/10.0.0.9"
  loadBalancer:
    routingPreferences: [Network, Region, Zone]
    mode: Failover
    healthPolicy: AllowAll
  ipFamilies: Dual
  canonical: true
  visibility: Namespace
- name: b
  namespace: ns1
  hostname: b.ns1.svc.cluster.local
  vips: []
  ports: {}
  loadBalancer: {mode: Passthrough}
policies:
- name: allow-a
  namespace: ns1
  scope: WorkloadSelector
  action: Allow
  dryRun: true
  rules:
  - - - namespaces: [ns1, "ns-*", {Suffix: "-prod"}, "*"]
        notPrincipals: ["example.org/ns/bad/sa/x"]
        sourceIps: ["10.0.0.0/8", "2001:db8::1"]
        notDestinationIps: ["10.9.9.9"]
        destinationPorts: [80, 443]
        serviceAccounts: [{namespace: ns1, serviceAccount: sa-a}]
      - notDestinationPorts: [22]
    - - principals: [{Prefix: "example.org/ns/ns1/"}]
  - []
- name: deny-all
  namespace: istio-system
  scope: Global
  action: Deny
  rules: [[[{notNamespaces: [{Exact: kube-system}], notServiceAccounts: [{namespace: x, serviceAccount: y}],
             notSourceIps: ["192.168.0.0/16"], destinationIps: ["0.0.0.0/0"]}]]]
- name: empty
  namespace: ns2
"""

PROTO_WORKLOADS = [
    wpb.Workload(
        uid="east//v1/Pod/ns1/pod-a", name="pod-a", namespace="ns1", service_account="sa-a",
        trust_domain="example.org", addresses=[b("10.0.0.1"), b("2001:db8::1")], tunnel_protocol=wpb.HBONE,
        node="node-1", network="net1", canonical_name="app-a", canonical_revision="v1", workload_name="deploy-a",
        workload_type=wpb.DEPLOYMENT, cluster_id="east", status=wpb.UNHEALTHY,
        locality=wpb.Locality(region="r1", zone="z1", subzone="s1"), authorization_policies=["ns1/allow-a"],
        waypoint=HOST_GW, network_gateway=ADDR_GW,
        services={"ns1/b.ns1.svc.cluster.local": wpb.PortList(ports=[wpb.Port(service_port=9090)]),
                  "ns1/a.ns1.svc.cluster.local": wpb.PortList(ports=[
                      wpb.Port(service_port=443, target_port=8443), wpb.Port(service_port=80, target_port=8080)])},
        application_tunnel=wpb.ApplicationTunnel(protocol=wpb.ApplicationTunnel.PROXY, port=15088),
        network_mode=wpb.HOST_NETWORK, native_tunnel=True, capacity=UInt32Value(value=4), hostname="vm-a.example"),
    wpb.Workload(uid="Kubernetes//Pod/ns2/pod-b", name="pod-b", namespace="ns2", addresses=[b("10.0.0.2")],
                 workload_type=wpb.POD),
]

PROTO_SERVICES = [
    wpb.Service(
        name="a", namespace="ns1", hostname="a.ns1.svc.cluster.local",
        addresses=[wpb.NetworkAddress(address=b("10.96.0.10")),
                   wpb.NetworkAddress(network="", address=b("10.200.0.0"), length=16),
                   wpb.NetworkAddress(network="net1", address=b("2001:db8::a"), length=128)],
        ports=[wpb.Port(service_port=443), wpb.Port(service_port=80, target_port=8080, app_protocol=wpb.HTTP2)],
        subject_alt_names=["spiffe://example.org/ns/ns1/sa/sa-a"],
        waypoint=wpb.GatewayAddress(address=wpb.NetworkAddress(address=b("10.0.0.9"))),
        load_balancing=wpb.LoadBalancing(routing_preference=[wpb.LoadBalancing.NETWORK, wpb.LoadBalancing.REGION,
                                                             wpb.LoadBalancing.ZONE],
                                         mode=wpb.LoadBalancing.FAILOVER,
                                         health_policy=wpb.LoadBalancing.ALLOW_ALL),
        ip_families=wpb.DUAL, canonical=True, visibility=wpb.Service.NAMESPACE),
    wpb.Service(name="b", namespace="ns1", hostname="b.ns1.svc.cluster.local",
                load_balancing=wpb.LoadBalancing(mode=wpb.LoadBalancing.PASSTHROUGH)),
]


def _sm(**kw):
    return apb.StringMatch(**kw)


PROTO_POLICIES = [
    apb.Authorization(
        name="allow-a", namespace="ns1", scope=apb.WORKLOAD_SELECTOR, action=apb.ALLOW, dry_run=True,
        rules=[apb.Rule(clauses=[
            apb.Clause(matches=[
                apb.Match(namespaces=[_sm(exact="ns1"), _sm(prefix="ns-"), _sm(suffix="-prod"), _sm(presence={})],
                          not_principals=[_sm(exact="example.org/ns/bad/sa/x")],
                          source_ips=[apb.Address(address=b("10.0.0.0"), length=8),
                                      apb.Address(address=b("2001:db8::1"), length=128)],
                          not_destination_ips=[apb.Address(address=b("10.9.9.9"), length=32)],
                          destination_ports=[80, 443],
                          service_accounts=[apb.ServiceAccountMatch(namespace="ns1", serviceAccount="sa-a")]),
                apb.Match(not_destination_ports=[22])]),
            apb.Clause(matches=[apb.Match(principals=[_sm(prefix="example.org/ns/ns1/")])])]),
            apb.Rule()]),
    apb.Authorization(
        name="deny-all", namespace="istio-system", scope=apb.GLOBAL, action=apb.DENY,
        rules=[apb.Rule(clauses=[apb.Clause(matches=[apb.Match(
            not_namespaces=[_sm(exact="kube-system")],
            not_service_accounts=[apb.ServiceAccountMatch(namespace="x", serviceAccount="y")],
            not_source_ips=[apb.Address(address=b("192.168.0.0"), length=16)],
            destination_ips=[apb.Address(address=b("0.0.0.0"), length=0)])])])]),
    apb.Authorization(name="empty", namespace="ns2", scope=apb.NAMESPACE),
]


@pytest.fixture(scope="module")
def from_yaml():
    resources = parse(inline=YAML).resources
    return {
        Workload: [r for r in resources if isinstance(r, Workload)],
        Service: [r for r in resources if isinstance(r, Service)],
        Policy: [r for r in resources if isinstance(r, Policy)]}


@pytest.mark.parametrize("index", range(len(PROTO_WORKLOADS)))
def test_same_workload_from_yaml_and_proto(from_yaml, index):
    message = PROTO_WORKLOADS[index]
    got = decode(ADDRESS_TYPE, resource(wpb.Address(workload=message), message.uid))
    assert got == from_yaml[Workload][index]


@pytest.mark.parametrize("index", range(len(PROTO_SERVICES)))
def test_same_service_from_yaml_and_proto(from_yaml, index):
    message = PROTO_SERVICES[index]
    got = decode(ADDRESS_TYPE, resource(wpb.Address(service=message), f"{message.namespace}/{message.hostname}"))
    assert got == from_yaml[Service][index]


@pytest.mark.parametrize("index", range(len(PROTO_POLICIES)))
def test_same_policy_from_yaml_and_proto(from_yaml, index):
    message = PROTO_POLICIES[index]
    got = decode(AUTHORIZATION_TYPE, resource(message, f"{message.namespace}/{message.name}"))
    expected = from_yaml[Policy][index]
    assert got.source == "xds"
    assert dataclasses.replace(got, source=expected.source) == expected


def test_differential_is_not_vacuous(from_yaml):
    # the comparisons above see every resource, and a changed field shows
    assert [len(from_yaml[k]) for k in (Workload, Service, Policy)] == [2, 2, 3]
    changed = wpb.Workload()
    changed.CopyFrom(PROTO_WORKLOADS[0])
    changed.locality.subzone = "other"
    assert decode(ADDRESS_TYPE, resource(wpb.Address(workload=changed), changed.uid)) != from_yaml[Workload][0]
