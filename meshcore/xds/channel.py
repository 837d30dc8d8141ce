"""gRPC channels to istiod and its CA: TLS verified against the configured roots,
messages as large as istiod sends (a full push of a big cluster), and a channel that
is rebuilt when the roots file changes (a CA rotation updates the mounted configmap)."""
from __future__ import annotations

import asyncio
import logging

try:
    import grpc
    import grpc.aio
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"meshcore's Istio control-plane client needs grpcio ({exc}): "
                      "pip install 'meshcore[istio]'") from None

from meshcore.errors import ConfigError
from meshcore.xds.settings import RootCertificates

log = logging.getLogger("meshcore.xds")

# ztunnel accepts pushes up to 200 MiB; grpcio's default (4 MiB) would refuse a full
# push of a few thousand workloads
MAX_MESSAGE = 200 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # notice a dead istiod (a node lost, a silent network) without waiting for TCP: a
    # ping every 30 s while a call is open, as ztunnel. Not on an idle channel (the CA's,
    # between certificates): istiod refuses pings without a stream (grpc-go's enforcement
    # policy) and would end the connection with ENHANCE_YOUR_CALM "too_many_pings".
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # meshcore retries with its own backoff; grpcio's reconnect backoff stays short
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)


# how long a channel replaced by one with new roots keeps serving the calls it carries
# (longer than a CA call's timeout; an xDS stream on it restarts by itself on new roots)
RETIRE_GRACE = 30.0


class ChannelSource:
    """One channel to `address`, rebuilt when the roots change. `channel()` gives the
    current one (building it on first use or after a change of the roots file);
    `stale()` says whether the roots changed since it was built.

    A replaced channel is closed only once its calls have finished (or after
    `grace` seconds): closing it at once would cancel calls that other callers are
    waiting on. Roots that cannot be read keep the working channel in use (`error`
    says why) until the file changes again."""

    def __init__(self, address: str, roots: RootCertificates, *, server_name: str | None = None,
                 grace: float = RETIRE_GRACE):
        self.address, self.roots, self.server_name, self.grace = address, roots, server_name, grace
        self.error: str | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stamp = None
        self._failed_stamp = _NOTHING
        self._lock: asyncio.Lock | None = None
        self._retiring: dict[asyncio.Task, grpc.aio.Channel] = {}

    def stale(self) -> bool:
        if self._channel is None:
            return False
        stamp = self.roots.stamp()
        # roots that failed to load are not tried again (nor the stream restarted for
        # them) until the file changes once more
        return stamp != self._stamp and stamp != self._failed_stamp

    async def channel(self) -> "grpc.aio.Channel":
        if self._channel is not None and not self.stale():
            return self._channel
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            # another caller may have rebuilt it while this one waited
            if self._channel is not None and not self.stale():
                return self._channel
            stamp = self.roots.stamp()
            try:
                pem = self.roots.load()
            except ConfigError as exc:
                if self._channel is None:
                    raise
                self._failed_stamp, self.error = stamp, str(exc)
                log.error("%s: keeping the channel built with the previous root certificates: %s",
                          self.address, exc)
                return self._channel
            credentials = grpc.ssl_channel_credentials(root_certificates=pem)
            options = CHANNEL_OPTIONS
            if self.server_name:
                options += (("grpc.ssl_target_name_override", self.server_name),)
            old = self._channel
            self._channel = grpc.aio.secure_channel(self.address, credentials, options=options)
            self._stamp, self._failed_stamp, self.error = stamp, _NOTHING, None
            if old is not None:
                self._retire(old)
            return self._channel

    def _retire(self, channel: "grpc.aio.Channel") -> None:
        task = asyncio.get_running_loop().create_task(channel.close(grace=self.grace))
        self._retiring[task] = channel
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        retiring, self._retiring = self._retiring, {}
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for old in retiring.values():
            await old.close()
        if channel is not None:
            await channel.close()


_NOTHING = object()
