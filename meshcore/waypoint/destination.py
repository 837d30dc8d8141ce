"""Where one request through the waypoint goes: the routes attached to its service
decide (meshcore.traffic.decide), then an endpoint of the chosen backend service is
picked by the node's routing with the waypoint as the source.

    destination(...) ─► LocalReply     404 no route, 500 no valid backend, a redirect,
                                       503 no healthy endpoint
                     ─► Destination    the endpoint (Route), the request-target and host to
                                       send, header edits both ways, the timeout, and the
                                       protocol the backend's port declares
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from meshcore.node.routing import HBONE, Route
from meshcore.traffic.decide import NO_EDITS, Forward, HeaderEdits, LocalReply, RequestView, decide

NO_HEALTHY_UPSTREAM = b"no healthy upstream"


@dataclass(frozen=True, slots=True)
class Destination:
    chosen: Route
    target: str                        # origin-form request-target to send
    authority: str                     # Host / :authority to send
    app_protocol: str | None           # what the backend's port declares
    route: str = ""                    # the route rule that decided (namespace.name.rule), "" for none
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    timeout: float | None = None


def destination(tunnels, state, tunnel, request: RequestView, target: str, *,
                waypoint_namespace: str) -> Destination | LocalReply:
    """The decision for a request whose policies allowed it; `target` is its normalized
    request-target (what goes upstream when no route rewrites it)."""
    req, me, service = tunnel.request, tunnel.waypoint, tunnel.service
    decided = decide(state, service, req.port, request, random.random(),
                     waypoint_namespace=waypoint_namespace) if service is not None else None
    if isinstance(decided, LocalReply):
        return decided
    if decided is None or (decided.service_key == service.key and decided.port == req.port):
        chosen = tunnels.upstream(state, me, req.host, req.port)
        backend, port = service, req.port
    else:
        backend = state.by_service_key.get(decided.service_key)
        vip = next((ip for network, ip in backend.vips if network == me.network), None) if backend else None
        if vip is None:
            return LocalReply(503, decided.route, body=NO_HEALTHY_UPSTREAM, flag="UH",
                              reason=f"service {decided.service_key} has no address on network {me.network!r}")
        chosen = tunnels.upstream(state, me, str(vip), decided.port)
        port = decided.port
    if chosen.kind is not HBONE:
        return LocalReply(503, decided.route if decided else "", body=NO_HEALTHY_UPSTREAM, flag="UH",
                          reason=chosen.reason or "no endpoint")
    app_protocol = backend.app_protocol(port) if backend is not None else tunnel.app_protocol
    if decided is None:
        return Destination(chosen, target, request.authority, app_protocol)
    return _routed(chosen, decided, app_protocol)


def _routed(chosen: Route, decided: Forward, app_protocol: str | None) -> Destination:
    return Destination(chosen, decided.target, decided.authority, app_protocol, decided.route,
                       decided.request_headers, decided.response_headers, decided.timeout)
