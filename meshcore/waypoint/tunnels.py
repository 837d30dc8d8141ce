"""The waypoint's inbound HBONE: one listener on the waypoint workload's address,
presenting its identity. For each CONNECT (authority: the VIP:port or workload
address:port the client dialed):

    the destination must use this waypoint (503 otherwise) ─► accept (200)
    ─► the first bytes say HTTP/1.1 ─► the HTTP/1.1 handler (requests, policies, upstream)
       the HTTP/2 connection preface ─► the HTTP/2 handler (h2c prior knowledge, gRPC)
                   anything else  ─► L4: the policies' L4 form (Envoy's network RBAC),
                                     then one tunnel to an endpoint, spliced

Telling HTTP apart is a guess a client can steer (it can stay silent, or send what
does not look like HTTP), so it decides how much a policy can see, never whether
one applies: an L4 tunnel is checked against the same policies, with the HTTP
conditions of an ALLOW rule never matching and those of a DENY rule taken to match.

The upstream is chosen by the node's own routing function with the waypoint as the
source, which sends the waypoint's traffic to endpoints directly (never back to itself).
"""
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
from collections.abc import Awaitable, Callable

from meshcore.aio.pool import PoolKey
from meshcore.aio.server import HboneServer, TunnelRequest
from meshcore.errors import IdentityError, MeshcoreError
from meshcore.l7.http1 import WatchedReader
from meshcore.node.context import ProxyContext, listener_error
from meshcore.node.record import ConnectionRecord
from meshcore.node.routing import HBONE, Route, route
from meshcore.state.model import GatewayAddress, Workload
from meshcore.state.view import MeshView

log = logging.getLogger("meshcore.waypoint")

SNIFF_TIMEOUT = 0.5          # seconds a client may stay silent before its tunnel is taken as L4
SNIFF_BYTES = 16
# RFC 9110 5.6.2 tchar: a request line is a method token then SP, whatever the method
TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
MAX_METHOD = 64              # a longer token is not taken for a method: the tunnel is L4
MAX_LEADING_CRLF = 1024      # empty lines before a request line skipped (RFC 9112 2.2), at most
COPY_CHUNK = 1 << 16
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def uses_waypoint(gateway: GatewayAddress | None, waypoint: Workload, state: MeshView) -> bool:
    """Whether `gateway` (a service's or workload's waypoint) names this waypoint: by its
    address, or by a service whose endpoints include it."""
    if gateway is None:
        return False
    if gateway.address is not None:
        return gateway.address[1] in waypoint.ips
    namespace, hostname = gateway.hostname
    service = state.service_by_hostname(hostname, namespace)
    return service is not None and any(w.uid == waypoint.uid for w in state.endpoints.get(service.key, ()))


def destination_of(state: MeshView, waypoint: Workload, host: str, port: int):
    """(service, workload) the authority names, if it uses this waypoint; (None, None) if not."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None, None
    service = state.service_at(waypoint.network, ip)
    if service is not None:
        return (service, None) if uses_waypoint(service.waypoint, waypoint, state) else (None, None)
    workload = state.workload_at(waypoint.network, ip)
    if workload is not None and uses_waypoint(workload.waypoint, waypoint, state):
        return None, workload
    return None, None


class WaypointTunnels:
    """The waypoint's HBONE listener. `http1(reader, writer, tunnel)` serves a tunnel
    whose client speaks HTTP/1.1, `http2(transport, received, tunnel)` one that opened
    with the HTTP/2 preface (`received`: the bytes already read, preface included; the
    handler takes the tunnel's transport over). None: such tunnels are L4. An `http2`
    with a `drain(deadline)` is drained with the listener."""

    def __init__(self, ctx: ProxyContext, waypoint: Callable[[MeshView], Workload | None], *,
                 listen: tuple | None, http1: Callable[..., Awaitable[None]] | None = None,
                 http2: Callable[..., Awaitable[None]] | None = None, name: tuple[str, str] | None = None):
        self.ctx = ctx
        self.waypoint = waypoint                   # its own workload, from the view in force
        self.name = name                           # (namespace, name) its policies target; None: its workload's
        self.listen = listen                       # (host, port); host "waypoint": its workload's address
        self.http1 = http1
        self.http2 = http2
        self.draining = False                      # HTTP/1.1 answers say `connection: close` from now on
        self.server: HboneServer | None = None
        self._choice = itertools.count()

    def address(self, state: MeshView) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, port = self.listen
        if host == "waypoint":
            me = self.waypoint(state)
            return (str(me.ips[0]), port) if me is not None and me.ips else None
        return host, port

    async def start(self) -> "WaypointTunnels":
        address = self.address(self.ctx.store.view)
        if address is None:
            return self
        self.server = HboneServer(self._context, self.ctx.settings.trust_domain, handler=self.handle)
        try:
            await self.server.start(*address)
        except OSError as exc:
            self.server = None
            raise listener_error("inbound", address, exc) from None
        return self

    async def _context(self, destination):
        me = self.waypoint(self.ctx.store.view)
        if me is None:
            raise IdentityError("the waypoint's own workload is not in the configuration", "unknown-destination")
        return await self.ctx.certs.server_context_async(me.identity)

    @property
    def connections(self) -> int:
        return len(self.server.connections) if self.server is not None else 0

    async def drain(self, deadline: float) -> None:
        self.draining = True
        # HTTP/2 clients inside the tunnels get their own GOAWAY: the HBONE one only
        # stops new tunnels, and a client would keep sending requests on the one it has
        l7_drain = getattr(self.http2, "drain", None)
        await asyncio.gather(*([self.server.close(deadline)] if self.server is not None else []),
                             *([l7_drain(deadline)] if l7_drain is not None else []))

    # -- one tunnel ------------------------------------------------------------------
    def upstream(self, state: MeshView, me: Workload, host: str, port: int) -> Route:
        """Where the waypoint sends what a tunnel to host:port carries: the node's routing
        with the waypoint as source (so to an endpoint, never back here)."""
        return route(state, me, host, port, choice=next(self._choice), proxy_ports=self.ctx.settings.proxy_ports)

    async def open_upstream(self, chosen: Route, me: Workload, headers=(), protocol_factory=None,
                            connect_timeout: float | None = None):
        """An HBONE tunnel to the chosen endpoint with the waypoint's identity: (reader, writer);
        with `protocol_factory`, (transport, protocol) of the protocol it makes. It must be
        open within `connect_timeout` seconds (the destination's DestinationRule's; None:
        the waypoint's --connect-timeout), else TimeoutError: a connect failure."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=COPY_CHUNK, loop=loop)
        factory = protocol_factory or (lambda: asyncio.StreamReaderProtocol(reader, loop=loop))
        # from its own address, as a waypoint pod connects: the destination node names it
        key = PoolKey(me.identity, chosen.expected, chosen.dial, str(me.ips[0]) if me.ips else None)
        transport, protocol = await asyncio.wait_for(self.ctx.pool.open_stream(
            key, chosen.authority, factory, list(headers)),
            self.ctx.settings.connect_timeout if connect_timeout is None else connect_timeout)
        if protocol_factory is not None:
            return transport, protocol
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def handle(self, request: TunnelRequest) -> None:
        ctx = self.ctx
        state = ctx.store.view
        me = self.waypoint(state)
        peer_ip, peer_port = request.peer_address[:2]
        record = ConnectionRecord("inbound", src_addr=f"{peer_ip}:{peer_port}", dst_addr=request.authority,
                                  hbone_addr=request.authority, src_identity=request.peer_identity.uri, mtls=True)
        source = state.workload_at(ctx.settings.network, ipaddress.ip_address(peer_ip))
        record.src_workload = source if source is not None and source.identity == request.peer_identity else None
        if me is None:
            request.refuse(503)
            ctx.telemetry.refused(record, "503: the waypoint's own workload is not in the configuration")
            return
        service, workload = destination_of(state, me, request.host, request.port)
        record.service, record.dst_workload = service, workload
        if service is None and workload is None:
            request.refuse(503)
            ctx.telemetry.refused(record, f"503: {request.authority} does not use waypoint "
                                          f"{me.namespace}/{me.name}")
            return
        loop = asyncio.get_running_loop()
        reader = WatchedReader(limit=COPY_CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = request.accept(protocol)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        tunnel = Tunnel(request, record, state, me, service, workload)
        try:
            if not sniffs(tunnel.app_protocol):
                # declared not HTTP: a server-first protocol is not kept waiting for the
                # client to say what it speaks
                await self._l4(reader, writer, tunnel)
                return
            skipped, first = await _sniff(reader)
            if self.http2 is not None and not skipped and could_be_http2(first):
                await self.http2(transport, _take(reader, first), tunnel)
            elif self.http1 is not None and could_be_http1(first):
                # the empty lines are not forwarded: a server ignores them, but what it
                # would make of them is not what the waypoint decided on
                await self.http1(_unread(reader, first), writer, tunnel)
            else:
                await self._l4(_unread(reader, skipped + first), writer, tunnel)
        finally:
            if not transport.is_closing():
                writer.close()

    def l4_decision(self, tunnel: "Tunnel"):
        """The waypoint's policies for a tunnel it does not read as HTTP, decided on what
        any tunnel has: the peer's identity, its address, the destination and port."""
        request, service = tunnel.request, tunnel.service
        name = self.name or (tunnel.waypoint.namespace, tunnel.waypoint.name)
        policies = self.ctx.store.view.waypoint_policy_set(
            name, (service.namespace, service.name) if service is not None else None, layer="l4")
        return policies.evaluate(request.peer_identity.principal, request.peer_address[0], request.host,
                                 request.port)

    async def _l4(self, reader, writer, tunnel: "Tunnel") -> None:
        """Not HTTP: the connection as a whole to one endpoint, if the policies allow it."""
        ctx, record = self.ctx, tunnel.record
        decision = self.l4_decision(tunnel)
        if not decision:
            writer.transport.abort()
            ctx.telemetry.refused(record, f"denied: {decision.reason}")
            return
        chosen = self.upstream(tunnel.state, tunnel.waypoint, tunnel.request.host, tunnel.request.port)
        if chosen.kind is not HBONE:
            writer.transport.abort()
            ctx.telemetry.refused(record, f"no endpoint: {chosen.reason or chosen.kind}")
            return
        record.dst_workload, record.dst_identity = chosen.workload, chosen.expected[0].uri
        try:
            up_reader, up_writer = await self.open_upstream(chosen, tunnel.waypoint)
        except (OSError, MeshcoreError, asyncio.TimeoutError) as exc:
            writer.transport.abort()
            ctx.telemetry.refused(record, f"{type(exc).__name__}: {exc}")
            return
        ctx.telemetry.opened(record)
        counts = [0, 0]                    # bytes client → upstream, upstream → client, as they pass
        error = ""
        try:
            results = await asyncio.gather(_copy(reader, up_writer, counts, 0), _copy(up_reader, writer, counts, 1),
                                           return_exceptions=True)
            errors = [e for e in results if isinstance(e, BaseException)]
            error = f"{type(errors[0]).__name__}: {errors[0]}" if errors else ""
        except asyncio.CancelledError:
            error = "cancelled: the tunnel was reset or the waypoint stopped"
            raise
        finally:
            # whatever ended the splice (a reset tunnel cancels this task), both sides are
            # closed and the connection is reported once
            for side in (up_writer, writer):
                if side.transport.is_closing():
                    continue
                if error:
                    side.transport.abort()
                else:
                    side.close()
            record.bytes_recv, record.bytes_sent = counts
            record.finish(error)
            ctx.telemetry.closed(record)


def sniffs(app_protocol: str | None) -> bool:
    """Whether a tunnel's first bytes decide how it is read: a port declared tcp or tls
    carries no HTTP a waypoint could read."""
    return app_protocol not in ("tcp", "tls")


def upstream_http(app_protocol: str | None, downstream: str, pool=None) -> str:
    """The HTTP version ("1.1" or "2") a request goes to its backend in: what the service
    port declares its servers speak, else what the client spoke (Envoy's
    use-downstream-protocol for ports that declare nothing). `pool`, the destination's
    DestinationRule connectionPool.http (traffic.istio_model.HTTPSettings), changes it
    as istiod writes the cluster: useClientProtocol, the client's version whatever the
    port declares; h2UpgradePolicy UPGRADE, HTTP/2 to a port declared http (istiod's
    upgrade only fills a cluster without protocol options: a port that declares nothing
    already has the client's). DO_NOT_UPGRADE and DEFAULT keep the declaration: the
    mesh-wide default policy is DO_NOT_UPGRADE."""
    if pool is not None:
        if pool.use_client_protocol:
            return downstream
        if pool.h2_upgrade_policy == "UPGRADE" and app_protocol == "http":
            return "2"
    if app_protocol == "http":
        return "1.1"
    if app_protocol in ("http2", "grpc"):
        return "2"
    return downstream


class Tunnel:
    """What the L7 handler needs of the tunnel it serves."""
    __slots__ = ("request", "record", "state", "waypoint", "service", "workload", "app_protocol")

    def __init__(self, request: TunnelRequest, record: ConnectionRecord, state: MeshView, waypoint: Workload,
                 service, workload):
        self.request, self.record, self.state = request, record, state
        self.waypoint, self.service, self.workload = waypoint, service, workload
        # what the service port says its servers speak (None: a workload, or undeclared)
        self.app_protocol = service.app_protocol(request.port) if service is not None else None


def _unread(reader: asyncio.StreamReader, head: bytes) -> asyncio.StreamReader:
    """Put bytes taken from `reader` back in front of what it holds. StreamReader has no
    unread(); its buffer is where every read method takes from, and nothing waits on it
    while the tunnel's handler holds it."""
    if head:
        buffer = reader._buffer                               # noqa: SLF001
        buffer[:0] = head
    return reader


def _take(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """`head` and whatever `reader` holds beyond it, leaving it empty: the bytes a handler
    that takes the transport over must see first."""
    buffer = reader._buffer                                   # noqa: SLF001
    data = head + bytes(buffer)
    buffer.clear()
    return data


def could_be_http2(head: bytes) -> bool | None:
    """True: the HTTP/2 connection preface (prior knowledge); False: not it; None: too few bytes."""
    n = min(len(head), len(H2_PREFACE))
    if head[:n] != H2_PREFACE[:n]:
        return False
    return True if n == len(H2_PREFACE) else None


def could_be_http1(head: bytes) -> bool | None:
    """True: an HTTP/1.1 request line starts here (a method token, then a space); False:
    it cannot; None: too few bytes. Any method: one outside a fixed list would otherwise
    make the tunnel L4."""
    for i, byte in enumerate(head[:MAX_METHOD + 1]):
        if byte == 0x20:
            return i > 0
        if byte not in TCHAR:
            return False
    return None if len(head) <= MAX_METHOD else False


async def _sniff(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(skipped, head): the empty lines (CRLF or LF) the client sent first, and the bytes
    after them, enough to tell HTTP/1.1 and HTTP/2 from anything else; head is b"" (or
    what came) if it stays silent (a server-first protocol) or closes."""
    skipped, head = b"", b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SNIFF_TIMEOUT
    while could_be_http1(head) is None or could_be_http2(head) is None:
        if not head and len(skipped) > MAX_LEADING_CRLF:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(SNIFF_BYTES), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        if head:
            head += chunk
        else:
            rest = chunk.lstrip(b"\r\n")
            skipped, head = skipped + chunk[:len(chunk) - len(rest)], rest
    return skipped, head


async def _copy(reader, writer, counts: list, index: int) -> int:
    """Copy to EOF, adding each chunk's size to counts[index] as it goes (the count holds
    if the copy is cancelled)."""
    try:
        while chunk := await reader.read(COPY_CHUNK):
            writer.write(chunk)
            counts[index] += len(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, asyncio.IncompleteReadError):
        writer.transport.abort()
        raise
    return counts[index]
