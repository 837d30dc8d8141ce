"""Joining Istio's control plane: configuration from istiod's delta xDS (client.py,
convert.py) and certificates from the Istio CA (ca.py), over gRPC (channel.py).

settings.py reads ztunnel's environment and needs nothing beyond meshcore itself; the
gRPC modules need grpcio and protobuf, which come with the `istio` extra
(`pip install 'meshcore[istio]'`). A node proxy configured only by files never loads them.
"""
import os

# gRPC's C core writes its own INFO lines to stderr (a GOAWAY from istiod, say), past
# the node's log format and level; the client logs what matters itself. A value the
# user sets wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
