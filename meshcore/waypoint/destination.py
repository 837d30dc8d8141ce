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

import asyncio
import random
from dataclasses import dataclass, replace

from meshcore.node.routing import HBONE, Route
from meshcore.traffic.decide import NO_EDITS, HeaderEdits, LocalReply, RequestView, decide
from meshcore.traffic.retry import DEFAULT_RETRY_POLICY, RetryPolicy, backoff_delay, should_retry

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
    retry: RetryPolicy | None = DEFAULT_RETRY_POLICY
    address: tuple[str, int] = ("", 0)  # the backend's address:port the endpoint was chosen for

    def next_endpoint(self, tunnels, state, me) -> "Destination | None":
        """The same request to another endpoint of the backend (round robin), for a
        retry; None when the backend has no endpoint to offer."""
        chosen = tunnels.upstream(state, me, *self.address)
        return replace(self, chosen=chosen) if chosen.kind is HBONE else None


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
        address = (req.host, req.port)
        backend = service
    else:
        backend = state.by_service_key.get(decided.service_key)
        vip = next((ip for network, ip in backend.vips if network == me.network), None) if backend else None
        if vip is None:
            return LocalReply(503, decided.route, body=NO_HEALTHY_UPSTREAM, flag="UH",
                              reason=f"service {decided.service_key} has no address on network {me.network!r}")
        address = (str(vip), decided.port)
    chosen = tunnels.upstream(state, me, *address)
    port = address[1]
    if chosen.kind is not HBONE:
        return LocalReply(503, decided.route if decided else "", body=NO_HEALTHY_UPSTREAM, flag="UH",
                          reason=chosen.reason or "no endpoint")
    app_protocol = backend.app_protocol(port) if backend is not None else tunnel.app_protocol
    if decided is None:
        return Destination(chosen, target, request.authority, app_protocol, address=address)
    return Destination(chosen, decided.target, decided.authority, app_protocol, decided.route,
                       decided.request_headers, decided.response_headers, decided.timeout, decided.retry, address)


async def retry_destination(tunnels, where: Destination, retries: int, state, me, *, failure: str | None = None,
                            status: int | None = None, grpc_status: int | None = None,
                            before=None) -> Destination | None:
    """The next attempt's destination (another endpoint, after the policy's back-off)
    when the route's retry policy takes what happened (`failure`: no response;
    `status`: the response's) and `retries` so far leave one; None otherwise.
    `before()` is awaited first (giving the failed attempt up)."""
    policy = where.retry
    if policy is None or retries >= policy.num_retries or not should_retry(
            policy, status=status, grpc_status=grpc_status, failure=failure):
        return None
    again = where.next_endpoint(tunnels, state, me)
    if again is None:
        return None
    if before is not None:
        await before()
    await asyncio.sleep(backoff_delay(retries + 1, random.random(), base=policy.backoff_base))
    return again
