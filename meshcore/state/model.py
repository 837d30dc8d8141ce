"""The mesh's resources as meshcore models them: workloads, services, peer
authentication, waypoints (authorization policies are meshcore.policy.model.Policy). Sources
build them (meshcore.sources: ztunnel's local config and Istio YAML files); the store
(store.py) holds them and views (view.py) index them.

Every object is frozen and compared by value: a source that sends the same resource
again changes nothing, and a connection that started under one view keeps it intact.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

from meshcore.identity.spiffe import SpiffeId
from meshcore.policy.model import PolicyTarget

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NetworkAddress = tuple[str, IpAddress]          # (network, ip); "" is the default network

HBONE_PORT = 15008


class Protocol(StrEnum):
    """How a workload is reached (ztunnel's local config and istiod's Address)."""
    HBONE = "HBONE"                    # meshed: HBONE tunnels to its node
    TCP = "TCP"                        # not meshed: plain TCP passthrough


class LoadBalancerMode(StrEnum):
    STANDARD = "Standard"
    STRICT = "Strict"
    FAILOVER = "Failover"
    # no endpoint is picked: a connection keeps its original destination (istiod sets it
    # for a ServiceEntry with `resolution: NONE`)
    PASSTHROUGH = "Passthrough"


class HealthPolicy(StrEnum):
    ONLY_HEALTHY = "OnlyHealthy"
    ALLOW_ALL = "AllowAll"


class MtlsMode(StrEnum):
    """Istio PeerAuthentication modes; UNSET inherits from the next level."""
    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """A waypoint or network gateway: an address on a network, or a service by name."""
    address: NetworkAddress | None = None
    hostname: tuple[str, str] | None = None       # (namespace, hostname)
    hbone_mtls_port: int = HBONE_PORT

    def __str__(self) -> str:
        if self.address is not None:
            return f"{self.address[0]}/{self.address[1]}:{self.hbone_mtls_port}"
        return f"{self.hostname[0]}/{self.hostname[1]}:{self.hbone_mtls_port}"


# read on every tunnel's route: a member read from its Enum class is a slow lookup
_HBONE = Protocol.HBONE


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    ips: tuple[IpAddress, ...]
    service_account: str = "default"
    trust_domain: str = "cluster.local"
    protocol: Protocol = Protocol.HBONE
    node: str = ""
    network: str = ""
    waypoint: GatewayAddress | None = None
    network_gateway: GatewayAddress | None = None
    # "namespace/hostname" -> ((service port, target port), ...)
    services: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()
    authorization_policies: tuple[str, ...] = ()
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_name: str = ""
    workload_type: str = "pod"
    cluster_id: str = "Kubernetes"
    locality: Locality = Locality()
    healthy: bool = True
    labels: tuple[tuple[str, str], ...] = ()      # for AuthorizationPolicy/PeerAuthentication selectors
    extra: tuple[tuple[str, object], ...] = ()    # accepted fields meshcore does not act on
    _policy_view: PolicyTarget | None = field(default=None, init=False, repr=False, compare=False)
    _identity: SpiffeId | None = field(default=None, init=False, repr=False, compare=False)
    # telemetry's labels for it (meshcore.node.record), made on first use
    _metric_labels: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> str:
        return self.uid

    @property
    def identity(self) -> SpiffeId:
        """(cached: workloads are frozen, and every tunnel from or to one asks)"""
        identity = self._identity
        if identity is None:
            identity = SpiffeId(self.trust_domain, self.namespace, self.service_account)
            object.__setattr__(self, "_identity", identity)
        return identity

    @property
    def meshed(self) -> bool:
        return self.protocol is _HBONE

    def policy_view(self) -> PolicyTarget:
        """What authorization policy selection needs (cached: workloads are frozen)."""
        view = self._policy_view
        if view is None:
            view = PolicyTarget(self.namespace, self.labels, self.name, self.authorization_policies)
            object.__setattr__(self, "_policy_view", view)
        return view

    def target_port(self, service_key: str, port: int) -> int | None:
        for key, ports in self.services:
            if key == service_key:
                return next((t or p for p, t in ports if p == port), None)
        return None


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    routing_preferences: tuple[str, ...] = ()     # Network, Region, Zone, Subzone, Node, Cluster
    mode: LoadBalancerMode = LoadBalancerMode.STANDARD
    health_policy: HealthPolicy = HealthPolicy.ONLY_HEALTHY


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    hostname: str
    vips: tuple[NetworkAddress, ...]
    ports: tuple[tuple[int, int], ...]            # (service port, target port); target 0 = same
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    load_balancer: LoadBalancer | None = None
    cidr_vips: tuple = ()
    extra: tuple[tuple[str, object], ...] = ()
    # meshcore's own: istio.io/use-waypoint and the like (ztunnel's local config has none)
    labels: tuple[tuple[str, str], ...] = ()
    # (service port, protocol): what the port's appProtocol says its servers speak, one
    # of APP_PROTOCOLS; a port not listed is told by what its clients send
    app_protocols: tuple[tuple[int, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"

    def app_protocol(self, port: int) -> str | None:
        for p, protocol in self.app_protocols:
            if p == port:
                return protocol
        return None

    def target_port(self, port: int) -> int | None:
        return next((t or p for p, t in self.ports if p == port), None)


# the protocols a service port can declare (Istio's workload API AppProtocol): http is
# HTTP/1.1, http2 is HTTP/2 with prior knowledge (h2c inside the tunnel), grpc is HTTP/2
APP_PROTOCOLS = ("http", "http2", "grpc", "tcp", "tls")


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """Istio PeerAuthentication: which inbound connections must be mTLS."""
    name: str
    namespace: str
    mode: MtlsMode
    selector: tuple[tuple[str, str], ...] | None = None
    port_modes: tuple[tuple[int, MtlsMode], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class WaypointFor(StrEnum):
    """Which traffic a waypoint takes (its Gateway's `istio.io/waypoint-for` label):
    traffic addressed to a service, to a workload directly, both, or neither."""
    SERVICE = "service"
    WORKLOAD = "workload"
    ALL = "all"
    NONE = "none"

    @property
    def services(self) -> bool:
        return self in (WaypointFor.SERVICE, WaypointFor.ALL)

    @property
    def workloads(self) -> bool:
        return self in (WaypointFor.WORKLOAD, WaypointFor.ALL)


@dataclass(frozen=True, slots=True)
class Waypoint:
    """A Gateway of class istio-waypoint: what `istio.io/use-waypoint` labels name.
    Files resolve the labels into the `waypoint` GatewayAddress of the services and
    workloads they enrol (as istiod does before it sends them), so the store, routing
    and the inbound side only ever see the address."""
    name: str
    namespace: str
    waypoint_for: WaypointFor = WaypointFor.SERVICE
    # which other namespaces may enrol (the HBONE listener's allowedRoutes.namespaces):
    # "Same", "All", or "Selector" with the namespace labels it must match
    allowed_from: str = "Same"
    allowed_selector: tuple[tuple[str, str], ...] = ()
    hbone_port: int = HBONE_PORT

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def admits(self, namespace: str, namespace_labels: dict) -> bool:
        """Whether resources of `namespace` may use this waypoint."""
        if namespace == self.namespace or self.allowed_from == "All":
            return True
        if self.allowed_from == "Selector":
            labels = {**namespace_labels, "kubernetes.io/metadata.name": namespace}
            return all(labels.get(k) == v for k, v in self.allowed_selector)
        return False
