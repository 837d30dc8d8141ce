"""Where an outbound connection goes: a pure function of the configuration, the source
workload and the original destination, so every case is a row in a table test.

    route(state, source, ip, port, choice=n) -> Route

Order (ztunnel's outbound): the proxy's own ports are refused (loop guard); a service
VIP picks a healthy endpoint (round-robin by `choice`) and maps the port; a service or
workload with a waypoint goes to the waypoint, the authority keeping the original
VIP:port; a PASSTHROUGH service (or its waypoint) picks no endpoint: the connection
goes to the original destination as plain TCP; a meshed (HBONE) workload gets a tunnel to its address:15008 with the source
workload's identity, expecting the destination's identity plus the service's SANs; a
TCP workload or an address outside the mesh is passed through as plain TCP.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

from meshcore.aio.server import cached_ip_address
from meshcore.identity.spiffe import SpiffeId
from meshcore.state.model import GatewayAddress, HealthPolicy, LoadBalancerMode, Service, Workload
from meshcore.state.view import MeshView

PROXY_PORTS = frozenset((15001, 15006, 15008, 15080))

class RouteKind(StrEnum):
    HBONE = "hbone"                              # a tunnel through the pool
    PASSTHROUGH = "passthrough"                  # plain TCP
    REFUSE = "refuse"


HBONE, PASSTHROUGH, REFUSE = RouteKind.HBONE, RouteKind.PASSTHROUGH, RouteKind.REFUSE


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    dial: tuple[str, int] | None = None          # the TCP address to connect to
    authority: str = ""                          # CONNECT authority (hbone)
    source_identity: SpiffeId | None = None
    expected: tuple[SpiffeId, ...] = ()          # identities the HBONE server may present
    workload: Workload | None = None             # destination workload, when known
    service: Service | None = None
    waypoint: bool = False
    reason: str = ""                             # why it was refused, or what was chosen

    @property
    def target(self) -> str:
        return self.authority or (f"{self.dial[0]}:{self.dial[1]}" if self.dial else "")


# Addresses as text, kept: each tunnel's route writes its destination as an authority
# and a dial address, and an ipaddress object is turned into text in Python.
@functools.lru_cache(maxsize=4096)
def _host_port(ip, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


_text = functools.lru_cache(maxsize=4096)(str)


def _expected(workload: Workload, service: Service | None) -> tuple[SpiffeId, ...]:
    ids = [workload.identity]
    for san in (service.subject_alt_names if service else ()):
        try:
            ids.append(SpiffeId.parse(san))
        except ValueError:
            pass                                 # a non-SPIFFE SAN cannot name an HBONE peer
    return tuple(dict.fromkeys(ids))


def _waypoint_route(state: MeshView, gateway: GatewayAddress, source: Workload, authority: str,
                    service: Service | None, workload: Workload | None) -> Route:
    if gateway.address is not None:
        network, ip = gateway.address
        wp = state.workload_at(network or source.network, ip)
        dial_ip = ip
    else:
        svc = state.by_service_key.get(f"{gateway.hostname[0]}/{gateway.hostname[1]}")
        if svc is None or not svc.vips:
            return Route(REFUSE, reason=f"waypoint {gateway} is not a known service")
        dial_ip = svc.vips[0][1]
        members = [w for w in state.endpoints.get(svc.key, ()) if w.healthy]
        wp = members[0] if members else None
    if wp is None:
        return Route(REFUSE, reason=f"waypoint {gateway} is not a known workload")
    return Route(HBONE, (str(dial_ip), gateway.hbone_mtls_port), authority, source.identity,
                 _expected(wp, None), workload, service, waypoint=True,
                 reason=f"through waypoint {wp.namespace}/{wp.name or wp.uid}")


def _is_waypoint_of(source: Workload, gateway: GatewayAddress | None) -> bool:
    """Traffic leaving the waypoint itself must not loop back into it."""
    return gateway is not None and gateway.address is not None and gateway.address[1] in source.ips


def route(state: MeshView, source: Workload, ip, port: int, *, choice: int = 0,
          own_addresses: frozenset = frozenset(), proxy_ports: frozenset = PROXY_PORTS) -> Route:
    """The route for a connection from `source` to `ip:port` (the original destination)."""
    ip = cached_ip_address(ip)
    if port in proxy_ports and (ip in own_addresses or ip.is_loopback):
        return Route(REFUSE, reason=f"{_host_port(ip, port)} is one of the proxy's own ports (loop guard)")
    network = source.network
    service = state.service_at(network, ip)
    authority = _host_port(ip, port)
    if service is not None:
        lb = service.load_balancer
        passthrough = lb is not None and lb.mode is LoadBalancerMode.PASSTHROUGH
        # ztunnel passes a PASSTHROUGH service's traffic on whatever port it came to:
        # the service names addresses outside the mesh, not the ports they serve
        if not passthrough and service.target_port(port) is None:
            return Route(REFUSE, service=service,
                         reason=f"service {service.key} has no port {port}")
        if service.waypoint is not None and not _is_waypoint_of(source, service.waypoint):
            return _waypoint_route(state, service.waypoint, source, authority, service, None)
        if passthrough:
            # even a workload holding this address is not picked (ztunnel: OriginalDestination)
            return Route(PASSTHROUGH, (str(ip), port), service=service,
                         reason=f"service {service.key} is PASSTHROUGH: plain TCP to the original destination")
        candidates = service_endpoints(state, service, port)
        if not candidates:
            return Route(REFUSE, service=service, reason=f"service {service.key} has no healthy endpoint "
                                                         f"for port {port}")
        return endpoint_route(state, source, service, port, candidates[choice % len(candidates)], ip.version)
    dest = state.workload_at(network, ip)
    if dest is None:
        return Route(PASSTHROUGH, (str(ip), port), reason="not a mesh address: plain TCP")
    return _to_workload(state, source, dest, ip, port, None)


def service_endpoints(state: MeshView, service: Service, port: int) -> list[Workload]:
    """The endpoints of `service` a connection to its `port` may go to: healthy ones
    (every one under the ALLOW_ALL health policy) that serve the port."""
    members = state.endpoints.get(service.key, ())
    health_all = service.load_balancer is not None and service.load_balancer.health_policy is HealthPolicy.ALLOW_ALL
    return [w for w in members if (w.healthy or health_all) and w.ips and w.target_port(service.key, port) is not None]


def endpoint_route(state: MeshView, source: Workload, service: Service, port: int, dest: Workload,
                   ip_version: int = 4) -> Route:
    """The route to one chosen endpoint of `service` for its `port`."""
    target = dest.target_port(service.key, port)
    dest_ip = next((a for a in dest.ips if a.version == ip_version), dest.ips[0])
    return _to_workload(state, source, dest, dest_ip, target, service)


def _to_workload(state: MeshView, source: Workload, dest: Workload, ip, port: int,
                 service: Service | None) -> Route:
    authority = _host_port(ip, port)
    if dest.waypoint is not None and not _is_waypoint_of(source, dest.waypoint) and service is None:
        return _waypoint_route(state, dest.waypoint, source, authority, None, dest)
    if not dest.meshed:
        return Route(PASSTHROUGH, (_text(ip), port), workload=dest, service=service,
                     reason=f"{dest.namespace}/{dest.name or dest.uid} is not meshed (protocol TCP): plain TCP")
    if dest.network != source.network:
        return Route(REFUSE, workload=dest, service=service,
                     reason=f"{dest.namespace}/{dest.name or dest.uid} is on network {dest.network!r}; "
                            "crossing networks (double HBONE through a gateway) is not supported yet")
    return Route(HBONE, (_text(ip), 15008), authority, source.identity, _expected(dest, service), dest, service,
                 reason=f"HBONE to {dest.namespace}/{dest.name or dest.uid}")
