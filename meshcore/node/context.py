"""What a proxy's components share, handed to each explicitly: settings, the mesh store,
certificates, telemetry, the source-address binder and the HBONE pool. A component
reads only this, never the proxy that wired it, so a waypoint can reuse inbound HBONE,
the pool, certificates and telemetry without a node proxy around them."""
from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meshcore.aio.client import dial
from meshcore.aio.pool import HbonePool, PoolKey
from meshcore.errors import ListenerError
from meshcore.identity.store import CertificateStore
from meshcore.node.netaddr import SourceBinder
from meshcore.node.telemetry import Telemetry
from meshcore.state.store import MeshStore


@dataclass(frozen=True)
class ProxySettings:
    node_name: str = ""                         # "": every workload is this node's (no NODE_NAME)
    network: str = ""
    trust_domain: str = "cluster.local"
    connect_timeout: float = 10.0
    drain_deadline: float = 5.0
    proxy_ports: frozenset = frozenset()        # the proxy's own traffic ports: never a destination
    listener_ips: frozenset = frozenset()       # addresses its listeners were given explicitly
    own_identity: object = None                 # SpiffeId the proxy holds for itself, or None

    def serves(self, workload) -> bool:
        """Whether `workload` is this node's: its `node` is our name, or we have none."""
        return not self.node_name or workload.node == self.node_name

    @property
    def networks(self) -> tuple[str, ...]:
        """Networks whose addresses are ours to look up: our own, then the default one."""
        return (self.network, "") if self.network else ("",)


@dataclass
class ProxyContext:
    settings: ProxySettings
    store: MeshStore
    certs: CertificateStore
    telemetry: Telemetry
    binder: SourceBinder
    pool: HbonePool | None = None
    # on-demand xDS (XDS_ON_DEMAND): lookup("network/ip") asks istiod for an address the
    # store does not hold; True once it is in force
    lookup: Callable[[str], Awaitable[bool]] | None = None


def hbone_pool(certs: CertificateStore, **pool_options) -> HbonePool:
    """A pool whose connections present the key's source identity from `certs`."""
    async def connect(key: PoolKey):
        host, port = key.destination
        return await dial(host, port, await certs.client_context_async(key.source_identity), key.expected,
                          local_addr=(key.source_ip, 0) if key.source_ip else None)
    return HbonePool(connect, **pool_options)


def listener_error(name: str, address: tuple, exc: OSError) -> ListenerError:
    """What a user reads when a listener cannot bind: which, where, why, and the likely cause."""
    host, port = address
    hint = " (is another meshcore node or ztunnel running?)" if exc.errno == errno.EADDRINUSE else ""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)     # uvloop's own text names the address again
    return ListenerError(f"cannot listen for {name} on {host}:{port}: {reason}{hint}")
