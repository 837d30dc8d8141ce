"""Where one request through the waypoint goes, and how its attempts go: the routes
bound to its service decide (Gateway API routes: meshcore.traffic.decide; else
VirtualServices: meshcore.traffic.decide_istio), then an endpoint of the chosen backend
is picked: by the backend's DestinationRule (waypoint/endpoints.py) or else by the
node's routing with the waypoint as the source.

    destination(...) ─► LocalReply     404 no route, 500/503 nowhere to send, a redirect,
                                       a direct response, an injected abort, 503 no
                                       healthy endpoint, 503 UO over the connection pool
                     ─► Destination    the endpoint (Route), the request-target and host to
                                       send, header edits both ways, the timeout, the retry
                                       policy, mirrors, and the protocol the backend's
                                       port declares
    retry_destination(...)             how an attempt went (for the endpoint picker), and
                                       the next attempt's destination if the policy retries
                                       and the destination's maxRetries leaves room
    Deadlines                          the route's timeout over every attempt, the per-try
                                       timeout over each
    InFlight                           what a request holds until it ends
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field, replace

from meshcore.node.routing import HBONE, Route
from meshcore.state.model import Service
from meshcore.traffic.istio_model import RequestAttributes
from meshcore.traffic.decide import CORS_PREFLIGHT, NO_EDITS, HeaderEdits, LocalReply, RequestView, decide, merge_edits
from meshcore.traffic.decide_istio import VirtualServiceRandoms, decide_virtual_service
from meshcore.traffic.destinationrule import cluster_policy
from meshcore.traffic.retry import DEFAULT_RETRY_POLICY, RetryPolicy, backoff_delay, should_retry
from meshcore.waypoint.endpoints import EndpointPicker, Overflow, RetryHold, Ticket
from meshcore.waypoint.ratelimits import NO_LIMIT, Limited, RateHeaders, RequestLimits
from meshcore.waypoint.upstreams import DEFAULT_LIMITS, ConnectionLimits, connection_limits
from meshcore.waypoint.tunnels import upstream_http

NO_HEALTHY_UPSTREAM = b"no healthy upstream"
ATTEMPT_COUNT = "x-envoy-attempt-count"    # on every upstream request, as Istio has Envoy send it
# RFC 9110 9.2.2: what a client may send again on its own after a connection failed
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
MIRROR_DRAWS = 4                  # mirrors of one rule drawn for independently (any further one: always)
HOST_SELECTION_ATTEMPTS = 5       # picks a retry makes for an endpoint other than the one that failed (Envoy's)


@dataclass(slots=True)
class RetryState:
    """One request's retries, shared by every attempt's Destination: the retry under way
    (its place in the destination's count of retries outstanding), and why a retry the
    policy called for was not made: the count was at its limit (Envoy's UO), or the
    request's retries ran out (Envoy's URX)."""
    held: RetryHold | None = None
    overflowed: bool = False
    exhausted: bool = False


@dataclass(frozen=True, slots=True)
class Balanced:
    """A backend a DestinationRule speaks for: what the endpoint picker needs to choose
    again (a retry) and to hear how each attempt went."""
    picker: EndpointPicker
    service: Service
    port: int
    subset: str
    rule: object                       # traffic.istio_model.DestinationRule, or None (a subset needs one)
    request: RequestAttributes
    source_ip: str
    tickets: list = field(default_factory=list, compare=False)   # every attempt's, to give back at the end
    _merged: object = field(default=None, init=False, compare=False, repr=False)

    @property
    def key(self) -> tuple:
        return self.service.key, self.subset, self.port

    @property
    def policy(self):
        """The rule's merged policy for this destination (traffic.istio_model.ClusterPolicy),
        merged once per request however often its connection settings are asked."""
        merged = self._merged
        if merged is None:
            merged = cluster_policy(self.rule, self.subset, self.port)
            object.__setattr__(self, "_merged", merged)
        return merged

    def choose(self, state, me, avoid: str | None = None) -> Ticket:
        ticket = self.picker.choose(state, me, self.service, self.port, self.subset, self.rule,
                                    request=self.request, source_ip=self.source_ip, avoid=avoid)
        self.tickets.append(ticket)
        return ticket


@dataclass(frozen=True, slots=True)
class Destination:
    chosen: Route
    target: str                        # origin-form request-target to send
    authority: str                     # Host / :authority to send
    app_protocol: str | None           # what the backend's port declares
    route: str = ""                    # the route rule that decided (namespace.name.rule), "" for none
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    timeout: float | None = None
    retry: RetryPolicy | None = DEFAULT_RETRY_POLICY
    address: tuple[str, int] = ("", 0)  # the backend's address:port the endpoint was chosen for
    balanced: Balanced | None = None    # set when a DestinationRule chooses the endpoint
    ticket: Ticket | None = None        # the attempt's place in the picker's count (with `balanced`)
    delay: float = 0.0                  # an injected fault's delay before the request goes on
    mirrors: tuple[tuple[str, int], ...] = ()   # (service key, port) that get a copy of the request
    service: Service | None = None      # the backend service: what the request's metrics name
    retrying: RetryState = field(default_factory=RetryState, compare=False)   # the request's, every attempt's

    @property
    def connection_limits(self) -> ConnectionLimits:
        """How the upstream connections of this destination are opened and how long they
        live (its DestinationRule's connectionPool). The HTTP/2 settings apply where the
        port declares HTTP/2 and useClientProtocol does not replace that (istiod writes
        them into the cluster's explicit HTTP/2 options only)."""
        policy = self._policy()
        if policy is None:
            return DEFAULT_LIMITS
        http = _pool_http(policy)
        return connection_limits(policy, http2=self.app_protocol in ("http2", "grpc") and not (
            http is not None and http.use_client_protocol))

    def upstream_http(self, downstream: str) -> str:
        """The HTTP version ("1.1" or "2") the request goes to the endpoint in, for a
        client that spoke `downstream` (tunnels.upstream_http, with the destination's
        DestinationRule's h2UpgradePolicy and useClientProtocol)."""
        policy = self._policy()
        return upstream_http(self.app_protocol, downstream, _pool_http(policy) if policy is not None else None)

    def _policy(self):
        """The DestinationRule's merged policy for this destination (None: no rule)."""
        b = self.balanced
        return b.policy if b is not None and b.rule is not None else None

    def next_endpoint(self, tunnels, state, me) -> "Destination | None":
        """The same request to another endpoint of the backend, for a retry; None when
        the backend has no endpoint to offer."""
        if self.balanced is not None:
            previous = self.chosen.workload.uid if self.chosen.workload is not None else None
            try:
                ticket = self.balanced.choose(state, me, avoid=previous)
            except Overflow:
                return None
            if ticket.route.kind is not HBONE:
                return None
            return replace(self, chosen=ticket.route, ticket=ticket)
        previous = self.chosen.workload
        for _ in range(HOST_SELECTION_ATTEMPTS):
            # the node's round robin is shared by every request: other requests' picks in
            # between may bring it back to the endpoint that just failed
            chosen = tunnels.upstream(state, me, *self.address)
            if chosen.kind is not HBONE:
                return None
            if previous is None or chosen.workload is None or chosen.workload.uid != previous.uid:
                break
        return replace(self, chosen=chosen)

    def attempted(self, *, status: int | None = None, failure: str | None = None) -> None:
        """How the attempt to `chosen` went (its answer's status, or a failure without
        one): what outlier detection counts, once per attempt. It stays in flight until
        given up (a retry) or its request ends (release())."""
        if self.ticket is not None:
            # outlier detection counts an attempt cut short by its own time as a timeout
            self.ticket.record(status=status, failure="timeout" if failure == "per-try-timeout" else failure)

    def given_up(self) -> None:
        """The attempt to `chosen` was given up (another goes instead): out of the count."""
        if self.ticket is not None:
            self.ticket.finish()

    def hold_retry(self) -> bool:
        """Whether a retry may go, within the destination's retries outstanding (its
        connection pool's maxRetries): if so it is counted until retry_known() or the
        request's end; if not, the request is marked as refused a retry for it."""
        b = self.balanced
        if b is None:
            return True
        hold = b.picker.hold_retry(b.key)
        if hold is None:
            self.retrying.overflowed = True
            return False
        self.retrying.held = hold
        return True

    def retry_known(self) -> None:
        """The outcome of the retry under way is known (or it did not go): out of the
        destination's retries outstanding."""
        held = self.retrying.held
        if held is not None:
            held.finish()
            self.retrying.held = None

    @property
    def retry_overflowed(self) -> bool:
        """A retry the policy called for was refused: the destination's retries
        outstanding were at their limit."""
        return self.retrying.overflowed

    @property
    def retry_flag(self) -> str:
        """The flag a relayed answer carries for a retry the policy called for and did
        not get: UO (the destination's retries outstanding at their limit), URX (the
        request's retries ran out: Envoy's NoRetryLimitExceeded), else ""."""
        r = self.retrying
        return "UO" if r.overflowed else "URX" if r.exhausted else ""

    def release(self) -> None:
        """The request ended: every attempt of it leaves the count of requests in flight
        (those attempted() did not already take out), its retry the count of retries."""
        if self.balanced is not None:
            for ticket in self.balanced.tickets:
                ticket.finish()
            self.retry_known()


def _pool_http(policy):
    pool = policy.connection_pool
    return pool.http if pool is not None else None


def destination(tunnels, state, tunnel, request: RequestView, target: str, *, waypoint_namespace: str,
                picker: EndpointPicker | None = None) -> Destination | LocalReply:
    """The decision for a request whose policies allowed it; `target` is its normalized
    request-target (what goes upstream when no route rewrites it)."""
    req, me, service = tunnel.request, tunnel.waypoint, tunnel.service
    decided = None
    if service is not None:
        # Gateway API routes bound to the service first; VirtualServices when none is
        # (Istio leaves a service bound by both undefined)
        draws = tuple(random.random() for _ in range(MIRROR_DRAWS))
        decided = decide(state, service, req.port, request, random.random(), waypoint_namespace=waypoint_namespace,
                         mirror_draws=draws)
        if decided is None:
            decided = decide_virtual_service(
                state, service, req.port, request,
                VirtualServiceRandoms(random.random(), random.random(), random.random(), draws),
                waypoint_namespace=waypoint_namespace)
    if isinstance(decided, LocalReply):
        return decided
    if decided is None or (decided.service_key == service.key and decided.port == req.port and not decided.subset):
        address = (req.host, req.port)
        backend = service
    else:
        backend = state.by_service_key.get(decided.service_key)
        vip = next((ip for network, ip in backend.vips if network == me.network), None) if backend else None
        if vip is None:
            return LocalReply(503, decided.route, body=NO_HEALTHY_UPSTREAM, flag="UH",
                              reason=f"service {decided.service_key} has no address on network {me.network!r}",
                              service_key=backend.key if backend else None, response_headers=decided.response_headers)
        address = (str(vip), decided.port)
    port = address[1]
    subset = decided.subset if decided is not None else ""
    # the router's own answers from here on carry the route's response edits (Envoy's
    # local replies go through the route entry and the CORS filter)
    edits = decided.response_headers if decided is not None else NO_EDITS
    rule = state.destination_rule_for(backend, waypoint_namespace) if backend is not None and picker else None
    balanced = None
    if rule is not None or subset:
        attributes = RequestAttributes(request.method, _with_query(request.path, request.query), request.authority,
                                       request.scheme, tuple(request.headers.items()), port)
        balanced = Balanced(picker, backend, port, subset, rule, attributes, req.peer_address[0])
        try:
            ticket = balanced.choose(state, me)
        except Overflow as exc:
            return LocalReply(503, decided.route if decided else "", body=b"upstream connect error or disconnect/"
                              b"reset before headers. reset reason: overflow", flag="UO", reason=str(exc),
                              service_key=backend.key, response_headers=edits)
        chosen = ticket.route
    else:
        chosen, ticket = tunnels.upstream(state, me, *address), None
    if chosen.kind is not HBONE:
        return LocalReply(503, decided.route if decided else "", body=NO_HEALTHY_UPSTREAM, flag="UH",
                          reason=chosen.reason or "no endpoint", service_key=backend.key if backend else None,
                          response_headers=edits)
    app_protocol = backend.app_protocol(port) if backend is not None else tunnel.app_protocol
    if decided is None:
        return Destination(chosen, target, request.authority, app_protocol, address=address, balanced=balanced,
                           ticket=ticket, service=backend)
    return Destination(chosen, decided.target, decided.authority, app_protocol, decided.route,
                       decided.request_headers, decided.response_headers, decided.timeout, decided.retry, address,
                       balanced, ticket, decided.delay, decided.mirrors, backend)


def routed_service(where: Destination | LocalReply, state) -> Service | None:
    """The service of the cluster the request's route sends it to, which Envoy resolves
    with the route, before any filter answers: None where the route names no cluster (no
    route, a redirect, a direct response, an unknown backend)."""
    if isinstance(where, Destination):
        return where.service
    return state.by_service_key.get(where.service_key) if where.service_key else None


def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


class Deadlines:
    """A request's time: the route's timeout over all its attempts, and the retry
    policy's per-try timeout over each (absolute loop times; None: unbounded)."""
    __slots__ = ("loop", "route", "per_try", "timeout")

    def __init__(self, timeout: float | None, retry: RetryPolicy | None):
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.route = None if timeout is None else self.loop.time() + timeout
        self.per_try = retry.per_try_timeout if retry is not None else None

    def attempt(self) -> float | None:
        """When the next attempt must have its response head."""
        if self.per_try is None:
            return self.route
        end = self.loop.time() + self.per_try
        return end if self.route is None else min(end, self.route)

    def expired(self) -> bool:
        return self.route is not None and self.loop.time() >= self.route

    def passed(self, deadline: float | None) -> bool:
        """Whether `deadline` (an attempt's) has come: a timeout then was its own, not a
        connection's."""
        return deadline is not None and self.loop.time() >= deadline

    def __str__(self) -> str:
        parts = [f"route timeout {self.timeout} s"] if self.timeout is not None else []
        if self.per_try is not None:
            parts.append(f"per try {self.per_try} s")
        return ", ".join(parts) or "no timeout"


async def retry_destination(tunnels, where: Destination, retries: int, state, me, *, failure: str | None = None,
                            status: int | None = None, grpc_status: int | None = None, replayable: bool = True,
                            before=None, before_deadline: float | None = None) -> Destination | None:
    """How an attempt went (`failure`: no response; `status`: the response's), told to
    the endpoint picker; then the next attempt's destination (another endpoint, after
    the policy's back-off) when the request can be sent again (`replayable`), the
    route's retry policy takes what happened, `retries` so far leave one and the
    destination's retries outstanding leave room (else where.retry_overflowed); None
    otherwise.
    `before()` is awaited first (giving the failed attempt up)."""
    where.retry_known()                            # the previous retry's outcome is this one
    where.attempted(status=status, failure=failure)
    policy = where.retry
    if not replayable or status is not None and status < 300 and grpc_status is None:
        return None
    if policy is None or not should_retry(policy, status=status, grpc_status=grpc_status, failure=failure):
        return None
    if retries >= policy.num_retries:
        where.retrying.exhausted = policy.num_retries > 0
        return None
    if not where.hold_retry():
        return None                                # the destination's maxRetries: UO
    pause = backoff_delay(retries + 1, random.random(), base=policy.backoff_base)
    if before_deadline is not None and asyncio.get_running_loop().time() + pause >= before_deadline:
        where.retry_known()
        return None                                # no time left for another attempt
    again = where.next_endpoint(tunnels, state, me)
    if again is None:
        where.retry_known()
        return None
    where.given_up()
    if before is not None:
        await before()
    await asyncio.sleep(pause)
    return again


def with_flag(flag: str, extra: str) -> str:
    """Envoy's response flags `flag` ("-": none) with `extra` ("" : nothing) after them."""
    if not extra:
        return flag
    return extra if flag == "-" else f"{flag},{extra}"


def failure_flag(flag: str, where: Destination) -> str:
    """Envoy's response flags for a request whose last attempt got no response (or no
    response in time), `flag` saying how it ended (UF, UR, UC, UT), with what kept the
    router from another attempt: URX, the request's retries ran out on a failure its
    policy retries (Envoy logs "UF,URX"), or UO, the destination's retries outstanding
    were at their limit."""
    return with_flag(flag, where.retry_flag)


def failure_answer(failure: str, where: Destination) -> tuple[str, bytes]:
    """Envoy's response flags and body for a request whose last attempt got no
    response: UF (it could not connect) or UR (the upstream reset), as failure_flag()
    makes them."""
    if failure == "connect-failure":
        return failure_flag("UF", where), b"upstream connect error"
    return failure_flag("UR", where), b"upstream connect error or disconnect/reset before headers"


async def after_route(where, state, tunnel, record, pending: InFlight, limits: RequestLimits | None,
                      waypoint: tuple[str, str], grpc: bool) -> Limited | RateHeaders:
    """What both handlers do once `where` is decided, in Envoy's filter order: the
    request is reported under the service it was routed to and held by `pending`, an
    injected delay is waited out, then the rate limits are asked (rate_limit())."""
    record.route_to(routed_service(where, state))
    if isinstance(where, Destination):
        pending.where = where
    if where.delay:
        await asyncio.sleep(where.delay)               # an injected delay
    return rate_limit(limits, state, waypoint, tunnel, where, grpc)


def rate_limit(limits: RequestLimits | None, view, waypoint: tuple[str, str], tunnel, where,
               grpc: bool) -> Limited | RateHeaders:
    """The rate limits on the request `where` was decided for, its tokens taken. An
    injected abort and a CORS preflight are answered before them, and an injected
    delay has passed before this is asked: Envoy's fault and CORS filters run ahead of
    the local rate limit filter, which Istio users insert just before the router."""
    if limits is None or (isinstance(where, LocalReply) and (where.flag == "FI" or where.reason == CORS_PREFLIGHT)):
        return NO_LIMIT
    req = tunnel.request
    return limits.check(view, waypoint=waypoint, service=tunnel.service, port=req.port, route=where.route,
                        source=req.peer_identity, grpc=grpc, now=time.monotonic())


def with_rate_headers(where: Destination | LocalReply,
                      response: tuple[tuple[str, str], ...]) -> Destination | LocalReply:
    """`where` with a rate limit's x-ratelimit-* headers added to the response it relays
    or answers: Envoy's local rate limit filter adds them on the way out to whatever
    answers a request it counted, the router's own replies included."""
    if not response:
        return where
    return replace(where, response_headers=merge_edits(where.response_headers, HeaderEdits(add=response)))


class InFlight:
    """What one request holds while it is under way: where it went (its attempts), its
    copies to mirrors and the body they are streamed. end() gives them up: the attempts
    leave the endpoint picker's count; copies whose body did not end whole are
    abandoned; the copies are cancelled if the client left before its answer."""
    __slots__ = ("where", "mirrored", "mirror_body")

    def __init__(self):
        self.where: Destination | None = None
        self.mirrored: list = []
        self.mirror_body = None            # mirrors.MirrorBody, for a request with a body

    def end(self, *, client_left: bool) -> None:
        if self.where is not None:
            self.where.release()
        if self.mirror_body is not None:
            self.mirror_body.request_ended()
        if client_left:
            for copy in self.mirrored:
                copy.cancel()
