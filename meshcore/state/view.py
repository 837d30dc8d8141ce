"""One immutable view of the mesh: every resource in force, the indexes the data path
looks things up by, and the compiled authorization policies.

The store (store.py) makes a new view for each change and never alters one it has
handed out, so a connection that started under a view keeps deciding with it. Views
share what a change did not touch (index dictionaries are copied only when changed,
compiled policies and per-workload policy tables are shared by the engine).
"""
from __future__ import annotations

from types import MappingProxyType

from meshcore._core.policy import PolicyEngine
from meshcore.identity.spiffe import SpiffeId
from meshcore.policy.istio import ROOT_NAMESPACE
from meshcore.state.model import IpAddress, MtlsMode, PeerAuthentication, Service, Workload
from meshcore.traffic.istio_index import EMPTY_ISTIO
from meshcore.traffic.istio_model import DestinationRule, VirtualService
from meshcore.traffic.ratelimit_config import RateLimitPolicy
from meshcore.traffic.resolve import EMPTY_INDEX
from meshcore.traffic.select import RouteTable

_EMPTY = MappingProxyType({})


class MeshView:
    """Read-only. Dictionaries here belong to the view: never change them."""

    __slots__ = ("generation", "version", "root_namespace", "by_uid", "by_service_key",
                 "policy_by_key", "peer_auth_by_key", "by_address", "by_vip", "by_hostname", "by_identity",
                 "by_node", "endpoints", "staged", "peer_auths_by_namespace", "engine",
                 "by_service_name", "http_route_by_key", "grpc_route_by_key", "grant_by_key", "routing",
                 "virtual_service_by_key", "destination_rule_by_key", "istio", "rate_limit_by_key")

    def __init__(self, *, root_namespace: str = ROOT_NAMESPACE, layer: str = "l4"):
        self.generation = 0
        self.version = ""                  # what the last change was made from (a source's digest)
        self.root_namespace = root_namespace
        self.by_uid: dict[str, Workload] = {}
        self.by_service_key: dict[str, Service] = {}
        self.policy_by_key: dict = {}                       # key -> meshcore.policy.model.Policy
        self.peer_auth_by_key: dict[str, PeerAuthentication] = {}
        self.by_address: dict = {}                          # (network, ip) -> Workload
        self.by_vip: dict = {}                              # (network, ip) -> Service
        self.by_hostname: dict = {}                         # hostname -> {namespace: Service}
        self.by_service_name: dict = {}                     # (namespace, name) -> {key: Service}
        self.by_identity: dict = {}                         # SpiffeId -> frozenset of uids
        self.by_node: dict = {}                             # node name -> frozenset of uids
        self.endpoints: dict = {}                           # service key -> (Workload, ...), known services
        self.staged: dict = {}                              # the same for services not known yet
        self.peer_auths_by_namespace: dict = {}             # namespace -> (PeerAuthentication, ...)
        self.engine = PolicyEngine((), layer=layer, root_namespace=root_namespace)
        self.http_route_by_key: dict = {}                   # namespace/name -> traffic.model.HTTPRoute
        self.grpc_route_by_key: dict = {}                   # namespace/name -> traffic.model.GRPCRoute
        self.grant_by_key: dict = {}                        # namespace/name -> traffic.model.ReferenceGrant
        self.routing = EMPTY_INDEX                          # traffic.resolve.RouteIndex: built once per change
        self.virtual_service_by_key: dict = {}              # namespace/name -> traffic.istio_model.VirtualService
        self.destination_rule_by_key: dict = {}             # namespace/name -> traffic.istio_model.DestinationRule
        self.istio = EMPTY_ISTIO                            # traffic.istio_index.IstioIndex: by namespace
        # origin/namespace/name -> traffic.ratelimit_config.RateLimitPolicy; copied on write,
        # so the same dictionary in two views means their rate limits are the same
        self.rate_limit_by_key: dict = {}

    def copy(self) -> "MeshView":
        """A shallow copy for the store to build the next view on (it copies each index
        it changes before changing it)."""
        view = MeshView.__new__(MeshView)
        for name in MeshView.__slots__:
            setattr(view, name, getattr(self, name))
        return view

    # -- whole collections ------------------------------------------------------------
    @property
    def workloads(self) -> tuple[Workload, ...]:
        return tuple(self.by_uid.values())

    @property
    def services(self) -> tuple[Service, ...]:
        return tuple(self.by_service_key.values())

    @property
    def policies(self) -> tuple:
        return tuple(self.policy_by_key.values())

    @property
    def peer_authentications(self) -> tuple[PeerAuthentication, ...]:
        return tuple(self.peer_auth_by_key.values())

    @property
    def routes(self) -> tuple:
        """Every HTTPRoute and GRPCRoute with its conditions per parent
        (traffic.model.ResolvedRoute), accepted or not: what /config_dump lists."""
        return self.routing.routes

    @property
    def reference_grants(self) -> tuple:
        return tuple(self.grant_by_key.values())

    @property
    def virtual_services(self) -> tuple[VirtualService, ...]:
        """Every VirtualService in force, by namespace/name."""
        return tuple(self.virtual_service_by_key[k] for k in sorted(self.virtual_service_by_key))

    @property
    def destination_rules(self) -> tuple[DestinationRule, ...]:
        """Every DestinationRule in force, by namespace/name."""
        return tuple(self.destination_rule_by_key[k] for k in sorted(self.destination_rule_by_key))

    @property
    def rate_limits(self) -> tuple[RateLimitPolicy, ...]:
        """Every rate limit in force (LocalRateLimit and EnvoyFilter), by key."""
        return tuple(self.rate_limit_by_key[k] for k in sorted(self.rate_limit_by_key))

    # -- lookups ------------------------------------------------------------------------
    def workload_at(self, network: str, ip: IpAddress) -> Workload | None:
        return self.by_address.get((network, ip))

    def service_at(self, network: str, ip: IpAddress) -> Service | None:
        return self.by_vip.get((network, ip)) or self.by_vip.get(("", ip))

    def service_by_hostname(self, hostname: str, namespace: str | None = None) -> Service | None:
        """A hostname names one service per namespace: the caller's namespace first, then
        the first namespace in name order (deterministic whatever order things arrived)."""
        found = self.by_hostname.get(hostname)
        if not found:
            return None
        if namespace is not None and namespace in found:
            return found[namespace]
        return found[min(found)]

    def route_table(self, service_key: str, port: int, waypoint_namespace: str | None = None) -> RouteTable | None:
        """The routes attached to a service (by its key, namespace/hostname) for requests
        to `port`, in precedence order (traffic.select chooses in it); None when no route
        is attached (the waypoint forwards to the service itself). A waypoint passes its
        namespace to take the consumer routes written there too."""
        return self.routing.table(service_key, port, waypoint_namespace)

    def virtual_services_for(self, service: Service, waypoint_namespace: str) -> tuple[VirtualService, ...]:
        """The VirtualServices a waypoint of `waypoint_namespace` applies to requests for
        `service`, in the order istiod concatenates their routes: those bound to the
        mesh gateway, written in the service's or the waypoint's namespace and visible in
        the waypoint's (exportTo), with a host matching the service's hostname; private
        to the waypoint's namespace first, then exported to it by name, then public,
        each oldest first. Worked out, from the VirtualServices whose hosts may match
        alone, on the first call for a (hostname, namespace, waypoint namespace) after
        one of them changed; a dictionary lookup after that, in this view and the
        views after it. Empty: no VirtualService applies."""
        return self.istio.virtual_services_for(service.hostname, service.namespace, waypoint_namespace)

    def destination_rule_for(self, service: Service, waypoint_namespace: str) -> DestinationRule | None:
        """The DestinationRule a waypoint of `waypoint_namespace` applies to traffic for
        `service`: the waypoint's namespace's, else the service's namespace's exported to
        it, else the root namespace's; the most specific host; several for that host
        merged, oldest first. Remembered like virtual_services_for."""
        return self.istio.destination_rule_for(service.hostname, service.namespace, waypoint_namespace,
                                               self.root_namespace)

    def service_named(self, name: tuple[str, str]) -> Service | None:
        """The service a Kubernetes reference (namespace, name) means; of several with
        that name (different hostnames), the first by key."""
        found = self.by_service_name.get(name)
        return found[min(found)] if found else None

    def workloads_of(self, identity: SpiffeId) -> tuple[Workload, ...]:
        return tuple(self.by_uid[uid] for uid in self.by_identity.get(identity, ()))

    def local_workloads(self, node: str) -> list[Workload]:
        """The workloads a node proxy named `node` serves; with no name, every one (as
        ztunnel does without NODE_NAME)."""
        if not node:
            return list(self.by_uid.values())
        return [self.by_uid[uid] for uid in self.by_node.get(node, ())]

    def policy_set(self, workload: Workload):
        """The compiled policies that apply to a destination workload."""
        return self.engine.for_workload(workload.policy_view())

    def waypoint_policy_set(self, waypoint: tuple[str, str], service: tuple[str, str] | None, layer: str = "l7"):
        """The compiled policies a waypoint (namespace, name) enforces on requests to a
        service (namespace, name), or to a workload (None). Needs a view of an "l7" store.
        layer="l4": their fail-closed form, for a tunnel the waypoint does not read as HTTP."""
        return self.engine.waypoint_policy_set(waypoint, service, layer=layer)

    def mtls_mode(self, workload: Workload, port: int) -> MtlsMode:
        """PeerAuthentication for one inbound port: the workload's own policy (port level
        first), else its namespace's, else the mesh-wide one in the root namespace;
        UNSET inherits from the next level; PERMISSIVE when nothing says otherwise."""
        own = self.peer_auths_by_namespace.get(workload.namespace, ())
        labels = dict(workload.labels)
        selected = [pa for pa in own if pa.selector is not None
                    and all(labels.get(k) == v for k, v in pa.selector)]
        namespace_wide = [pa for pa in own if pa.selector is None]
        mesh_wide = [pa for pa in self.peer_auths_by_namespace.get(self.root_namespace, ()) if pa.selector is None]
        for level in (selected, namespace_wide, mesh_wide):
            # Istio takes the oldest when several apply; without an age, the first that arrived
            for pa in level[:1]:
                mode = dict(pa.port_modes).get(port, MtlsMode.UNSET) if pa.selector is not None else MtlsMode.UNSET
                if mode == MtlsMode.UNSET:
                    mode = pa.mode
                if mode != MtlsMode.UNSET:
                    return mode
        return MtlsMode.PERMISSIVE
