"""The node's inbound side: HBONE tunnels (15008) and plaintext from PERMISSIVE peers
(15006) to the workloads on this node.

For each CONNECT, in this order (docs/hbone.md, Responses): the authority must name the address the
client connected to (400); a local workload must live there (503); the destination's
policies must allow the peer's identity (401); then the workload is dialed (503 if it
does not answer) and the tunnel relayed. The certificate presented is the destination
workload's, chosen by the address the client connected to.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from meshcore.aio.outbound import OutboundListener
from meshcore.aio.server import HboneServer, TunnelRequest, relay_to_authority
from meshcore.errors import IdentityError
from meshcore.node import logs
from meshcore.node.netaddr import original_destination
from meshcore.node.record import ConnectionRecord

log = logging.getLogger("meshcore.inbound")


class PolicyRefusal(ConnectionRefusedError):
    pass


class Inbound:
    def __init__(self, proxy):
        self.proxy = proxy
        self.servers: dict[tuple[str, int], HboneServer] = {}
        self.plaintext: OutboundListener | None = None
        # request task -> (destination workload, principal, source ip, destination ip, port)
        self.active: dict[asyncio.Task, tuple] = {}

    # -- listeners ---------------------------------------------------------------
    def wanted_addresses(self, state) -> set[tuple[str, int]]:
        if self.proxy.listen["inbound"] is None:
            return set()
        host, port = self.proxy.listen["inbound"]
        if host != "workloads":
            return {(host, port)}
        return {(str(ip), port) for w in state.local_workloads(self.proxy.node_name) if w.meshed for ip in w.ips}

    async def sync(self, state) -> set:
        """One HBONE listener per wanted address: new workloads get one, removed ones lose
        it. Returns the wanted addresses it could not listen on."""
        wanted = self.wanted_addresses(state)
        for address in set(self.servers) - wanted:
            await self.servers.pop(address).close(self.proxy.drain_deadline)
        for address in sorted(wanted - set(self.servers)):
            server = HboneServer(self.context_for, self.proxy.trust_domain, handler=self.handle,
                                 destination_of=original_destination)
            try:
                await server.start(*address)
            except OSError as exc:
                log.error("cannot listen for HBONE on %s:%s: %s", address[0], address[1], exc.strerror)
                continue
            self.servers[address] = server
        return wanted - set(self.servers)

    async def start_plaintext(self, address) -> None:
        self.plaintext = await OutboundListener(self.dial_plaintext, self.proxy.finished).start(*address)

    async def close(self, deadline: float) -> None:
        await asyncio.gather(*(s.close(deadline) for s in self.servers.values()), return_exceptions=True)
        self.servers.clear()
        if self.plaintext is not None:
            await self.plaintext.close()

    @property
    def connections(self) -> int:
        return sum(len(s.connections) for s in self.servers.values())

    # -- HBONE ---------------------------------------------------------------------
    def context_for(self, destination):
        workload = self._local_workload(destination[0])
        if workload is None:
            raise IdentityError(f"no workload of node {self.proxy.node_name!r} at {destination[0]}",
                                "unknown-destination")
        return self.proxy.certs.server_context(workload.identity)

    def _local_workload(self, ip):
        state = self.proxy.store.view
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        w = next((w for w in (state.workload_at(n, address) for n in self.proxy.networks) if w), None)
        return w if w is not None and w.node == self.proxy.node_name else None

    async def handle(self, request: TunnelRequest) -> None:
        proxy = self.proxy
        peer_ip, peer_port = request.peer_address[:2]
        record = ConnectionRecord("inbound", src_addr=f"{peer_ip}:{peer_port}", dst_addr=request.authority,
                                  hbone_addr=request.authority, src_identity=request.peer_identity.uri, mtls=True)
        state = proxy.store.view
        source = state.workload_at(proxy.network, ipaddress.ip_address(peer_ip))
        # the address names the source workload only if the node before us kept it (the
        # identity is what the peer proved; an address it could not keep names someone else)
        record.src_workload = source if source is not None and source.identity == request.peer_identity else None
        record.service = _forwarded_service(state, request.header(b"forwarded"))
        request.headers = ()                   # read; a long-lived tunnel need not keep them
        destination_ip = request.connection.destination[0]
        if request.host != destination_ip:
            return self._refuse(request, record, 400, f"authority {request.authority} is not the address "
                                                     f"the connection was made to ({destination_ip})")
        workload = self._local_workload(request.host)
        record.dst_workload = workload
        if workload is None:
            return self._refuse(request, record, 503, f"no workload of this node at {request.host}")
        record.dst_identity = workload.identity.uri
        decision = state.policy_set(workload).evaluate(request.peer_identity.principal, peer_ip, request.host,
                                                       request.port)
        if not decision:
            return self._refuse(request, record, 401, f"policy rejection: {decision.reason}", flag="DENY")
        proxy.metrics.opened_connection(record)
        task = asyncio.current_task()
        self.active[task] = (workload, request.peer_identity.principal, peer_ip, request.host, request.port)
        cancelled = False
        try:
            await relay_to_authority(request, proxy.connect_timeout, local_addr=proxy.binder.local_addr(peer_ip))
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self.active.pop(task, None)
            splice = request.extra.get("splice")
            if splice is not None and splice.a.transport is not None:
                record.finish_relay(splice)
                if cancelled:
                    record.error = "ended by the proxy (policy changed, or draining)"
            else:
                record.finish(request.extra.get("error") or "tunnel ended before the workload answered",
                              flag="CONNECT")
                proxy.metrics.failed_connection(record)
            proxy.metrics.closed_connection(record)
            logs.access(record)

    def _refuse(self, request: TunnelRequest, record: ConnectionRecord, status: int, why: str,
                flag: str = "CONNECT") -> None:
        request.refuse(status)
        record.finish(f"{status}: {why}", flag)
        self.proxy.metrics.failed_connection(record)
        logs.access(record)

    def revoke(self, state) -> int:
        """After a configuration change: end the tunnels the new policies deny."""
        ended = 0
        for task, (workload, principal, src, dst, port) in list(self.active.items()):
            current = state.by_uid.get(workload.uid)
            if current is None or not state.policy_set(current).evaluate(principal, src, dst, port):
                task.cancel()
                ended += 1
        return ended

    # -- plaintext (PERMISSIVE) ----------------------------------------------------
    async def dial_plaintext(self, protocol_factory, client: asyncio.Transport) -> ConnectionRecord:
        proxy = self.proxy
        sock: socket.socket = client.get_extra_info("socket")
        dst_ip, dst_port = original_destination(sock)
        peer_ip, peer_port = client.get_extra_info("peername")[:2]
        record = ConnectionRecord("inbound", src_addr=f"{peer_ip}:{peer_port}", dst_addr=f"{dst_ip}:{dst_port}")
        view = proxy.store.view
        record.src_workload = view.workload_at(proxy.network, ipaddress.ip_address(peer_ip))
        workload = record.dst_workload = self._local_workload(dst_ip)
        try:
            if workload is None:
                raise PolicyRefusal(f"no workload of this node at {dst_ip}")
            if dst_port in proxy.listen_ports:
                raise PolicyRefusal(f"{dst_ip}:{dst_port} is one of the proxy's own ports (loop guard)")
            mode = view.mtls_mode(workload, dst_port)
            if mode == "STRICT":
                raise PolicyRefusal(f"PeerAuthentication is STRICT for {workload.namespace}/{workload.name} "
                                    f"port {dst_port}: plaintext refused")
            decision = view.policy_set(workload).evaluate(None, peer_ip, dst_ip, dst_port)
            if not decision:
                raise PolicyRefusal(f"policy rejection: {decision.reason}")
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                protocol_factory, dst_ip, dst_port, local_addr=proxy.binder.local_addr(peer_ip)),
                proxy.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            flag = "DENY" if isinstance(exc, PolicyRefusal) else "CONNECT"
            record.finish(str(exc) or type(exc).__name__, flag)
            proxy.metrics.failed_connection(record)
            logs.access(record)
            raise
        proxy.metrics.opened_connection(record)
        return record


def _forwarded_service(state, forwarded: bytes | None):
    """The service a tunnel was addressed to, from `forwarded: for=...;host=<hostname>`
    (docs/hbone.md, The CONNECT request): telemetry only, never trusted for a decision."""
    if not forwarded:
        return None
    for part in forwarded.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "host":
            return state.service_by_hostname(value.strip('"'))
    return None
