"""The node's inbound side: HBONE tunnels (15008) and plaintext from PERMISSIVE peers
(15006) to the workloads on this node.

For each CONNECT, in this order (docs/hbone.md, Responses): the authority must name the address the
client connected to (400); a local workload must live there (503); the destination's
policies must allow the peer's identity (401); then the workload is dialed (503 if it
does not answer) and the tunnel relayed. The certificate presented is the destination
workload's, chosen by the address the client connected to.

A connection to a workload behind a waypoint that does not come from that waypoint
(its identity and address, as ztunnel checks) went around it. ztunnel lets it in,
subject to the destination's own policies; so does meshcore, and the access log says
which waypoint was bypassed (`waypoint.bypassed`). Refusing it is the policy's job: an
ALLOW policy on the destination naming the waypoint's service account.

The component follows the mesh store: an HBONE listener per local workload address
appears and goes with the workloads, and a change that makes the policies deny an open
tunnel or plaintext connection ends it. Every decision reads one view of the store,
taken when the connection arrived.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from meshcore.aio.deadline import deadline
from meshcore.aio.relay import RelayListener
from meshcore.aio.server import HboneServer, TunnelRequest, cached_ip_address, relay_to_authority
from meshcore.aio.splice import Splice
from meshcore.errors import IdentityError
from meshcore.node.context import ProxyContext, listener_error
from meshcore.node.netaddr import original_destination
from meshcore.node.record import ConnectionRecord
from meshcore.state.changes import Kind
from meshcore.state.model import GatewayAddress, MtlsMode, Service, Workload
from meshcore.state.store import StateChange
from meshcore.state.view import MeshView

log = logging.getLogger("meshcore.inbound")


BIND_RETRY = 2.0            # seconds between tries of a local workload address that could not be bound


class PolicyRefusal(ConnectionRefusedError):
    pass


class Inbound:
    """HBONE (`hbone`: "workloads" for one listener per local workload address, a fixed
    (host, port), or None) and plaintext (`plaintext`: (host, port) or None) inbound."""

    def __init__(self, ctx: ProxyContext, *, hbone: tuple | None, plaintext: tuple | None):
        self.ctx = ctx
        self.hbone_address = hbone
        self.plaintext_address = plaintext
        self.servers: dict[tuple[str, int], HboneServer] = {}
        self.plaintext: RelayListener | None = None
        self.unbound: set[tuple[str, int]] = set()      # wanted HBONE addresses it could not listen on
        # what each open tunnel and plaintext connection was allowed as, to check again when
        # policies change: (destination workload, principal, source ip, destination ip, port);
        # the connection owns a tunnel's task, and is asked to end it
        self.active: dict[TunnelRequest, tuple] = {}
        self.plaintext_active: dict[Splice, tuple] = {}
        self._following = True
        self._unsubscribe = None
        self._retry: asyncio.Task | None = None            # binding what is in `unbound` again
        self._closing: set[asyncio.Task] = set()           # listeners of removed workloads draining

    # -- life -------------------------------------------------------------------------
    async def start(self) -> "Inbound":
        """Open the plaintext listener (ListenerError if it cannot) and the HBONE listeners
        for the view in force, then follow the store."""
        if self.plaintext_address is not None:
            try:
                self.plaintext = await RelayListener(self.dial_plaintext, self._plaintext_ended).start(
                    *self.plaintext_address)
            except OSError as exc:
                raise listener_error("inbound-plaintext", self.plaintext_address, exc) from None
        self._unsubscribe = self.ctx.store.subscribe(
            self._on_change, (Kind.WORKLOAD, Kind.AUTHORIZATION_POLICY, Kind.PEER_AUTHENTICATION))
        await self.sync(self.ctx.store.view)
        return self

    async def drain(self, deadline: float) -> None:
        """Stop accepting and following the store; GOAWAY every HBONE connection and let
        tunnels finish until the deadline; plaintext connections get the same time."""
        self._stop_following()
        if self.plaintext is not None:
            self.plaintext.stop_accepting()
        closing = [s.close(deadline) for s in self.servers.values()]
        self.servers.clear()
        await asyncio.gather(*closing, *self._closing, self._plaintext_drained(deadline), return_exceptions=True)

    def _stop_following(self) -> None:
        self._following = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    async def _plaintext_drained(self, deadline: float) -> None:
        if self.plaintext is not None:
            await self.plaintext.wait_closed(deadline)

    async def close(self) -> None:
        await self.drain(0)
        if self.plaintext is not None:
            await self.plaintext.close()

    async def _on_change(self, change: StateChange) -> None:
        # revocation first: closing listeners of removed workloads waits for their tunnels
        if self._may_revoke(change):
            ended = self.revoke(change.new)
            if ended:
                log.info("%d tunnels no longer allowed were closed", ended)
        if change.keys(Kind.WORKLOAD):
            await self.sync(change.new)

    def _may_revoke(self, change: StateChange) -> bool:
        """Policies, PeerAuthentication or a workload of this node changed: only those
        decide whether a connection to this node's workloads stays allowed."""
        if change.keys(Kind.AUTHORIZATION_POLICY) or change.keys(Kind.PEER_AUTHENTICATION):
            return True
        serves = self.ctx.settings.serves
        return any(w is not None and serves(w)
                   for uid in change.keys(Kind.WORKLOAD) for w in (change.old.by_uid.get(uid),
                                                                  change.new.by_uid.get(uid)))

    # -- listeners ---------------------------------------------------------------
    def wanted_addresses(self, state: MeshView) -> set[tuple[str, int]]:
        if self.hbone_address is None:
            return set()
        host, port = self.hbone_address
        if host != "workloads":
            return {(host, port)}
        return {(str(ip), port) for w in state.local_workloads(self.ctx.settings.node_name) if w.meshed
                for ip in w.ips}

    async def sync(self, state: MeshView) -> set:
        """One HBONE listener per wanted address: new workloads get one, removed ones lose
        it (their tunnels drain in the background, owned here until drain() or close()).
        Returns (and keeps in `unbound`) the wanted addresses it could not listen on; they
        are tried again every few seconds."""
        if not self._following:
            return set()
        wanted = self.wanted_addresses(state)
        settings = self.ctx.settings
        for address in set(self.servers) - wanted:
            task = asyncio.get_running_loop().create_task(self.servers.pop(address).close(settings.drain_deadline))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        for address in sorted(wanted - set(self.servers)):
            server = HboneServer(self.context_for, settings.trust_domain, handler=self.handle,
                                 destination_of=original_destination)
            try:
                await server.start(*address)
            except OSError as exc:
                if address not in self.unbound:
                    log.error("%s", listener_error("inbound", address, exc))
                continue
            self.servers[address] = server
        self.unbound = wanted - set(self.servers)
        if self.unbound and self._retry is None:
            self._retry = asyncio.get_running_loop().create_task(self._bind_later())
        return self.unbound

    async def _bind_later(self) -> None:
        # an address not on this host yet (a pod's IP is added after the pod is known)
        try:
            while self.unbound and self._following:
                await asyncio.sleep(BIND_RETRY)
                await self.sync(self.ctx.store.view)
        finally:
            self._retry = None

    @property
    def connections(self) -> int:
        return sum(len(s.connections) for s in self.servers.values())

    # -- HBONE ---------------------------------------------------------------------
    async def context_for(self, destination):
        workload = self._local_workload(self.ctx.store.view, destination[0])
        if workload is None:
            raise IdentityError(f"no workload of node {self.ctx.settings.node_name!r} at {destination[0]}",
                                "unknown-destination")
        return await self.ctx.certs.server_context_async(workload.identity)

    def _local_workload(self, state: MeshView, ip):
        try:
            address = cached_ip_address(ip)
        except ValueError:
            return None
        settings = self.ctx.settings
        w = next((w for w in (state.workload_at(n, address) for n in settings.networks) if w), None)
        return w if w is not None and settings.serves(w) else None

    async def handle(self, request: TunnelRequest) -> None:
        ctx = self.ctx
        peer_ip, peer_port = request.peer_address[:2]
        peer_identity = request.peer_identity
        record = ConnectionRecord("inbound", src_addr=f"{peer_ip}:{peer_port}", dst_addr=request.authority,
                                  hbone_addr=request.authority, src_identity=peer_identity.uri, mtls=True)
        state = ctx.store.view
        source = state.workload_at(ctx.settings.network, cached_ip_address(peer_ip))
        # the address names the source workload only if the node before us kept it (the
        # identity is what the peer proved; an address it could not keep names someone else)
        record.src_workload = source if source is not None and source.identity == peer_identity else None
        record.service = _forwarded_service(state, request.header(b"forwarded"))
        request.headers = ()                   # read; a long-lived tunnel need not keep them
        destination_ip = request.connection.destination[0]
        if request.host != destination_ip:
            return self._refuse(request, record, 400, f"authority {request.authority} is not the address "
                                                     f"the connection was made to ({destination_ip})")
        workload = self._local_workload(state, request.host)
        record.dst_workload = workload
        if workload is None:
            return self._refuse(request, record, 503, f"no workload of this node at {request.host}")
        record.dst_identity = workload.identity.uri
        decision = state.policy_set(workload).evaluate(peer_identity.principal, peer_ip, request.host,
                                                       request.port)
        record.bypassed = bypassed_waypoint(state, workload, record.service, peer_identity, peer_ip)
        if not decision:
            return self._refuse(request, record, 401, f"policy rejection: {decision.reason}", flag="DENY")
        ctx.telemetry.opened(record)
        self.active[request] = (workload, peer_identity.principal, peer_ip, request.host, request.port)
        cancelled = False
        try:
            await relay_to_authority(request, ctx.settings.connect_timeout,
                                     local_addr=ctx.binder.local_addr(peer_ip))
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self.active.pop(request, None)
            splice = request.extra.get("splice")
            if splice is not None and splice.a.transport is not None:
                record.finish_relay(splice)
                if cancelled:
                    record.error = "ended by the proxy (policy changed, or draining)"
            else:
                record.finish(request.extra.get("error") or "tunnel ended before the workload answered",
                              flag="CONNECT")
                ctx.telemetry.metrics.failed_connection(record)
            ctx.telemetry.closed(record)

    def _refuse(self, request: TunnelRequest, record: ConnectionRecord, status: int, why: str,
                flag: str = "CONNECT") -> None:
        request.refuse(status)
        self.ctx.telemetry.refused(record, f"{status}: {why}", flag)

    def revoke(self, state: MeshView) -> int:
        """After a configuration change: end the tunnels and plaintext connections the
        policies in force now deny (or whose workload is gone, or moved)."""
        ended, settings = 0, self.ctx.settings
        for request, facts in list(self.active.items()):
            if not _still_allowed(state, settings, *facts) and request.connection.cancel_request(request.stream_id):
                ended += 1
        for splice, facts in list(self.plaintext_active.items()):
            if not _still_allowed(state, settings, *facts):
                self.plaintext_active.pop(splice, None)
                splice.abort()
                ended += 1
        return ended

    # -- plaintext (PERMISSIVE) ----------------------------------------------------
    async def dial_plaintext(self, protocol_factory, client: asyncio.Transport) -> ConnectionRecord:
        ctx = self.ctx
        sock: socket.socket = client.get_extra_info("socket")
        dst_ip, dst_port = original_destination(sock)
        peer_ip, peer_port = client.get_extra_info("peername")[:2]
        record = ConnectionRecord("inbound", src_addr=f"{peer_ip}:{peer_port}", dst_addr=f"{dst_ip}:{dst_port}")
        view = ctx.store.view
        record.src_workload = view.workload_at(ctx.settings.network, cached_ip_address(peer_ip))
        workload = record.dst_workload = self._local_workload(view, dst_ip)
        try:
            if workload is None:
                raise PolicyRefusal(f"no workload of this node at {dst_ip}")
            if dst_port in ctx.settings.proxy_ports:
                raise PolicyRefusal(f"{dst_ip}:{dst_port} is one of the proxy's own ports (loop guard)")
            mode = view.mtls_mode(workload, dst_port)
            if mode is MtlsMode.STRICT:
                raise PolicyRefusal(f"PeerAuthentication is STRICT for {workload.namespace}/{workload.name} "
                                    f"port {dst_port}: plaintext refused")
            # a waypoint always tunnels: plaintext to a workload behind one went around it
            record.bypassed = bypassed_waypoint(view, workload, None, None, peer_ip)
            decision = view.policy_set(workload).evaluate(None, peer_ip, dst_ip, dst_port)
            if not decision:
                raise PolicyRefusal(f"policy rejection: {decision.reason}")
            async with deadline(ctx.settings.connect_timeout):
                await asyncio.get_running_loop().create_connection(
                    protocol_factory, dst_ip, dst_port, local_addr=ctx.binder.local_addr(peer_ip))
            facts = (workload, None, peer_ip, dst_ip, dst_port, mode)
            now = ctx.store.view
            if now is not view and not _still_allowed(now, ctx.settings, *facts):
                # the revocation pass of a change that came while we connected did not see us
                raise PolicyRefusal("no longer allowed by the configuration applied while connecting")
        except (OSError, asyncio.TimeoutError) as exc:
            flag = "DENY" if isinstance(exc, PolicyRefusal) else "CONNECT"
            ctx.telemetry.refused(record, str(exc) or type(exc).__name__, flag)
            raise
        ctx.telemetry.opened(record)
        self.plaintext_active[client.get_protocol().splice] = facts
        return record

    def _plaintext_ended(self, record: ConnectionRecord, splice: Splice) -> None:
        self.plaintext_active.pop(splice, None)
        self.ctx.telemetry.relay_ended(record, splice)


def _still_allowed(state: MeshView, settings, workload, principal, src, dst, port, mode=None) -> bool:
    """Whether a connection allowed under an earlier view is allowed under `state`: its
    destination is still this node's workload at that address, and its policies (and,
    for plaintext, its PeerAuthentication) still let it in."""
    current = state.by_uid.get(workload.uid)
    if current is None or not settings.serves(current) or ipaddress.ip_address(dst) not in current.ips:
        return False
    if mode is not None and state.mtls_mode(current, port) is MtlsMode.STRICT:
        return False                           # plaintext, now that mTLS is required
    return bool(state.policy_set(current).evaluate(principal, src, dst, port))


def _forwarded_service(state: MeshView, forwarded: bytes | None):
    """The service a tunnel was addressed to, from `forwarded: for=...;host=<hostname>`
    (docs/hbone.md, The CONNECT request): telemetry only, never trusted for a decision."""
    if not forwarded:
        return None
    for part in forwarded.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "host":
            return state.service_by_hostname(value.strip('"'))
    return None


def waypoint_workloads(state: MeshView, gateway: GatewayAddress) -> list[Workload]:
    """The workloads that make up a waypoint: the one at its address, or its service's endpoints."""
    if gateway.address is not None:
        network, ip = gateway.address
        w = state.workload_at(network, ip)
        if w is not None:
            return [w]
        svc = state.service_at(network, ip)          # a waypoint named by its service's VIP
        return list(state.endpoints.get(svc.key, ())) if svc is not None else []
    svc = state.by_service_key.get(f"{gateway.hostname[0]}/{gateway.hostname[1]}")
    return list(state.endpoints.get(svc.key, ())) if svc is not None else []


def bypassed_waypoint(state: MeshView, workload: Workload, service: Service | None, identity, peer_ip) -> str:
    """The identity of the waypoint `workload` is behind, if the peer is not that waypoint
    (ztunnel's check_from_waypoint: the peer's identity and address both belong to one
    of its workloads); "" when there is none to bypass. A service's waypoint counts only
    when the tunnel says it was addressed to that service: traffic to a workload's own
    address is not meant to pass a service's waypoint."""
    gateways = [g for g in (workload.waypoint, service.waypoint if service is not None else None) if g is not None]
    if not gateways:
        return ""
    ip = cached_ip_address(peer_ip)
    members = [w for g in gateways for w in waypoint_workloads(state, g)]
    if any(w.identity == identity and ip in w.ips for w in members):
        return ""
    # unknown waypoint workloads: name the address the sender should have gone through
    return ",".join(dict.fromkeys(w.identity.uri for w in members)) or ",".join(map(str, gateways))
