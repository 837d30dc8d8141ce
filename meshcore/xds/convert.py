"""istiod's xDS resources → meshcore's mesh model (meshcore.state.model, meshcore.policy.model).

istiod sends a node proxy two resource types over delta ADS (docs: CONTROL_PLANE.md §1):
`istio.workload.Address` (a Workload or a Service) and `istio.security.Authorization`.
decode() turns one `discovery_pb2.Resource` into the model object that ztunnel's local
config (meshcore.sources.config, meshcore.policy.ztunnel) builds for the same resource
written in YAML: same defaults, same representation of ports, services, waypoints,
locality, CIDR VIPs and `extra` (the fields meshcore accepts but does not act on, in the
plain-data form the YAML gives them).

Anything meshcore cannot accept raises ResourceError naming the resource, the field and
why, so the client can NACK that resource. Pure functions: no I/O, no asyncio. Kept lean
(istiod pushes every workload of the mesh at once): direct attribute access, no
reflection, field paths built only when refusing.

Where this differs from ztunnel on purpose: ztunnel drops undecodable source/destination
IPs and unset string matches from a policy match (which silently widens or narrows the
policy); meshcore refuses the policy. ztunnel casts ports to u16 (65536 becomes 0);
meshcore refuses ports over 65535.
"""
from __future__ import annotations

import ipaddress
from sys import intern

from google.protobuf.message import DecodeError

from meshcore.errors import ConfigError, IdentityError
from meshcore.identity.spiffe import SpiffeId
from meshcore.policy.model import Action, Match, Policy, Scope, StringMatch
from meshcore.state.model import (HBONE_PORT, GatewayAddress, HealthPolicy, LoadBalancer, LoadBalancerMode, Locality,
                                  Protocol, Service, Workload)
from meshcore.xds.proto import authorization_pb2 as apb
from meshcore.xds.proto import workload_pb2 as wpb

__all__ = ["ADDRESS_TYPE", "AUTHORIZATION_TYPE", "ResourceError", "decode", "workload_from_proto",
           "service_from_proto", "policy_from_proto"]

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"
SOURCE = "xds"                         # Policy.source of what istiod sent


class ResourceError(ConfigError):
    """An xDS resource meshcore refuses: `.resource` is its name, `.path` the field
    (proto field names, e.g. `workload.addresses[1]`), `.reason` why."""

    def __init__(self, reason: str, *, resource: str = "", type_url: str = "", path: str = ""):
        kind = type_url.rpartition("/")[2] or "resource"
        self.resource = resource
        self.type_url = type_url
        super().__init__(reason, source=f"{kind} {resource!r}", path=path)


class _Refusal(Exception):
    """Raised by the converters (field path, reason); decode() adds the resource."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason


# --- enums: proto number → model value (unknown numbers are refused) -------------------

_TUNNEL = {wpb.NONE: Protocol.TCP, wpb.HBONE: Protocol.HBONE}
# the proto's enum names, lower-cased, as ztunnel does (as_str_name().to_lowercase());
# note the proto's default (0) is DEPLOYMENT while the YAML default is "pod"
_WORKLOAD_TYPE = {v: k.lower() for k, v in wpb.WorkloadType.items()}
_STATUS_HEALTHY = {wpb.HEALTHY: True, wpb.UNHEALTHY: False}
# ztunnel's serde names, the text its YAML (and so `extra`) uses
_NETWORK_MODE = {wpb.STANDARD: None, wpb.HOST_NETWORK: "HostNetwork"}
_APP_TUNNEL = {wpb.ApplicationTunnel.NONE: "NONE", wpb.ApplicationTunnel.PROXY: "PROXY"}
_IP_FAMILIES = {wpb.AUTOMATIC: None, wpb.IPV4_ONLY: "IPv4", wpb.IPV6_ONLY: "IPv6", wpb.DUAL: "Dual"}
_LB = wpb.LoadBalancing
_LB_SCOPE = {_LB.REGION: "Region", _LB.ZONE: "Zone", _LB.SUBZONE: "Subzone", _LB.NODE: "Node",
             _LB.CLUSTER: "Cluster", _LB.NETWORK: "Network"}
_LB_MODE = {_LB.UNSPECIFIED_MODE: LoadBalancerMode.STANDARD, _LB.STRICT: LoadBalancerMode.STRICT,
            _LB.FAILOVER: LoadBalancerMode.FAILOVER, _LB.PASSTHROUGH: LoadBalancerMode.PASSTHROUGH}
_LB_HEALTH = {_LB.ONLY_HEALTHY: HealthPolicy.ONLY_HEALTHY, _LB.ALLOW_ALL: HealthPolicy.ALLOW_ALL}
_SCOPE = {apb.GLOBAL: Scope.GLOBAL, apb.NAMESPACE: Scope.NAMESPACE, apb.WORKLOAD_SELECTOR: Scope.WORKLOAD_SELECTOR}
_ACTION = {apb.ALLOW: Action.ALLOW, apb.DENY: Action.DENY}


# What the mesh repeats (namespaces, service accounts, nodes, trust domain, network,
# cluster, localities, service keys, principals) is interned as it is converted: istiod
# sends every workload with its own copy of each string, and 1,000 workloads would keep
# thousands of equal strings. A default-valued Locality is one shared object.
_NO_LOCALITY = Locality()
_DEFAULT_TRUST_DOMAIN, _DEFAULT_ACCOUNT, _DEFAULT_CLUSTER = "cluster.local", "default", "Kubernetes"


def _enum(table: dict, value: int, path: str, what: str):
    try:
        return table[value]
    except KeyError:
        raise _Refusal(path, f"unknown {what} value {value}") from None


# --- small pieces ------------------------------------------------------------------------

_IPV4 = ipaddress.IPv4Address
_IPV6 = ipaddress.IPv6Address


def _ip(raw: bytes, path: str):
    n = len(raw)
    if n == 4:
        return _IPV4(raw)
    if n == 16:
        return _IPV6(raw)
    raise _Refusal(path, f"an address is 4 or 16 bytes, got {n}")


def _port(value: int, path: str) -> int:
    if value > 65535:
        raise _Refusal(path, f"{value} is not a port number (0-65535)")
    return value


# the workload API's AppProtocol → the model's name; UNKNOWN: the port declares nothing
_APP_PROTOCOLS = {wpb.HTTP11: "http", wpb.HTTP2: "http2", wpb.GRPC: "grpc", wpb.TCP: "tcp", wpb.TLS: "tls"}


def _app_protocols(ports) -> tuple[tuple[int, str], ...]:
    """What each port's app_protocol says its servers speak (the waypoint reads it; a
    node proxy does not, as ztunnel does not)."""
    out = {p.service_port: _APP_PROTOCOLS[p.app_protocol] for p in ports if p.app_protocol in _APP_PROTOCOLS}
    return tuple(sorted(out.items()))


def _ports(ports, path: str) -> tuple[tuple[int, int], ...]:
    """Repeated Port → sorted ((service port, target port), ...); a repeated service port:
    the last one wins (ztunnel collects them in a map)."""
    out = {}
    for i, p in enumerate(ports):
        sp, tp = p.service_port, p.target_port
        if sp > 65535:
            raise _Refusal(f"{path}[{i}].service_port", f"{sp} is not a port number (0-65535)")
        if tp > 65535:
            raise _Refusal(f"{path}[{i}].target_port", f"{tp} is not a port number (0-65535)")
        out[sp] = tp
    return tuple(sorted(out.items()))


def _gateway(g, path: str) -> GatewayAddress:
    port = g.hbone_mtls_port
    if port == 0:
        port = HBONE_PORT
    elif port > 65535:
        raise _Refusal(f"{path}.hbone_mtls_port", f"{port} is not a port number (0-65535)")
    kind = g.WhichOneof("destination")
    if kind == "address":
        a = g.address
        return GatewayAddress(address=(a.network, _ip(a.address, f"{path}.address.address")), hbone_mtls_port=port)
    if kind == "hostname":
        h = g.hostname
        if not h.namespace:
            raise _Refusal(f"{path}.hostname.namespace", "must not be empty")
        if not h.hostname:
            raise _Refusal(f"{path}.hostname.hostname", "must not be empty")
        return GatewayAddress(hostname=(h.namespace, h.hostname), hbone_mtls_port=port)
    raise _Refusal(path, "a gateway address needs a destination (hostname or address)")


def _gateway_yaml(g: GatewayAddress) -> dict:
    """A GatewayAddress in ztunnel's YAML form (what config.py keeps in `extra`)."""
    dest = ({"namespace": g.hostname[0], "hostname": g.hostname[1]} if g.hostname is not None
            else f"{g.address[0]}/{g.address[1]}")
    return {"destination": dest, "hboneMtlsPort": g.hbone_mtls_port}


def _required(value: str, path: str) -> str:
    if not value:
        raise _Refusal(path, "required field is missing (empty)")
    return value


# --- Workload ----------------------------------------------------------------------------

def workload_from_proto(w: wpb.Workload, path: str = "workload") -> Workload:
    uid = _required(w.uid, f"{path}.uid")
    name = _required(w.name, f"{path}.name")
    namespace = intern(_required(w.namespace, f"{path}.namespace"))
    ips = tuple([_ip(raw, f"{path}.addresses[{i}]") for i, raw in enumerate(w.addresses)])

    services = ()
    if w.services:
        items = []
        for key in sorted(w.services):      # a proto map has no order: sorted by key
            ns, sep, host = key.partition("/")
            if not sep or not ns or not host:
                raise _Refusal(f"{path}.services[{key!r}]", "a service is named <namespace>/<hostname>")
            items.append((intern(key), _ports(w.services[key].ports, f"{path}.services[{key!r}].ports")))
        services = tuple(items)

    extra = []                  # in config.py's order; proto3 defaults mean "not given"
    if w.HasField("application_tunnel"):
        at = w.application_tunnel
        tunnel = {"protocol": _enum(_APP_TUNNEL, at.protocol, f"{path}.application_tunnel.protocol",
                                    "application tunnel protocol")}
        if at.port:
            tunnel["port"] = _port(at.port, f"{path}.application_tunnel.port")
        extra.append(("applicationTunnel", tunnel))
    mode = _enum(_NETWORK_MODE, w.network_mode, f"{path}.network_mode", "network mode")
    if mode is not None:
        extra.append(("networkMode", mode))
    if w.native_tunnel:
        extra.append(("nativeTunnel", True))
    if w.HasField("capacity"):
        extra.append(("capacity", w.capacity.value))
    if w.hostname:
        extra.append(("hostname", w.hostname))
    # w.extensions: opaque Any payloads for other consumers; they carry no semantics a
    # node proxy acts on (ztunnel ignores them too)

    locality = _NO_LOCALITY
    if w.HasField("locality"):
        loc = w.locality
        if loc.region or loc.zone or loc.subzone:
            locality = Locality(intern(loc.region), intern(loc.zone), intern(loc.subzone))

    result = Workload(
        uid=uid, name=name, namespace=namespace, ips=ips,
        service_account=intern(w.service_account) if w.service_account else _DEFAULT_ACCOUNT,
        trust_domain=intern(w.trust_domain) if w.trust_domain else _DEFAULT_TRUST_DOMAIN,
        protocol=_tunnel(w.tunnel_protocol, f"{path}.tunnel_protocol"),
        node=intern(w.node), network=intern(w.network),
        waypoint=_gateway(w.waypoint, f"{path}.waypoint") if w.HasField("waypoint") else None,
        network_gateway=(_gateway(w.network_gateway, f"{path}.network_gateway")
                         if w.HasField("network_gateway") else None),
        services=services,
        authorization_policies=tuple(w.authorization_policies),
        # a deployment's replicas share these
        canonical_name=intern(w.canonical_name), canonical_revision=intern(w.canonical_revision),
        workload_name=intern(w.workload_name),
        workload_type=_enum(_WORKLOAD_TYPE, w.workload_type, f"{path}.workload_type", "workload type"),
        cluster_id=intern(w.cluster_id) if w.cluster_id else _DEFAULT_CLUSTER,
        locality=locality,
        healthy=_enum(_STATUS_HEALTHY, w.status, f"{path}.status", "workload status"),
        extra=tuple(extra))
    try:
        SpiffeId(result.trust_domain, namespace, result.service_account)   # certificates and policy name it so
    except IdentityError as exc:
        message = exc.args[0]
        field = ("trust_domain" if "trust domain" in message else
                 "namespace" if "namespace" in message else "service_account")
        raise _Refusal(f"{path}.{field}", message) from None
    return result


def _tunnel(value: int, path: str) -> Protocol:
    if value == wpb.LEGACY_ISTIO_MTLS:
        # ztunnel refuses it too ("unsupported tunnel protocol: legacy istio mtls")
        raise _Refusal(path, "unsupported tunnel protocol LEGACY_ISTIO_MTLS (neither meshcore nor ztunnel "
                             "speaks Istio's legacy mTLS; only NONE and HBONE)")
    return _enum(_TUNNEL, value, path, "tunnel protocol")


# --- Service -----------------------------------------------------------------------------

def service_from_proto(s: wpb.Service, path: str = "service") -> Service:
    name = _required(s.name, f"{path}.name")
    namespace = intern(_required(s.namespace, f"{path}.namespace"))
    hostname = _required(s.hostname, f"{path}.hostname")
    vips, cidrs, cidr_networks = [], [], []
    for i, a in enumerate(s.addresses):
        ip = _ip(a.address, f"{path}.addresses[{i}].address")
        if a.HasField("length"):
            full = 32 if ip.version == 4 else 128
            length = a.length
            if length > full:
                raise _Refusal(f"{path}.addresses[{i}].length",
                               f"prefix length {length} is out of range for IPv{ip.version} (0-{full})")
            if length != full:              # a full-length prefix is a plain VIP (as in ztunnel)
                cidrs.append(ipaddress.ip_network((ip, length), strict=False))
                cidr_networks.append(a.network)
                continue
        vips.append((intern(a.network), ip))

    lb = None
    if s.HasField("load_balancing"):
        b = s.load_balancing
        p = f"{path}.load_balancing"
        lb = LoadBalancer(
            tuple([_enum(_LB_SCOPE, r, f"{p}.routing_preference[{i}]", "routing preference scope")
                   for i, r in enumerate(b.routing_preference)]),
            _enum(_LB_MODE, b.mode, f"{p}.mode", "load balancing mode"),
            _enum(_LB_HEALTH, b.health_policy, f"{p}.health_policy", "health policy"))

    extra = []                  # in config.py's order
    if s.weighted_waypoints:
        weighted = []
        for i, ww in enumerate(s.weighted_waypoints):
            p = f"{path}.weighted_waypoints[{i}]"
            if not ww.HasField("destination"):
                raise _Refusal(f"{p}.destination", "a weighted waypoint needs a destination")
            weighted.append({"destination": _gateway_yaml(_gateway(ww.destination, f"{p}.destination")),
                             "weight": ww.weight})
        extra.append(("weightedWaypoints", weighted))
    family = _enum(_IP_FAMILIES, s.ip_families, f"{path}.ip_families", "IP families")
    if family is not None:
        extra.append(("ipFamilies", family))
    if s.canonical:
        extra.append(("canonical", True))
    # an unknown visibility is Public, as in ztunnel ("fail open rather than dropping the Service")
    if s.visibility == wpb.Service.NAMESPACE:
        extra.append(("visibility", "Namespace"))
    if any(cidr_networks):
        # the model's cidr_vips are bare networks (as config.py reads cidrVips); the
        # network a CIDR VIP is on is kept here, "network/cidr" as ztunnel prints it
        extra.append(("cidrVipNetworks", tuple(f"{n}/{c}" for n, c in zip(cidr_networks, cidrs))))
    # s.extensions carry no semantics for a node proxy; s.ingress_use_waypoint is for
    # ingress gateways (ztunnel does not read it either)

    return Service(
        name=name, namespace=namespace, hostname=hostname,
        vips=tuple(vips),
        ports=_ports(s.ports, f"{path}.ports"),
        subject_alt_names=tuple(s.subject_alt_names),
        waypoint=_gateway(s.waypoint, f"{path}.waypoint") if s.HasField("waypoint") else None,
        load_balancer=lb,
        cidr_vips=tuple(cidrs),
        extra=tuple(extra),
        app_protocols=_app_protocols(s.ports))


# --- Authorization -----------------------------------------------------------------------

# Converters below take no field path: a refusal carries the path relative to what they
# were given and each level prefixes its own part on the way out, so the success path
# (every resource istiod sends, 10,000 at a time) builds no path strings at all.

_PRESENCE = StringMatch("presence")


def _strings(values) -> tuple[StringMatch, ...]:
    out = []
    for m in values:
        kind = m.WhichOneof("match_type")
        if kind == "presence":
            out.append(_PRESENCE)
        elif kind is None:
            # ztunnel drops it, which changes what the match admits; refuse instead
            raise _Refusal(f"[{len(out)}]", "a string match needs one of exact, prefix, suffix, presence")
        else:
            out.append(StringMatch(kind, intern(getattr(m, kind))))
    return tuple(out)


# policies name the same few blocks over and over, and building an ip_network costs
# ~20 us: networks are immutable, so one object serves every policy (bounded cache)
_NETWORKS: dict = {}
_NETWORKS_MAX = 8192


def _network(raw: bytes, length: int):
    key = (raw, length)
    found = _NETWORKS.get(key)
    if found is not None:
        return found
    ip = _ip(raw, ".address")
    full = 32 if ip.version == 4 else 128
    if length > full:
        raise _Refusal(".length", f"prefix length {length} is out of range for IPv{ip.version} (0-{full})")
    # length 0 is /0, every address, as ztunnel reads it (IpNet::new(ip, 0)); istiod
    # always sends the length: 32/128 for a single address, 0 only for x/0
    found = ipaddress.ip_network((ip, length), strict=False)
    if len(_NETWORKS) >= _NETWORKS_MAX:
        _NETWORKS.clear()
    _NETWORKS[key] = found
    return found


def _networks(values) -> tuple:
    out = []
    for a in values:
        try:
            out.append(_network(a.address, a.length))
        except _Refusal as r:
            raise _Refusal(f"[{len(out)}]{r.path}", r.reason) from None
    return tuple(out)


def _accounts(values) -> tuple[tuple[str, str], ...]:
    out = []
    for sa in values:
        ns, name = sa.namespace, sa.serviceAccount
        if not ns or not name:
            raise _Refusal(f"[{len(out)}].{'serviceAccount' if ns else 'namespace'}", "must not be empty")
        out.append((intern(ns), intern(name)))
    return tuple(out)


def _port_list(values) -> tuple[int, ...]:
    out = tuple(values)
    if out and max(out) > 65535:
        i = next(i for i, v in enumerate(out) if v > 65535)
        raise _Refusal(f"[{i}]", f"{out[i]} is not a port number (0-65535)")
    return out


# Match field → converter. A match sets one to three of its twelve fields: ListFields()
# hands over just those (one C call), where reading all twelve repeated fields would
# build twelve container objects per match.
_MATCH_FIELDS = {
    "namespaces": _strings, "not_namespaces": _strings, "principals": _strings, "not_principals": _strings,
    "service_accounts": _accounts, "not_service_accounts": _accounts,
    "source_ips": _networks, "not_source_ips": _networks,
    "destination_ips": _networks, "not_destination_ips": _networks,
    "destination_ports": _port_list, "not_destination_ports": _port_list,
}
_EMPTY_MATCH = Match()


def _match(m: apb.Match) -> Match:
    kw = {}
    for descriptor, values in m.ListFields():
        name = descriptor.name
        convert = _MATCH_FIELDS.get(name)
        if convert is not None:     # else: extensions, no semantics for a node proxy (ztunnel ignores them)
            try:
                kw[name] = convert(values)
            except _Refusal as r:
                raise _Refusal(f".{name}{r.path}", r.reason) from None
    return Match(**kw) if kw else _EMPTY_MATCH


def policy_from_proto(a: apb.Authorization, path: str = "authorization", source: str = SOURCE) -> Policy:
    name = _required(a.name, f"{path}.name")
    namespace = intern(_required(a.namespace, f"{path}.namespace"))
    scope = _enum(_SCOPE, a.scope, f"{path}.scope", "scope")
    action = _enum(_ACTION, a.action, f"{path}.action", "action")
    rules = []
    try:
        for rule in a.rules:
            clauses = []
            for clause in rule.clauses:
                matches = []
                for m in clause.matches:
                    matches.append(_match(m))
                clauses.append(tuple(matches))
            rules.append(tuple(clauses))
    except _Refusal as r:
        raise _Refusal(f"{path}.rules[{len(rules)}].clauses[{len(clauses)}].matches[{len(matches)}]{r.path}",
                       r.reason) from None
    # a.extensions carry no semantics for a node proxy (ztunnel ignores them)
    return Policy(name, namespace, action, tuple(rules), scope, None, a.dry_run, source)


# --- one Resource ------------------------------------------------------------------------

def decode(type_url: str, resource, *, source: str = SOURCE) -> Workload | Service | Policy:
    """One `discovery_pb2.Resource` of `type_url` → the model object (Workload, Service or
    Policy), or ResourceError (resource name, field path, reason)."""
    name = resource.name
    try:
        body = resource.resource
        if body.type_url != type_url:
            raise _Refusal("resource.type_url", f"{body.type_url or 'nothing'!r} where {type_url!r} was expected")
        if type_url == ADDRESS_TYPE:
            address = wpb.Address()
            try:
                address.ParseFromString(body.value)
            except DecodeError as exc:
                raise _Refusal("resource.value", f"not a serialized istio.workload.Address ({exc})") from None
            kind = address.WhichOneof("type")
            if kind == "workload":
                obj = workload_from_proto(address.workload)
            elif kind == "service":
                obj = service_from_proto(address.service)
            else:
                raise _Refusal("address", "an Address holds neither a workload nor a service")
        elif type_url == AUTHORIZATION_TYPE:
            message = apb.Authorization()
            try:
                message.ParseFromString(body.value)
            except DecodeError as exc:
                raise _Refusal("resource.value", f"not a serialized istio.security.Authorization ({exc})") from None
            obj = policy_from_proto(message, source=source)
        else:
            raise _Refusal("type_url", f"{type_url!r} is not a type meshcore reads "
                                       f"({ADDRESS_TYPE}, {AUTHORIZATION_TYPE})")
        key = obj.key
        if name != key:
            what = ("uid" if type(obj) is Workload else "namespace/hostname" if type(obj) is Service
                    else "namespace/name")
            raise _Refusal("name", f"the resource is named {name!r} but its {what} is {key!r}")
        return obj
    except _Refusal as r:
        raise ResourceError(r.reason, resource=name, type_url=type_url, path=r.path) from None
