"""What sources send the store and what they get back: changes by kind and key, and
the outcome of applying them (what changed, what was rejected and why)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from meshcore.policy.model import Policy
from meshcore.state.model import PeerAuthentication, Service, Workload
from meshcore.traffic.istio_model import DestinationRule, VirtualService
from meshcore.traffic.model import GRPCRoute, HTTPRoute, ReferenceGrant
from meshcore.traffic.ratelimit_config import RateLimitPolicy


class Kind(StrEnum):
    """The kinds of resource the store holds, each keyed by its own `key`: a workload by
    uid, a service by namespace/hostname, a rate limit by origin/namespace/name (a
    LocalRateLimit and an EnvoyFilter may share a name), anything else by namespace/name."""
    WORKLOAD = "workload"
    SERVICE = "service"
    AUTHORIZATION_POLICY = "authorization policy"
    PEER_AUTHENTICATION = "PeerAuthentication"
    HTTP_ROUTE = "HTTPRoute"
    GRPC_ROUTE = "GRPCRoute"
    REFERENCE_GRANT = "ReferenceGrant"
    VIRTUAL_SERVICE = "VirtualService"
    DESTINATION_RULE = "DestinationRule"
    RATE_LIMIT = "rate limit"          # a LocalRateLimit or an EnvoyFilter: keyed origin/namespace/name


KIND_OF_TYPE = {Workload: Kind.WORKLOAD, Service: Kind.SERVICE, Policy: Kind.AUTHORIZATION_POLICY,
                PeerAuthentication: Kind.PEER_AUTHENTICATION, HTTPRoute: Kind.HTTP_ROUTE, GRPCRoute: Kind.GRPC_ROUTE,
                ReferenceGrant: Kind.REFERENCE_GRANT, VirtualService: Kind.VIRTUAL_SERVICE,
                DestinationRule: Kind.DESTINATION_RULE, RateLimitPolicy: Kind.RATE_LIMIT}
# the kinds whose change rebuilds the route tables (services: a route names them)
ROUTING_KINDS = frozenset((Kind.HTTP_ROUTE, Kind.GRPC_ROUTE, Kind.REFERENCE_GRANT, Kind.SERVICE))
# the kinds whose change rebuilds the VirtualService and DestinationRule index (services
# do not: its answers are by hostname and namespace)
ISTIO_TRAFFIC_KINDS = frozenset((Kind.VIRTUAL_SERVICE, Kind.DESTINATION_RULE))


def kind_of(resource) -> Kind:
    try:
        return KIND_OF_TYPE[type(resource)]
    except KeyError:
        raise TypeError(f"{type(resource).__name__} is not a kind of resource the mesh store holds") from None


@dataclass(frozen=True, slots=True)
class Upsert:
    """Put a resource in force, adding it or replacing the one with the same key."""
    resource: object

    @property
    def kind(self) -> Kind:
        return kind_of(self.resource)

    @property
    def key(self) -> str:
        return self.resource.key


@dataclass(frozen=True, slots=True)
class Remove:
    kind: Kind
    key: str

    def __post_init__(self):
        object.__setattr__(self, "kind", Kind(self.kind))    # "workload" is Kind.WORKLOAD


@dataclass(frozen=True, slots=True)
class Rejection:
    """One change that was not applied (the resource in force, if any, stays)."""
    kind: Kind
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.key}: {self.reason}"


@dataclass(frozen=True)
class Applied:
    """The outcome of one apply() or replace(): the keys of each kind that changed (added,
    replaced by a different resource, or removed) and the changes rejected."""
    generation: int
    changed: dict = field(default_factory=dict)        # Kind -> frozenset of keys
    rejected: tuple[Rejection, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changed)

    def keys(self, kind: Kind) -> frozenset:
        return self.changed.get(kind, frozenset())
