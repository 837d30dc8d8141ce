"""The HBONE server: mTLS listener, CONNECT handling, authorization hook, and the
default handler that relays a tunnel to the TCP address it names."""
from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from meshcore._core.events import RequestReceived
from meshcore.aio.connection import HboneConnection
from meshcore.aio.deadline import deadline
from meshcore.aio.memory import trimmer
from meshcore.aio.request import accept_request, serve
from meshcore.aio.splice import Splice
from meshcore.aio.tls import start_tls
from meshcore.errors import MeshcoreError, StreamClosedError
from meshcore.identity.tls import handshake_error, verify_client

log = logging.getLogger("meshcore.hbone")

HANDSHAKE_TIMEOUT = 10.0
MAX_PENDING_HANDSHAKES = 1024   # per listener; more connections wait in the kernel's backlog
MAX_PENDING_PER_SOURCE = 128    # per client address; more are closed at once
CONNECT_TIMEOUT = 10.0      # docs/hbone.md, Responses: upstream connect timeout


_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
# a whole name in one match: labels cannot contain the dots between them, so this
# never backtracks across labels
_HOST_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\Z")

# Parsed IP literals by their text. Each tunnel names its destination and comes from
# a peer address, and a proxy sees the same few again and again: parsing one with
# ipaddress costs a dozen Python calls. Bounded, so a peer naming ever new addresses
# only evicts; invalid text raises ValueError and is not kept.
cached_ip_address = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)


@functools.lru_cache(maxsize=4096)
def parse_authority(text: str) -> tuple[str, int]:
    """"10.0.0.7:8080" or "[fd00::7]:8080" (or "svc.ns.svc:80") -> (host, port).

    Raises ValueError saying what is wrong: a host must be an IP literal or a DNS name
    (RFC 1123: labels of 1-63 letters, digits and hyphens, 253 characters at most).
    Results are kept (bounded): a server sees the same authorities on tunnel after
    tunnel, and an authority refused is not kept."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"authority {text[:80]!r}: IPv6 must be written [addr]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"authority {text[:80]!r}: {host[:64]!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"authority {text[:80]!r} is not host:port")
        name = host[:-1] if host.endswith(".") else host
        if len(name) > 253 or not _HOST_NAME.match(name):
            raise ValueError(f"authority {text[:80]!r}{'...' if len(text) > 80 else ''}: host is "
                             f"neither an IP address nor a DNS name ({len(host)} characters)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"authority {text[:80]!r} has no valid port")
    return host, int(port)


@dataclass(slots=True, eq=False)          # one request is one object: hashed by identity
class TunnelRequest:
    """A CONNECT the server must answer: accept() with a protocol, or refuse()."""
    connection: HboneConnection
    stream_id: int
    method: str
    authority: str
    headers: list
    host: str = ""
    port: int = 0
    status: int = 0                               # what it was answered: 200, or the refusal's status
    extra: dict = field(default_factory=dict)
    server: "HboneServer | None" = None          # the server that received it

    @property
    def peer_identity(self):
        return self.connection.peer_identity

    @property
    def peer_address(self):
        return self.connection.transport.get_extra_info("peername")

    @property
    def local_address(self):
        return self.connection.transport.get_extra_info("sockname")

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def answered(self) -> bool:
        return self.status != 0

    def accept(self, protocol: asyncio.BaseProtocol, headers=()):
        self.status = 200
        return self.connection.accept_stream(self.stream_id, protocol, headers)

    def refuse(self, status: int) -> None:
        self.status = status
        self.connection.refuse_stream(self.stream_id, status)


Handler = Callable[[TunnelRequest], Awaitable[None]]


def _listens_on(listener: tuple, ip, port: int) -> bool:
    if port != listener[1]:
        return False
    bound = cached_ip_address(listener[0])
    return bound.is_unspecified or bound == ip


def _loops_back(request: TunnelRequest) -> bool:
    """Whether dialing the request's host:port would reach a listener of the server that
    received it (or of the proxy it belongs to): every tunnel through it would open
    another, each one deeper."""
    if request.server is None:
        return False
    try:
        ip = cached_ip_address(request.host)
    except ValueError:
        return False                       # a name: not resolved here, and not one of ours
    destination = getattr(request.connection, "destination", None)
    if destination is not None and request.port == destination[1] and ip == cached_ip_address(destination[0]):
        return True                        # the address the client dialed (before a REDIRECT, say)
    port = request.port
    for listener in request.server.own_listeners():
        if port == listener[1] and _listens_on(listener, ip, port):
            return True
    return False


def _refuse(request: TunnelRequest, status: int, why: str) -> None:
    request.extra["error"] = why
    log.info("tunnel %s from %s refused (%d): %s", request.stream_id, request.peer_identity, status, why)
    request.refuse(status)


async def relay_to_authority(request: TunnelRequest, connect_timeout: float = CONNECT_TIMEOUT, *,
                             local_addr: tuple | None = None) -> dict | None:
    """Dial the request's host and port; 200 and relay once connected, 503 if not, 400 if
    they are a listener of the server (a tunnel to it would loop). Where the tunnel may
    go is the caller's decision (a handler that routes sets request.host/port first);
    the default handler, HboneServer.relay, decides it as a node does.
    Returns the bytes relayed, {"a": from the tunnel, "b": from the upstream}, once the
    relay has ended (None if it never started).

    The splice owns the upstream socket however this ends: if the task is cancelled
    (stream reset, connection lost) during the dial or the relay, or the stream is gone
    by the time the dial completes, the upstream connection is aborted, never leaked."""
    if _loops_back(request):
        _refuse(request, 400, f"authority {request.authority} is a listener of this server: the tunnel "
                              "would loop back into it")
        return None
    splice = Splice()
    loop = asyncio.get_running_loop()
    try:
        try:
            async with deadline(connect_timeout):      # no task of its own, as wait_for makes one
                await loop.create_connection(splice.side_b, request.host, request.port, local_addr=local_addr)
        except (OSError, asyncio.TimeoutError) as exc:
            request.extra["error"] = f"upstream {request.authority} unreachable: {exc or type(exc).__name__}"
            log.info("tunnel %s from %s: %s", request.stream_id, request.peer_identity, request.extra["error"])
            request.refuse(503)
            return
        request.extra["splice"] = splice        # its byte counts, whatever ends the relay
        try:
            request.accept(splice.a)
        except StreamClosedError:
            log.info("tunnel %s from %s to %s ended before the upstream connected",
                     request.stream_id, request.peer_identity, request.authority)
            return
        return await splice.done
    finally:
        splice.abort()


async def _no_relay() -> None:
    return None


class HboneServer:
    """Accept HBONE tunnels: mTLS (client certificate of our trust domain required),
    then for each CONNECT: method and authority checked (400), `authorize(request)`
    consulted (401), and `handler(request)` run to accept or refuse it. Without a
    handler, `relay` relays each tunnel as a node does: to the address the connection
    arrived on only (400 otherwise), never to a listener of its own (400).

    Other requests go to `request_handler(exchange)` (a meshcore.aio.request
    ServerExchange) when there is one, and are refused with 400 when not; deciding
    whether a request is allowed is that handler's (`authorize` sees tunnels only)."""

    def __init__(self, context: ssl.SSLContext | Callable, trust_domain: str, *,
                 handler: Handler | None = None, authorize: Callable | None = None,
                 request_handler: Callable | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
                 max_pending_per_source: int = MAX_PENDING_PER_SOURCE,
                 destination_of: Callable[[socket.socket], tuple] | None = None, **connection_options):
        self._context_for = context if callable(context) else (lambda destination: context)
        # where the client meant to connect: the local address, or for a transparent
        # proxy the address before a REDIRECT (it chooses the certificate presented)
        self.destination_of = destination_of or (lambda sock: sock.getsockname()[:2])
        self.trust_domain = trust_domain
        self.handler = handler if handler is not None else self.relay
        self.authorize = authorize
        self.request_handler = request_handler
        # the listeners of the proxy this server belongs to (this server's own unless
        # told otherwise: Mesh.serve() counts all of its servers): no tunnel goes there
        self.own_listeners: Callable[[], list[tuple]] = self._own_listeners
        self.handshake_timeout = handshake_timeout
        # Each TLS handshake in progress holds tens of KiB in the TLS stack: past this
        # many, no more sockets are accepted until one finishes (the kernel queues them).
        self.max_pending_handshakes = max_pending_handshakes
        self._handshake_slots = asyncio.Semaphore(max_pending_handshakes)
        self.max_pending_per_source = max_pending_per_source
        self._pending_by_source: dict[str, int] = {}
        self.connection_options = connection_options
        self.connections: set[HboneConnection] = set()
        self._tasks: set[asyncio.Task] = set()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self.stats = {"accepted": 0, "refused": 0, "denied": 0, "handshake_failed": 0, "refused_per_source": 0}

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, backlog: int = 4096) -> "HboneServer":
        """Listen. Sockets are accepted here (at most `max_pending_handshakes` in their
        TLS handshake at once) and handed to start_tls() with the context for their local
        address: per-destination certificates, and handshake failures that are ours to
        log and count (on asyncio and uvloop)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()                    # the caller reports the error: the socket is not theirs
            raise
        self._listener = sock
        self._address = sock.getsockname()[:2]
        self._accepting = self._spawn(self._accept_loop(sock))
        return self

    def _own_listeners(self) -> list[tuple]:
        return [self._address] if self._listener is not None else []

    @property
    def address(self) -> tuple:
        # read on every tunnel (the loop guard): kept, not asked of the socket each time
        if self._listener is None:
            raise RuntimeError("the server is not listening")
        return self._address

    async def close(self, drain_deadline: float = 5.0) -> None:
        """Stop listening, GOAWAY every connection, wait up to the deadline."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await asyncio.gather(*(c.drain(drain_deadline) for c in list(self.connections)),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._handshake_slots.acquire()
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:          # EMFILE and friends: do not spin
                self._handshake_slots.release()
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            except BaseException:
                self._handshake_slots.release()
                raise
            source = peer[0]
            if self._pending_by_source.get(source, 0) >= self.max_pending_per_source:
                # one address may not hold every handshake slot (a stalled-handshake
                # flood from one client would delay everyone else until the timeout)
                self._handshake_slots.release()
                self.stats["refused_per_source"] += 1
                if self.stats["refused_per_source"] % 1000 == 1:
                    log.warning("%s has %d TLS handshakes pending: further connections from it are closed",
                                source, self.max_pending_per_source)
                sock.close()
                continue
            self._pending_by_source[source] = self._pending_by_source.get(source, 0) + 1
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._handshake(sock)).add_done_callback(lambda _, s=source: self._handshake_done(s))

    def _handshake_done(self, source: str) -> None:
        self._handshake_slots.release()
        left = self._pending_by_source.pop(source) - 1
        if left:
            self._pending_by_source[source] = left

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def relay(self, request: TunnelRequest) -> Awaitable[dict | None]:
        """The default handler: relay the tunnel to its authority if that is the address
        the connection arrived on (`destination_of`: the local address, or the original
        destination of a REDIRECT), as ztunnel and the node proxy require; 400 if it
        names any other host, which would make this server an open relay for every peer
        of the trust domain. Awaitable like any handler; it hands back relay_to_authority()
        itself rather than awaiting it, which spares each tunnel a coroutine."""
        arrival = request.connection.destination
        try:
            same = cached_ip_address(request.host) == cached_ip_address(arrival[0])
        except ValueError:
            same = False
        if not same:
            _refuse(request, 400, f"authority {request.authority} is not the address the connection was made "
                                  f"to ({arrival[0]})")
            return _no_relay()
        return relay_to_authority(request)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _handshake(self, sock: socket.socket) -> None:
        peer = sock.getpeername()
        conn = HboneConnection(client=False, on_request=self._on_request,
                               verify=lambda obj: verify_client(obj, self.trust_domain, peer),
                               **self.connection_options)
        try:
            sock.setblocking(False)
            conn.destination = self.destination_of(sock)
            ctx = self._context_for(conn.destination)
            if inspect.isawaitable(ctx):           # a certificate source that may ask a remote CA
                ctx = await ctx
            await start_tls(asyncio.get_running_loop(), sock, ctx, lambda: conn, server_side=True,
                            timeout=self.handshake_timeout)
        except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError, MeshcoreError) as exc:
            self.stats["handshake_failed"] += 1
            if isinstance(exc, MeshcoreError):     # no certificate for that destination
                log.info("TLS connection from %s refused: %s", peer, exc)
            else:
                handshake_error(exc, peer)         # logged and counted by reason
            sock.close()
            trimmer.connection_ended(asyncio.get_running_loop())
            return
        if conn.error is not None:                 # identity refused by verify_client
            self.stats["handshake_failed"] += 1
            trimmer.connection_ended(asyncio.get_running_loop())
            return
        self.connections.add(conn)
        if conn.closed.done():
            self._connection_ended(conn)
        else:                                      # a hook, not a future callback: 0.2 KiB less each
            conn.on_closed = self._connection_ended

    def _connection_ended(self, conn: HboneConnection) -> None:
        self.connections.discard(conn)
        trimmer.connection_ended(asyncio.get_running_loop())

    def _on_request(self, conn: HboneConnection, event) -> None:
        if self.request_handler is not None and type(event) is RequestReceived:
            exchange = accept_request(conn, event)
            exchange.task = self._spawn(serve(exchange, self.request_handler))
            conn.own_request(event.stream_id, exchange.task)
            return
        request = TunnelRequest(conn, event.stream_id, event.method, event.authority, event.headers, server=self)
        if event.method != "CONNECT":
            self.stats["refused"] += 1
            request.refuse(400)
            return
        try:
            request.host, request.port = parse_authority(event.authority)
        except ValueError as exc:
            log.info("tunnel %s refused: %s", event.stream_id, exc)
            self.stats["refused"] += 1
            request.refuse(400)
            return
        # the connection owns the request's task: a reset, the connection's loss or
        # cancel_request() ends it; the server keeps only its accept loop and handshakes
        conn.own_request(event.stream_id, asyncio.get_running_loop().create_task(self._serve(request)))

    async def _serve(self, request: TunnelRequest) -> None:
        try:
            if self.authorize is not None:
                verdict = self.authorize(request)
                if asyncio.iscoroutine(verdict):
                    verdict = await verdict
                allowed = verdict if isinstance(verdict, bool) else bool(getattr(verdict, "allowed", verdict))
                if not allowed:
                    self.stats["denied"] += 1
                    log.info("tunnel to %s from %s denied: %s", request.authority, request.peer_identity,
                             getattr(verdict, "reason", "authorization hook said no"))
                    request.refuse(401)
                    return
            await self.handler(request)
            if not request.answered:
                request.refuse(503)
            # tunnels answered 200; a handler's refusals (401 by policy, 503 unreachable) are refusals
            self.stats["accepted" if request.status == 200 else "refused"] += 1
        except asyncio.CancelledError:
            if not request.answered:
                request.refuse(503)
            raise
        except Exception:
            log.exception("tunnel handler failed for %s", request.authority)
            if not request.answered:
                request.refuse(503)
