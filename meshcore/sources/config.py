"""Configuration files → the mesh's resources (meshcore.state.model objects).

A file holds YAML documents of two shapes, told apart by `kind`:
- ztunnel's local config (no `kind`): `workloads`, `services`, `policies`, camelCase,
  every field ztunnel accepts; unknown keys are refused (ztunnel ignores misspelt ones);
- Istio resources: AuthorizationPolicy, PeerAuthentication;
- Gateway API routes for the mesh (traffic/gateway_api.py): HTTPRoute and GRPCRoute
  attached to services, and ReferenceGrant; resolved against the services when the
  store builds its view, where a route that cannot attach keeps its conditions;
- Istio's traffic resources for the waypoint (traffic/virtualservice.py,
  traffic/destinationrule.py): VirtualService and DestinationRule, checked as istiod
  checks them;
- local rate limits for the waypoint (traffic/ratelimit_config.py): meshcore's
  LocalRateLimit, and the Istio EnvoyFilter that inserts Envoy's local_ratelimit filter
  into a waypoint (any other EnvoyFilter is refused, field by field);
- waypoints (waypoints.py): Gateway API Gateways of class istio-waypoint, and the
  Namespaces whose `istio.io/use-waypoint` labels enrol what is in them (services and
  workloads take the same labels in their `labels`).

Several files (and the inline text of MESHCORE_LOCAL_XDS / LOCAL_XDS) merge into one
configuration, refused as a whole on the first error with file, document, field path
and reason. parse() gives the resources (for the mesh store's file source); load()
puts them in a fresh store and returns its view (for tools and tests).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass

from meshcore.config import fields as F
from meshcore.config.yamlfile import documents, located
from meshcore.sources import waypoints as W
from meshcore.errors import ConfigError, IdentityError
from meshcore.state.model import (APP_PROTOCOLS, GatewayAddress, HealthPolicy, LoadBalancer, LoadBalancerMode, Locality, MtlsMode,
                                  PeerAuthentication, Protocol, Service, Workload)
from meshcore.state.store import MeshStore
from meshcore.state.view import MeshView
from meshcore.policy.istio import ROOT_NAMESPACE, authorization_policy, workload_selector
from meshcore.policy.ztunnel import ztunnel_policy
from meshcore.traffic.ratelimit_config import RATE_LIMIT_KINDS, Origin, rate_limit_policy

INLINE_VARIABLES = ("MESHCORE_LOCAL_XDS", "LOCAL_XDS")

_WORKLOAD_KEYS = (
    "uid", "name", "namespace", "serviceAccount", "trustDomain", "workloadIps", "protocol", "node",
    "network", "waypoint", "networkGateway", "services", "authorizationPolicies", "canonicalName",
    "canonicalRevision", "workloadName", "workloadType", "locality", "status", "clusterId",
    "applicationTunnel", "networkMode", "nativeTunnel", "capacity", "hostname", "labels")
_SERVICE_KEYS = (
    "name", "namespace", "hostname", "vips", "cidrVips", "ports", "subjectAltNames", "endpoints",
    "waypoint", "weightedWaypoints", "loadBalancer", "ipFamilies", "canonical", "visibility",
    "labels",                        # meshcore's own: for istio.io/use-waypoint
    "appProtocols")                  # meshcore's own: {port: protocol}, the workload API's appProtocol
_STATUS = ("Healthy", "Unhealthy")


def _ip(obj, path: str):
    text = F.string(obj, path)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise F.fail(path, f"{text!r} is not an IP address") from None


def _network_address(obj, path: str) -> tuple:
    """ztunnel writes VIPs and gateway addresses as "network/ip" ("/10.0.0.1": default network)."""
    text = F.string(obj, path)
    network, sep, ip = text.rpartition("/")
    if not sep:
        raise F.fail(path, f"{text!r} is not <network>/<ip> (the default network is written /10.0.0.1)")
    return network, _ip(ip, path)


def _port_map(obj, path: str) -> tuple[tuple[int, int], ...]:
    F.mapping(obj, path)
    return tuple(sorted((F.port(k, f"{path}.{k}"), F.port(v, f"{path}.{k}")) for k, v in obj.items()))


def _gateway(obj, path: str) -> GatewayAddress:
    F.mapping(obj, path, allowed=("destination", "hboneMtlsPort", "hboneSinglePort"), required=("destination",))
    port = F.port(obj.get("hboneMtlsPort", 15008), f"{path}.hboneMtlsPort")
    dest = obj["destination"]
    if isinstance(dest, dict):
        F.mapping(dest, f"{path}.destination", allowed=("namespace", "hostname"),
                  required=("namespace", "hostname"))
        return GatewayAddress(hostname=(F.string(dest["namespace"], f"{path}.destination.namespace"),
                                        F.string(dest["hostname"], f"{path}.destination.hostname")),
                              hbone_mtls_port=port)
    return GatewayAddress(address=_network_address(dest, f"{path}.destination"), hbone_mtls_port=port)


# Kubernetes' appProtocol names for what APP_PROTOCOLS calls otherwise
_APP_PROTOCOL_ALIASES = {"kubernetes.io/h2c": "http2", "h2c": "http2", "https": "tls", "kubernetes.io/ws": "http",
                         "kubernetes.io/wss": "tls"}


def _app_protocols(obj, path: str, ports: tuple[tuple[int, int], ...]) -> tuple[tuple[int, str], ...]:
    F.mapping(obj, path)
    known = {p for p, _ in ports}
    out = []
    for key, value in obj.items():
        port = F.port(key, f"{path}.{key}")
        if port not in known:
            raise F.fail(f"{path}.{key}", f"{port} is not one of the service's ports ({', '.join(map(str, sorted(known)))})")
        name = F.string(value, f"{path}.{key}").lower()
        name = _APP_PROTOCOL_ALIASES.get(name, name)
        if name not in APP_PROTOCOLS:
            raise F.fail(f"{path}.{key}", f"{value!r} is not an application protocol meshcore knows "
                                          f"({', '.join(APP_PROTOCOLS)}, or {', '.join(_APP_PROTOCOL_ALIASES)})")
        out.append((port, name))
    return tuple(sorted(out))


def _labels(obj, path: str) -> tuple[tuple[str, str], ...]:
    F.mapping(obj, path)
    return tuple(sorted((F.string(k, path), F.string(str(v), f"{path}.{k}", empty_ok=True))
                        for k, v in obj.items()))


def _choice(obj, path: str, allowed, default):
    """One of `allowed` (strings, or a StrEnum whose members are returned)."""
    value = F.string(obj if obj is not None else default, path)
    names = [str(a) for a in allowed]
    if value not in names:
        raise F.fail(path, f"{value!r} is not one of {', '.join(names)}")
    return allowed(value) if isinstance(allowed, type) else value


def workload(obj, path: str) -> Workload:
    F.mapping(obj, path, allowed=_WORKLOAD_KEYS, required=("workloadIps", "namespace"))
    s = lambda key, default="": F.string(obj.get(key, default), f"{path}.{key}", empty_ok=True)  # noqa: E731
    namespace = F.string(obj["namespace"], f"{path}.namespace")
    name = s("name")
    ips = tuple(_ip(v, f"{path}.workloadIps[{i}]") for i, v in enumerate(F.sequence(obj["workloadIps"],
                                                                                      f"{path}.workloadIps")))
    services = []
    for key, ports in F.mapping(obj.get("services") or {}, f"{path}.services").items():
        ns, sep, host = F.string(key, f"{path}.services").partition("/")
        if not sep or not ns or not host:
            raise F.fail(f"{path}.services.{key}", "a service is named <namespace>/<hostname>")
        services.append((key, _port_map(ports or {}, f"{path}.services.{key}")))
    loc = F.mapping(obj.get("locality") or {}, f"{path}.locality", allowed=("region", "zone", "subzone"))
    extra = tuple((k, obj[k]) for k in ("applicationTunnel", "networkMode", "nativeTunnel", "capacity", "hostname")
                  if k in obj)
    cluster = s("clusterId", "Kubernetes") or "Kubernetes"
    w = Workload(
        uid=s("uid") or f"{cluster}//v1/Pod/{namespace}/{name or ips[0] if ips else name}",
        name=name, namespace=namespace, ips=ips,
        service_account=s("serviceAccount", "default") or "default",
        trust_domain=s("trustDomain", "cluster.local") or "cluster.local",
        protocol=_choice(obj.get("protocol"), f"{path}.protocol", Protocol, "TCP"),
        node=s("node"), network=s("network"),
        waypoint=_gateway(obj["waypoint"], f"{path}.waypoint") if obj.get("waypoint") else None,
        network_gateway=(_gateway(obj["networkGateway"], f"{path}.networkGateway")
                         if obj.get("networkGateway") else None),
        services=tuple(services),
        authorization_policies=tuple(F.strings(obj.get("authorizationPolicies"), f"{path}.authorizationPolicies")),
        canonical_name=s("canonicalName"), canonical_revision=s("canonicalRevision"),
        workload_name=s("workloadName"), workload_type=s("workloadType", "pod") or "pod",
        cluster_id=cluster,
        locality=Locality(*(F.string(loc.get(k, ""), f"{path}.locality.{k}", empty_ok=True)
                            for k in ("region", "zone", "subzone"))),
        healthy=_choice(obj.get("status"), f"{path}.status", _STATUS, "Healthy") == "Healthy",
        labels=_labels(obj.get("labels") or {}, f"{path}.labels"),
        extra=extra)
    try:
        w.identity                               # its SPIFFE id: certificates and policy name it so
    except IdentityError as exc:
        field = ("trustDomain" if "trust domain" in exc.args[0] else
                 "namespace" if "namespace" in exc.args[0] else "serviceAccount")
        raise F.fail(f"{path}.{field}", exc.args[0]) from None
    return w


def service(obj, path: str) -> Service:
    F.mapping(obj, path, allowed=_SERVICE_KEYS, required=("name", "namespace", "hostname", "vips", "ports"))
    lb = None
    if obj.get("loadBalancer"):
        raw = F.mapping(obj["loadBalancer"], f"{path}.loadBalancer",
                        allowed=("routingPreferences", "mode", "healthPolicy"))
        lb = LoadBalancer(tuple(F.strings(raw.get("routingPreferences"), f"{path}.loadBalancer.routingPreferences")),
                          _choice(raw.get("mode"), f"{path}.loadBalancer.mode", LoadBalancerMode, "Standard"),
                          _choice(raw.get("healthPolicy"), f"{path}.loadBalancer.healthPolicy", HealthPolicy,
                                  "OnlyHealthy"))
    ports = _port_map(obj["ports"], f"{path}.ports")
    return Service(
        name=F.string(obj["name"], f"{path}.name"),
        namespace=F.string(obj["namespace"], f"{path}.namespace"),
        hostname=F.string(obj["hostname"], f"{path}.hostname"),
        vips=tuple(_network_address(v, f"{path}.vips[{i}]") for i, v in enumerate(F.sequence(obj["vips"],
                                                                                            f"{path}.vips"))),
        ports=ports,
        subject_alt_names=tuple(F.strings(obj.get("subjectAltNames"), f"{path}.subjectAltNames")),
        waypoint=_gateway(obj["waypoint"], f"{path}.waypoint") if obj.get("waypoint") else None,
        load_balancer=lb,
        cidr_vips=tuple(F.network(v, f"{path}.cidrVips[{i}]")
                        for i, v in enumerate(F.sequence(obj.get("cidrVips"), f"{path}.cidrVips"))),
        extra=tuple((k, obj[k]) for k in ("endpoints", "weightedWaypoints", "ipFamilies", "canonical", "visibility")
                    if k in obj),
        labels=_labels(obj.get("labels") or {}, f"{path}.labels"),
        app_protocols=_app_protocols(obj.get("appProtocols") or {}, f"{path}.appProtocols", ports))


def peer_authentication(doc: dict) -> PeerAuthentication:
    F.mapping(doc, "", allowed=("apiVersion", "kind", "metadata", "spec", "status"),
              required=("apiVersion", "kind", "metadata"))
    if doc["apiVersion"] not in ("security.istio.io/v1", "security.istio.io/v1beta1"):
        raise F.fail("apiVersion", f"{doc['apiVersion']!r} is not security.istio.io/v1 or v1beta1")
    meta = F.mapping(doc["metadata"], "metadata", required=("name",))
    spec = F.mapping(doc.get("spec") or {}, "spec", allowed=("selector", "mtls", "portLevelMtls"))
    mtls = F.mapping(spec.get("mtls") or {}, "spec.mtls", allowed=("mode",))
    selector = workload_selector(spec.get("selector"), "spec.selector")
    if "portLevelMtls" in spec and not spec["portLevelMtls"]:
        raise F.fail("spec.portLevelMtls", "port level mTLS, if given, needs at least one port")
    ports = []
    for port, level in F.mapping(spec.get("portLevelMtls") or {}, "spec.portLevelMtls").items():
        p = f"spec.portLevelMtls.{port}"
        F.mapping(level, p, allowed=("mode",))
        number = F.port(port, p)
        if number == 0:
            raise F.fail(p, "port must be in 1-65535")
        ports.append((number, _choice(level.get("mode"), f"{p}.mode", MtlsMode, "UNSET")))
    if ports and not selector:
        # Istio's validation: port-level settings need a workload selector
        raise F.fail("spec.portLevelMtls", "portLevelMtls requires spec.selector (Istio refuses it otherwise)")
    return PeerAuthentication(F.string(meta["name"], "metadata.name"),
                              F.string(meta.get("namespace", "default"), "metadata.namespace"),
                              _choice(mtls.get("mode"), "spec.mtls.mode", MtlsMode, "UNSET"),
                              selector, tuple(ports))


def _consumed(items: list):
    """(index, item), each item dropped from the list once taken: the parsed text is
    freed an element at a time, not in one long free of the whole document at the end
    (which holds the GIL: ~15 ms for 10,000 of each kind)."""
    for i in range(len(items)):
        item, items[i] = items[i], None
        yield i, item


class _Collected:
    def __init__(self):
        self.workloads, self.services, self.policies, self.peer_auths = [], [], [], []
        # (HTTPRoute, GRPCRoute, ReferenceGrant, VirtualService or DestinationRule, source)
        self.traffic: list = []
        self.rate_limits: list = []                    # RateLimitPolicy (each knows its file)
        self.waypoints: dict[str, tuple] = {}          # namespace/name -> (Waypoint, Where)
        self.namespaces: dict[str, tuple] = {}         # name -> (Namespace, Where)

    def add_local_config(self, doc: dict, source: str, index: int | None = None) -> None:
        F.mapping(doc, "", allowed=("workloads", "services", "policies"))
        for i, w in _consumed(F.sequence(doc.get("workloads"), "workloads")):
            self.workloads.append((workload(w, f"workloads[{i}]"), W.Where(source, index, f"workloads[{i}]")))
        for i, s in _consumed(F.sequence(doc.get("services"), "services")):
            self.services.append((service(s, f"services[{i}]"), W.Where(source, index, f"services[{i}]")))
        for i, p in _consumed(F.sequence(doc.get("policies"), "policies")):
            self.policies.append(ztunnel_policy(p, f"policies[{i}]", source))

    def add(self, text: str, source: str) -> None:
        for index, doc in enumerate(documents(text, source), 1):
            if doc is None:
                continue
            named = None
            try:
                if not isinstance(doc, dict):
                    raise ConfigError("a document must be a mapping", path="")
                kind = doc.get("kind")
                if kind is not None and not isinstance(kind, str):
                    raise ConfigError(f"kind must be a string, not {type(kind).__name__}", path="kind")
                if kind is None:
                    self.add_local_config(doc, source, index)
                elif kind == "AuthorizationPolicy":
                    self.policies.append(authorization_policy(doc, source))
                elif kind == "PeerAuthentication":
                    self.peer_auths.append(peer_authentication(doc))
                elif kind in _TRAFFIC_KINDS:
                    self.traffic.append((_traffic_parser(kind)(doc), source))
                elif kind in RATE_LIMIT_KINDS:
                    self.rate_limits.append(rate_limit_policy(doc, source))
                elif kind == "Gateway":
                    named = (self.waypoints, W.gateway(doc), "waypoint")
                elif kind == "Namespace":
                    named = (self.namespaces, W.namespace(doc), "Namespace")
                elif kind == "Service":
                    # its endpoints would come from pod selectors, which local config does not carry
                    raise F.fail("kind", "a Kubernetes Service is not read: services are ztunnel's local config "
                                         "(`services:`), which take istio.io/use-waypoint in their `labels`")
                else:
                    raise F.fail("kind", f"{kind!r} is not a kind the node proxy reads "
                                         "(AuthorizationPolicy, PeerAuthentication, Gateway, Namespace, HTTPRoute, "
                                         "GRPCRoute, ReferenceGrant, VirtualService, DestinationRule, "
                                         "LocalRateLimit, EnvoyFilter, or ztunnel's local config without a kind)")
            except ConfigError as exc:
                raise located(exc, source, index) from None
            if named is not None:
                self._once(*named, source, index)

    @staticmethod
    def _once(into: dict, item, what: str, source: str, index: int) -> None:
        key = getattr(item, "key", item.name)
        if key in into:
            first = into[key][1]
            where = " and ".join(dict.fromkeys((first.source, source)))
            raise ConfigError(f"{what} {key} is defined twice (documents {first.document} and {index})",
                              source=where)
        into[key] = (item, W.Where(source, index, ""))

    def resources(self) -> list:
        _refuse_duplicates([(w.uid, at.source) for w, at in self.workloads], "workload uid")
        _refuse_duplicates([((w.network, str(ip)), at.source) for w, at in self.workloads for ip in w.ips],
                           "workload address")
        _refuse_duplicates([(s.key, at.source) for s, at in self.services], "service")
        _refuse_duplicates([(v, at.source) for s, at in self.services for v in s.vips], "service VIP")
        _refuse_duplicates([(p.key, p.source) for p in self.policies], "policy")
        _refuse_duplicates([(p.key, "") for p in self.peer_auths], "PeerAuthentication")
        for kind in _TRAFFIC_KINDS:
            _refuse_duplicates([(r.key, source) for r, source in self.traffic if type(r).__name__ == kind], kind)
        # a LocalRateLimit and an EnvoyFilter of one name are two resources
        for origin in Origin:
            _refuse_duplicates([(f"{p.namespace}/{p.name}", p.source) for p in self.rate_limits if p.origin is origin],
                               str(origin))
        # after the duplicates: a label is resolved against the one resource of each name
        self.workloads, self.services = W.resolve(self.waypoints, self.namespaces, self.workloads, self.services)
        return [*(s for s, _ in self.services), *(w for w, _ in self.workloads), *self.policies, *self.peer_auths,
                *(r for r, _ in self.traffic), *self.rate_limits]


# each kind's parser, imported the first time a document of that kind is read: a node
# whose files hold no routes keeps the Gateway API and VirtualService parsers out
_TRAFFIC_KINDS = {"HTTPRoute": ("gateway_api", "http_route"), "GRPCRoute": ("gateway_api", "grpc_route"),
                  "ReferenceGrant": ("gateway_api", "reference_grant"),
                  "VirtualService": ("virtualservice", "virtual_service"),
                  "DestinationRule": ("destinationrule", "destination_rule")}


def _traffic_parser(kind: str):
    module, name = _TRAFFIC_KINDS[kind]
    return getattr(importlib.import_module(f"meshcore.traffic.{module}"), name)


def _refuse_duplicates(pairs: list, what: str) -> None:
    seen: dict = {}
    for key, source in pairs:
        if key in seen:
            shown = f"{key[0]}/{key[1]}" if isinstance(key, tuple) else key
            where = " and ".join(dict.fromkeys(s for s in (seen[key], source) if s)) or "<config>"
            raise ConfigError(f"{what} {shown} is defined twice", source=where)
        seen[key] = source


@dataclass(frozen=True)
class ParsedConfig:
    resources: list                   # Service, Workload, Policy, PeerAuthentication, traffic resources,
                                      # rate limits
    sources: tuple[str, ...]          # the files read ("<inline>" for the inline text)
    version: str                      # a digest of the text read
    # the Gateways of class istio-waypoint, by namespace/name: already resolved into the
    # resources' waypoint addresses, kept for tools that name them
    waypoints: dict = dataclasses.field(default_factory=dict)


def parse(paths: Iterable[str] = (), *, inline: str | None = None) -> ParsedConfig:
    """Every file (and the inline text) into one set of resources, or ConfigError."""
    collected = _Collected()
    sources = []
    digest = hashlib.sha256()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)) from None
        collected.add(text, str(path))
        sources.append(str(path))
        digest.update(text.encode())
    if inline:
        collected.add(inline, "$" + next((v for v in INLINE_VARIABLES if os.environ.get(v) == inline),
                                         INLINE_VARIABLES[0]))
        sources.append("<inline>")
        digest.update(inline.encode())
    # what was read, hashed (not the parsed objects)
    return ParsedConfig(collected.resources(), tuple(sources), digest.hexdigest()[:16],
                        {key: wp for key, (wp, _) in collected.waypoints.items()})


def load(paths: Iterable[str] = (), *, inline: str | None = None,
         root_namespace: str = ROOT_NAMESPACE) -> MeshView:
    """Every file (and the inline text) in force in a store of its own: its view, or ConfigError."""
    parsed = parse(paths, inline=inline)
    store = MeshStore(root_namespace=root_namespace)
    store.replace("files", parsed.resources, atomic=True, version=parsed.version)
    return store.view


def inline_from_environment() -> str | None:
    """ztunnel's LOCAL_XDS (inline YAML), or meshcore's own name for it."""
    return next((os.environ[v] for v in INLINE_VARIABLES if os.environ.get(v)), None)
