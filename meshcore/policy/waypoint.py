"""Authorization at a waypoint (docs/policy.md, "Waypoint policies"): the request facts
a waypoint evaluates, and what it answers when a request is denied.

    engine = PolicyEngine(policies, layer="l7")
    table = engine.waypoint_policy_set(("shop", "waypoint"), ("shop", "web"))
    decision = evaluate_request(table, peer=peer_identity, source_ip=peer_ip,
                                destination_ip=vip, port=8080, method="GET", path=raw_path,
                                host=authority, headers=headers)
    if not decision.allowed:
        answer = denied_response(headers)
"""
from __future__ import annotations

from dataclasses import dataclass

from meshcore.policy.model import TargetRef, attached_to_waypoint, waypoint_policies
from meshcore.policy.paths import request_path

DENIED_MESSAGE = "RBAC: access denied"
GRPC_PERMISSION_DENIED = 7


def evaluate_request(policy_set, *, peer, source_ip: str, destination_ip: str, port: int,
                     method: str | None = None, path: str | None = None, host: str | None = None,
                     headers: dict | None = None, request_principal: str | None = None,
                     normalization: str = "BASE"):
    """One HTTP request through a waypoint's PolicySet.

    peer: the client workload's identity as the tunnel presented it (a SpiffeId, a
    principal `td/ns/NS/sa/SA` or spiffe://..., or None for none): principals,
    namespaces and serviceAccounts are read from it, never from a header the client
    could write. destination_ip and port: the service VIP and port the request was
    addressed to. path: as received; normalized here as the waypoint normalizes it
    before routing (Istio's meshConfig pathNormalization, BASE unless configured), so a
    policy on /admin also holds for /public/../admin. A request-target in absolute-form
    is decided on its path; one request_path() refuses (%00, a fragment, ...) is denied
    here, though its caller should have answered it 400 before asking."""
    principal = getattr(peer, "principal", peer)
    if path is not None:
        try:
            path = request_path(path, normalization, method=method)[0]
        except ValueError as exc:
            return Refused(f"denied: the request-target cannot be decided on ({exc})")
    return policy_set.evaluate(principal, source_ip, destination_ip, port, method=method, path=path,
                               host=host, headers=headers, request_principal=request_principal)


@dataclass(frozen=True, slots=True)
class Refused:
    """A denial no policy made: what evaluate_request answers for a request it cannot decide on."""
    reason: str
    allowed: bool = False
    policy: str | None = None
    action: str | None = None
    audit: tuple = ()
    dry_run: tuple = ()
    shadow_allowed: bool | None = None

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class DeniedResponse:
    """What to answer a denied request. trailers_only: send `headers` as the only
    header block, with END_STREAM (gRPC's Trailers-Only form); body is then empty."""
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    trailers_only: bool = False


_HTTP_DENIED = DeniedResponse(403, (("content-type", "text/plain"),
                                    ("content-length", str(len(DENIED_MESSAGE)))), DENIED_MESSAGE.encode())
_GRPC_DENIED = DeniedResponse(200, (("content-type", "application/grpc"),
                                    ("grpc-status", str(GRPC_PERMISSION_DENIED)),
                                    ("grpc-message", DENIED_MESSAGE)), b"", True)


def is_grpc(request_headers) -> bool:
    """A gRPC request as Envoy tells one: content-type application/grpc or
    application/grpc+<codec>. gRPC-Web is not: its clients read an HTTP status."""
    items = request_headers.items() if hasattr(request_headers, "items") else request_headers or ()
    for name, value in items:
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        if name.lower() != "content-type":
            continue
        value = value.decode("latin-1") if isinstance(value, bytes) else value
        media = value.split(";", 1)[0].strip().lower()
        return media == "application/grpc" or media.startswith("application/grpc+")
    return False


def denied_response(request_headers=()) -> DeniedResponse:
    """The answer Istio's waypoint (Envoy's RBAC filter) gives a denied request: 403
    `RBAC: access denied` as text/plain; for gRPC, 200 with grpc-status 7
    (PERMISSION_DENIED) and the same message, Trailers-Only, since gRPC clients read
    the status from trailers and would report a 403 as an unknown transport failure."""
    return _GRPC_DENIED if is_grpc(request_headers) else _HTTP_DENIED


__all__ = ["DENIED_MESSAGE", "DeniedResponse", "Refused", "TargetRef", "attached_to_waypoint", "denied_response",
           "evaluate_request", "is_grpc", "waypoint_policies"]
