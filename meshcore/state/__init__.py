"""The mesh as a store of resources changed by deltas (state → sources → components →
modes: sources write here, components read views and subscribe to changes)."""
from meshcore.state.changes import Applied, Kind, Rejection, Remove, Upsert
from meshcore.state.model import (GatewayAddress, HealthPolicy, LoadBalancer, LoadBalancerMode, Locality, MtlsMode,
                                  PeerAuthentication, Protocol, Service, Waypoint, WaypointFor, Workload)
from meshcore.state.store import MeshStore, StateChange
from meshcore.state.view import MeshView

__all__ = ["Applied", "GatewayAddress", "HealthPolicy", "Kind", "LoadBalancer", "LoadBalancerMode", "Locality",
           "MeshStore", "MeshView", "MtlsMode", "PeerAuthentication", "Protocol", "Rejection", "Remove",
           "Service", "StateChange", "Upsert", "Waypoint", "WaypointFor", "Workload"]
