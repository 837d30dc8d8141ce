"""Joining Istio's control plane: configuration from istiod's delta xDS (client.py,
convert.py) and certificates from the Istio CA (ca.py), over gRPC (channel.py).

settings.py reads ztunnel's environment and needs nothing beyond meshcore itself; the
gRPC modules need grpcio and protobuf, which come with the `istio` extra
(`pip install 'meshcore[istio]'`). A node proxy configured only by files never loads them.
"""
