"""The gRPC status a proxy's own answer to a gRPC call carries for an HTTP status:
Envoy's Grpc::Utility::httpToGrpcStatus (gRPC's HTTP to gRPC status mapping)."""
from __future__ import annotations

GRPC_UNKNOWN = 2
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def http_to_grpc_status(status: int) -> int:
    return _HTTP_TO_GRPC.get(status, GRPC_UNKNOWN)
