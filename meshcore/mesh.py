"""meshcore inside your process: open and accept HBONE tunnels from asyncio code,
with no proxy and no extra hop.

    async with Mesh(identity, store) as mesh:
        reader, writer = await mesh.open_tunnel("10.0.0.7", 8080, expected=peer_identity)
        server = await mesh.serve(handler, port=15008, authorize=policy_check)
"""
from __future__ import annotations

import asyncio
import os
from binascii import b2a_hex
from collections.abc import Awaitable, Callable, Iterable

from meshcore.aio.client import dial
from meshcore.aio.pool import (IDLE_TIMEOUT, MAX_CONNECTIONS_PER_KEY, MAX_STREAMS, REFUSAL_HOLD, HbonePool,
                                PoolKey)
from meshcore.aio.server import HboneServer, TunnelRequest
from meshcore.identity.spiffe import SpiffeId
from meshcore.identity.store import CertificateStore, FileCredentials

HBONE_PORT = 15008


def traceparent() -> bytes:
    """W3C trace context for one tunnel (docs/hbone.md, The CONNECT request): version 00, random ids, not sampled."""
    ids = b2a_hex(os.urandom(24))           # trace id and parent id from one read of the OS's randomness
    return b"00-%s-%s-00" % (ids[:32], ids[32:])


class Mesh:
    """One workload identity joining the mesh from this process."""

    def __init__(self, identity: SpiffeId, store: CertificateStore, *, max_streams: int = MAX_STREAMS,
                 idle_timeout: float = IDLE_TIMEOUT, max_connections_per_key: int = MAX_CONNECTIONS_PER_KEY,
                 refusal_hold: float = REFUSAL_HOLD, **connection_options):
        """The pool's options (meshcore.aio.pool): `max_streams` per connection,
        `max_connections_per_key` per destination and expected identities, connections
        closed after `idle_timeout` s unused, a destination refusing streams not asked
        again for `refusal_hold` s. `connection_options` go to every HboneConnection."""
        self.identity = identity
        self.store = store
        self.connection_options = connection_options
        self.pool = HbonePool(self._connect, max_streams=max_streams, idle_timeout=idle_timeout,
                              max_connections_per_key=max_connections_per_key, refusal_hold=refusal_hold)
        self.servers: list[HboneServer] = []
        # pool keys by (expected identity, via): the same few on every tunnel, and a key
        # built anew costs a NamedTuple and the hashing of its SpiffeIds each time
        self._keys: dict[tuple, PoolKey] = {}

    @classmethod
    def from_directory(cls, directory, **kwargs) -> "Mesh":
        """Credentials written by cert-manager, a SPIRE agent or `meshcore ca issue`."""
        files = FileCredentials.from_directory(directory)
        return cls(files.credentials.identity, CertificateStore(files), **kwargs)

    async def _connect(self, key: PoolKey):
        host, port = key.destination
        return await dial(host, port, self.store.client_context(self.identity), key.expected,
                          local_addr=(key.source_ip, 0) if key.source_ip else None,
                          **self.connection_options)

    def open_tunnel_protocol(self, address: str, port: int, expected, protocol_factory: Callable,
                             *, via: tuple[str, int] | None = None, headers: Iterable = ()) -> Awaitable:
        """Tunnel to `address:port` through the HBONE server at `via` (default: the
        destination's own node, address:15008) whose identity is one of `expected`.
        To be awaited for (transport, protocol). Raises UsageError for a malformed
        header field (before any connection is dialed), TunnelError(status) when the
        far end refuses (503 also when it refuses new streams), or the dial's error
        (OSError, IdentityError). It returns the pool's coroutine itself: a frame of
        its own would be one more for every tunnel."""
        via = (address, HBONE_PORT) if via is None else tuple(via)
        if type(expected) is SpiffeId:
            # by the identity of an immutable id: looking it up hashes no SpiffeId, and
            # the key keeps it alive, so its id() is not reused while the entry stands
            key = self._keys.get((id(expected), via))
            if key is None:
                if len(self._keys) >= 1024:
                    self._keys.clear()
                key = self._keys[(id(expected), via)] = PoolKey(self.identity, (expected,), via)
        else:
            key = PoolKey(self.identity, (expected,) if isinstance(expected, SpiffeId) else tuple(expected), via)
        authority = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        return self.pool.open_stream(key, authority, protocol_factory,
                                     [(b"traceparent", traceparent()), *headers])

    async def open_tunnel(self, address: str, port: int, expected, *, via=None, headers: Iterable = (),
                          limit: int = 2 ** 16):
        """Like asyncio.open_connection, through an mTLS HBONE tunnel: (reader, writer).
        Raises TunnelError(status) when the far end refuses (401 denied, 503 unreachable)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        transport, protocol = await self.open_tunnel_protocol(
            address, port, expected, lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
            via=via, headers=headers)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def serve(self, handler: Callable[..., Awaitable[None]] | None = None, host: str = "0.0.0.0",
                    port: int = HBONE_PORT, *, authorize: Callable | None = None) -> HboneServer:
        """Accept tunnels for this identity: `handler(reader, writer, request)` runs for
        each CONNECT that `authorize(request)` (optional; bool or a policy Decision)
        lets through. The tunnel is answered 200 before the handler runs.

        Without a handler, each tunnel is relayed to its authority as a node relays it
        (HboneServer.relay): only to the address the connection arrived on (400 for any
        other), never to a listener of this Mesh (400)."""
        if handler is None:
            return await self._start_server(None, host, port, authorize)
        loop = asyncio.get_running_loop()

        async def accept(request: TunnelRequest) -> None:
            reader = asyncio.StreamReader(loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport = request.accept(protocol)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            try:
                await handler(reader, writer, request)
            finally:
                if not transport.is_closing():
                    writer.close()

        return await self._start_server(accept, host, port, authorize)

    async def _start_server(self, handler, host: str, port: int, authorize) -> HboneServer:
        server = HboneServer(lambda sockname: self.store.server_context(self.identity),
                             self.identity.trust_domain, handler=handler, authorize=authorize,
                             **self.connection_options)
        server.own_listeners = lambda: [s.address for s in self.servers if s._listener is not None]
        await server.start(host, port)
        self.servers.append(server)
        return server

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers), return_exceptions=True)
        await self.pool.close()

    async def __aenter__(self) -> "Mesh":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
