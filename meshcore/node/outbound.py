"""The node's outbound side: captured connections (15001, original destination from
SO_ORIGINAL_DST) and SOCKS5 (15080) from workloads on this node, each routed
(routing.route) and carried over HBONE or passed through as plain TCP."""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket

from meshcore.aio.relay import RelayListener
from meshcore.aio.deadline import deadline
from meshcore.aio.pool import PoolKey
from meshcore.aio.server import cached_ip_address
from meshcore.errors import MeshcoreError, TunnelError
from meshcore.mesh import traceparent
from meshcore.node import socks5
from meshcore.node.context import ProxyContext, listener_error
from meshcore.node.netaddr import original_destination
from meshcore.node.record import ConnectionRecord
from meshcore.node.routing import HBONE, PASSTHROUGH, Route, route
from meshcore.state.changes import Kind
from meshcore.state.view import MeshView

log = logging.getLogger("meshcore.outbound")


class RouteRefused(ConnectionRefusedError):
    def __init__(self, message: str, socks_reply: int = socks5.NOT_ALLOWED):
        super().__init__(message)
        self.socks_reply = socks_reply


class Outbound:
    """Captured connections (`capture`: (host, port) or None) and SOCKS5 (`socks5`), from
    this node's workloads, routed and carried over HBONE through the context's pool."""

    def __init__(self, ctx: ProxyContext, *, capture: tuple | None, socks5: tuple | None):
        self.ctx = ctx
        self.capture_address, self.socks_address = capture, socks5
        self.relay = RelayListener(self.dial_captured, ctx.telemetry.relay_ended)
        self.capture: asyncio.AbstractServer | None = None
        self.socks: asyncio.AbstractServer | None = None
        self.own_addresses: frozenset = frozenset()   # refused as destinations on the proxy's ports
        self._choice = itertools.count()
        self._baggage: dict[int, tuple] = {}        # id(source workload) -> (workload, header value)
        self._unsubscribe = None

    async def start(self) -> "Outbound":
        """Open the capture and SOCKS5 listeners (ListenerError naming the one that
        cannot listen), then follow the store's local workloads."""
        loop = asyncio.get_running_loop()
        for name, address, factory in (("outbound", self.capture_address, self.relay._accepted),
                                       ("socks5", self.socks_address,
                                        lambda: socks5.Socks5Handshake(self._socks_request))):
            if address is None:
                continue
            try:
                server = await loop.create_server(factory, *address, backlog=4096)
            except OSError as exc:
                await self.close()
                raise listener_error(name, address, exc) from None
            if name == "outbound":
                self.capture = server
            else:
                self.socks = server
        self._own_addresses(self.ctx.store.view)
        self._unsubscribe = self.ctx.store.subscribe(lambda change: self._own_addresses(change.new),
                                                     (Kind.WORKLOAD,))
        return self

    def _own_addresses(self, view: MeshView) -> None:
        settings = self.ctx.settings
        self.own_addresses = frozenset(settings.listener_ips).union(
            ip for w in view.local_workloads(settings.node_name) for ip in w.ips)

    def stop_accepting(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for server in (self.capture, self.socks):
            if server is not None:
                server.close()
        self.capture = self.socks = None

    async def drain(self, deadline: float) -> None:
        """Stop accepting; relayed connections have until the deadline to end."""
        self.stop_accepting()
        await self.relay.wait_closed(deadline)

    async def close(self) -> None:
        self.stop_accepting()
        await self.relay.close()

    # -- entry points ---------------------------------------------------------------
    async def dial_captured(self, protocol_factory, client: asyncio.Transport) -> ConnectionRecord:
        ip, port = original_destination(client.get_extra_info("socket"))
        return await self.dial(protocol_factory, client, ip, port)

    def _socks_request(self, client: asyncio.Transport, host: str, port: int) -> None:
        async def dial(protocol_factory, transport):
            answer = _SocksAnswer(transport, protocol_factory)
            try:
                ip = self.resolve_mesh_name(host) or await self._resolve(host)
                return await self.dial(answer.connected, transport, ip, port)
            except Exception as exc:
                code = getattr(exc, "socks_reply", None) or _socks_code(exc)
                if not answer.sent and not transport.is_closing():
                    transport.write(socks5.reply(code))
                    transport.close()         # the reply says why; a RST could discard it
                raise
        self.relay.adopt(client, dial)

    def resolve_mesh_name(self, host: str) -> str | None:
        """Mesh service hostnames resolve to their VIP before DNS is asked."""
        service = self.ctx.store.view.service_by_hostname(host.rstrip("."))
        if service is not None:
            vip = next((v for n, v in service.vips if n in self.ctx.settings.networks), None)
            return str(vip) if vip is not None else None
        return None

    async def _resolve(self, host: str) -> str:
        try:
            cached_ip_address(host)
            return host
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise RouteRefused(f"cannot resolve {host!r}: {exc.strerror}", socks5.HOST_UNREACHABLE) from None
        return infos[0][4][0]

    # -- routing and dialing -----------------------------------------------------------
    async def dial(self, protocol_factory, client: asyncio.Transport, ip: str, port: int) -> ConnectionRecord:
        ctx, settings = self.ctx, self.ctx.settings
        peer_ip, peer_port = client.get_extra_info("peername")[:2]
        record = ConnectionRecord("outbound", src_addr=f"{peer_ip}:{peer_port}", dst_addr=_host_port(ip, port))
        try:
            view = ctx.store.view
            source = view.workload_at(settings.network, cached_ip_address(peer_ip))
            record.src_workload = source
            if source is None or not settings.serves(source):
                raise RouteRefused(f"source {peer_ip} is not a workload of node {settings.node_name!r}"
                                   if settings.node_name else f"source {peer_ip} is not a workload of the mesh")
            chosen = route(view, source, ip, port, choice=next(self._choice),
                           own_addresses=self.own_addresses, proxy_ports=settings.proxy_ports)
            if (chosen.kind is PASSTHROUGH and chosen.workload is None and chosen.service is None
                    and ctx.lookup is not None):
                # on demand, the store holds only what was asked for: an address it does not
                # know may be the mesh's, so istiod is asked before it goes out as plain TCP
                chosen = await self._route_after_lookup(source, ip, port, chosen)
            record.dst_workload, record.service = chosen.workload, chosen.service
            if chosen.kind is HBONE:
                record.hbone_addr, record.mtls = chosen.authority, True
                record.src_identity = source.identity.uri
                record.dst_identity = chosen.expected[0].uri
                await self._tunnel(chosen, source, peer_ip, peer_port, protocol_factory)
            elif chosen.kind is PASSTHROUGH:
                async with deadline(settings.connect_timeout):
                    await asyncio.get_running_loop().create_connection(
                        protocol_factory, *chosen.dial, local_addr=ctx.binder.local_addr(peer_ip))
            else:
                raise RouteRefused(chosen.reason)
        except (OSError, MeshcoreError, asyncio.TimeoutError) as exc:
            # a tunnel refused, a destination unreachable, or no certificate to present
            ctx.telemetry.refused(record, _describe(exc), "CONNECT")
            raise
        ctx.telemetry.opened(record)
        return record

    async def _route_after_lookup(self, source, ip: str, port: int, chosen: Route) -> Route:
        settings = self.ctx.settings
        try:
            async with asyncio.timeout(settings.connect_timeout):
                found = await self.ctx.lookup(f"{source.network}/{ip}")
        except asyncio.TimeoutError:
            found = False
        if not found:
            return chosen
        return route(self.ctx.store.view, source, ip, port, choice=next(self._choice),
                     own_addresses=self.own_addresses, proxy_ports=settings.proxy_ports)

    async def _tunnel(self, chosen: Route, source, peer_ip: str, peer_port: int, protocol_factory) -> None:
        ctx = self.ctx
        forwarded = f'for="{_host_port(peer_ip, peer_port)}"'
        if chosen.service is not None:
            forwarded += f";host={chosen.service.hostname}"
        # the same for every tunnel of a source workload (frozen: a changed one is a new
        # object); by identity, as hashing a workload hashes all of its fields
        cached = self._baggage.get(id(source))
        if cached is not None and cached[0] is source:
            baggage = cached[1]
        else:
            baggage = ",".join(f"{k}={v}" for k, v in (
                ("k8s.cluster.name", source.cluster_id), ("k8s.namespace.name", source.namespace),
                (f"k8s.{source.workload_type}.name", source.workload_name or source.name),
                ("service.name", source.canonical_name), ("service.version", source.canonical_revision)) if v
            ).encode()
            if len(self._baggage) >= 1024:
                self._baggage.clear()
            self._baggage[id(source)] = (source, baggage)
        bind = ctx.binder.local_addr(peer_ip)
        key = PoolKey(source.identity, chosen.expected, chosen.dial, bind[0] if bind else None)
        # a deadline, not wait_for: no task of its own per tunnel
        async with deadline(ctx.settings.connect_timeout):
            await ctx.pool.open_stream(
                key, chosen.authority, protocol_factory,
                [(b"forwarded", forwarded.encode()), (b"traceparent", traceparent()), (b"baggage", baggage)])


class _SocksAnswer:
    """The SOCKS5 success reply, sent when the far side is connected and before any of
    its bytes. A protocol factory is no such moment: uvloop calls it before its TCP
    connect has succeeded (stock asyncio after), and a reply sent from there would be
    followed by a failure reply when the connect is refused. `connected` stands in for
    the relay's protocol until connection_made, then hands the transport over to it."""

    def __init__(self, client: asyncio.Transport, protocol_factory):
        self.client = client
        self.protocol_factory = protocol_factory
        self.sent = False

    def connected(self) -> asyncio.BaseProtocol:
        return _AnswerOnConnect(self)


class _AnswerOnConnect(asyncio.Protocol):
    def __init__(self, answer: _SocksAnswer):
        self.answer = answer

    def connection_made(self, transport) -> None:
        answer = self.answer
        answer.sent = True
        answer.client.write(socks5.reply(socks5.SUCCEEDED, answer.client.get_extra_info("sockname")[:2]))
        protocol = answer.protocol_factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TunnelError):
        return f"http status: {exc.status}"
    if isinstance(exc, asyncio.TimeoutError):
        return "connection timed out"
    return str(exc) or type(exc).__name__


def _socks_code(exc: BaseException) -> int:
    if isinstance(exc, TunnelError):
        return socks5.NOT_ALLOWED if exc.status == 401 else socks5.HOST_UNREACHABLE
    if isinstance(exc, ConnectionRefusedError):
        return socks5.REFUSED
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return socks5.HOST_UNREACHABLE
    if isinstance(exc, OSError):
        return socks5.NETWORK_UNREACHABLE
    return socks5.GENERAL_FAILURE
