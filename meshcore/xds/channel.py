"""gRPC channels to istiod and its CA: TLS verified against the configured roots,
messages as large as istiod sends (a full push of a big cluster), and a channel that
is rebuilt when the roots file changes (a CA rotation updates the mounted configmap)."""
from __future__ import annotations

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"meshcore's Istio control-plane client needs grpcio ({exc}): "
                      "pip install 'meshcore[istio]'") from None

from meshcore.xds.settings import RootCertificates

# ztunnel accepts pushes up to 200 MiB; grpcio's default (4 MiB) would refuse a full
# push of a few thousand workloads
MAX_MESSAGE = 200 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # notice a dead istiod (a node lost, a silent network) without waiting for TCP
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # meshcore retries with its own backoff; grpcio's reconnect backoff stays short
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)


class ChannelSource:
    """One channel to `address`, rebuilt when the roots change. `channel()` gives the
    current one (building it on first use or after a change of the roots file);
    `stale()` says whether the roots changed since it was built."""

    def __init__(self, address: str, roots: RootCertificates, *, server_name: str | None = None):
        self.address, self.roots, self.server_name = address, roots, server_name
        self._channel: grpc.aio.Channel | None = None
        self._stamp = None

    def stale(self) -> bool:
        return self._channel is not None and self.roots.stamp() != self._stamp

    async def channel(self) -> "grpc.aio.Channel":
        if self._channel is not None and not self.stale():
            return self._channel
        await self.close()
        stamp = self.roots.stamp()
        credentials = grpc.ssl_channel_credentials(root_certificates=self.roots.load())
        options = CHANNEL_OPTIONS
        if self.server_name:
            options += (("grpc.ssl_target_name_override", self.server_name),)
        self._channel = grpc.aio.secure_channel(self.address, credentials, options=options)
        self._stamp = stamp
        return self._channel

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
