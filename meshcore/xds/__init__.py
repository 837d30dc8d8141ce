"""Joining Istio's control plane: configuration from istiod's delta xDS (client.py,
convert.py) and certificates from the Istio CA (ca.py), over gRPC.

grpcio and protobuf come with the `istio` extra (`pip install meshcore[istio]`); a node
proxy configured only by files never imports this package.
"""
try:
    import grpc  # noqa: F401
    import google.protobuf  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"meshcore's Istio control-plane client needs grpcio and protobuf ({exc}): "
        "pip install 'meshcore[istio]'") from exc
