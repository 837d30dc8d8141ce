"""What a node proxy knows about the mesh: workloads, services, and the indexes the
data path looks things up by. Loaded from ztunnel's local config (config.py) today;
an xDS client would build the same objects from istiod's Address resources.

Every object is frozen: a configuration is replaced as a whole (MeshState), so a
connection that started under one configuration keeps a consistent view of it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshcore.identity.spiffe import SpiffeId
from meshcore.policy.model import Workload as PolicyWorkload

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NetworkAddress = tuple[str, IpAddress]          # (network, ip); "" is the default network

HBONE_PORT = 15008


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
    protocol: str = "HBONE"                       # HBONE: meshed; TCP: plain passthrough
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
    _policy_view: PolicyWorkload | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)

    @property
    def meshed(self) -> bool:
        return self.protocol == "HBONE"

    def policy_view(self) -> PolicyWorkload:
        """What authorization policy selection needs (cached: workloads are frozen)."""
        view = self._policy_view
        if view is None:
            view = PolicyWorkload(self.namespace, self.labels, self.name, self.authorization_policies)
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
    mode: str = "Standard"                        # Standard | Strict | Failover
    health_policy: str = "OnlyHealthy"            # OnlyHealthy | AllowAll


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

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"

    def target_port(self, port: int) -> int | None:
        return next((t or p for p, t in self.ports if p == port), None)


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """Istio PeerAuthentication: which inbound connections must be mTLS."""
    name: str
    namespace: str
    mode: str                                     # STRICT | PERMISSIVE | DISABLE | UNSET
    selector: tuple[tuple[str, str], ...] | None = None
    port_modes: tuple[tuple[int, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class MeshState:
    """One complete configuration and its lookup indexes (built once, then read-only)."""
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    policies: tuple = ()                          # meshcore.policy.model.Policy
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    sources: tuple[str, ...] = ()
    version: str = ""                                  # set by whoever built it from its input
    root_namespace: str = "istio-system"
    by_uid: dict = field(default_factory=dict)
    by_address: dict = field(default_factory=dict)     # NetworkAddress -> Workload
    by_vip: dict = field(default_factory=dict)         # NetworkAddress -> Service
    by_service_key: dict = field(default_factory=dict)
    by_hostname: dict = field(default_factory=dict)
    endpoints: dict = field(default_factory=dict)      # service key -> (Workload, ...)

    def __post_init__(self) -> None:
        for w in self.workloads:
            self.by_uid[w.uid] = w
            for ip in w.ips:
                self.by_address[(w.network, ip)] = w
        for s in self.services:
            self.by_service_key[s.key] = s
            self.by_hostname.setdefault(s.hostname, s)
            for vip in s.vips:
                self.by_vip[vip] = s
        members: dict[str, list[Workload]] = {}
        for w in self.workloads:
            for key, _ in w.services:
                members.setdefault(key, []).append(w)
        self.endpoints = {k: tuple(v) for k, v in members.items()}

    def workload_at(self, network: str, ip: IpAddress) -> Workload | None:
        return self.by_address.get((network, ip))

    def service_at(self, network: str, ip: IpAddress) -> Service | None:
        return self.by_vip.get((network, ip)) or self.by_vip.get(("", ip))

    def local_workloads(self, node: str) -> list[Workload]:
        return [w for w in self.workloads if w.node == node]

    def mtls_mode(self, workload: Workload, port: int) -> str:
        """PeerAuthentication for one inbound port: the workload's own policy (port level
        first), else its namespace's, else the mesh-wide one in the root namespace;
        UNSET inherits from the next level; PERMISSIVE when nothing says otherwise."""
        labels = dict(workload.labels)
        selected, namespace_wide, mesh_wide = [], [], []
        for pa in self.peer_authentications:
            if pa.selector is not None:
                if pa.namespace == workload.namespace and all(labels.get(k) == v for k, v in pa.selector):
                    selected.append(pa)
            elif pa.namespace == workload.namespace:
                namespace_wide.append(pa)
            elif pa.namespace == self.root_namespace:
                mesh_wide.append(pa)
        for level in (selected, namespace_wide, mesh_wide):
            # Istio takes the oldest when several apply; files give no age, so the first loaded
            for pa in level[:1]:
                mode = dict(pa.port_modes).get(port, "UNSET") if pa.selector is not None else "UNSET"
                if mode == "UNSET":
                    mode = pa.mode
                if mode != "UNSET":
                    return mode
        return "PERMISSIVE"
