"""What the waypoint does with one request, by the routes attached to its service: pure
functions of the view, the request and the random numbers given, so every rule of the
Gateway API's HTTPRoute and GRPCRoute reads as a table test.

    decide(view, service, port, request, r) ─► None          no route attached: the request
                                                              goes to the service it was sent to
                                             ─► LocalReply    404 (no match), 500 (no valid
                                                              backend), a redirect, a CORS
                                                              preflight's answer
                                             ─► Forward       the backend service and port, the
                                                              rewritten path and host, header
                                                              edits both ways, the timeout

A Service-parented route is chosen by the service's VIP and port, never by the Host
header (Istio ignores `hostnames` on a mesh route, and meshcore does the same). A gRPC
request is matched against the GRPCRoutes first, then the HTTPRoutes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshcore.traffic.cors import Preflight, cors, gateway_cors
from meshcore.traffic.model import (Cors, FilterType, HeaderModifier, HTTPRouteRule, PathMatchType, PathModifier,
                                    PathModifierType, RequestRedirect, Retry, URLRewrite)
from meshcore.traffic.retry import DEFAULT_BACKOFF_BASE, DEFAULT_RETRY_POLICY, RetryPolicy, parse_retry_on
from meshcore.traffic.select import RouteEntry, choose_backend, grpc_call, select_grpc, select_http

NO_ROUTE_BODY = b""                 # Envoy's 404 for an unmatched route has no body
NO_BACKEND_BODY = b""


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a route decides on: the request as the waypoint received it (path without
    its query; header names lower-case, repeated values joined with ",")."""
    method: str
    path: str
    query: str
    authority: str
    headers: Mapping[str, str]
    grpc: bool = False
    scheme: str = "http"


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """A header modifier: `set` replaces every value of a name, `add` appends one,
    `remove` drops a name; names compare without case."""
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)

    def apply(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if not self:
            return headers
        gone = {n.lower() for n, _ in self.set} | {n.lower() for n in self.remove}
        out = [(n, v) for n, v in headers if n.lower() not in gone]
        return out + [(n.lower(), v) for n, v in self.set] + [(n.lower(), v) for n, v in self.add]

    def then_set(self, pairs: tuple[tuple[str, str], ...]) -> "HeaderEdits":
        """These edits, then `pairs` set over whatever they and the response wrote under
        those names (a later filter's headers: CORS after the router's)."""
        if not pairs:
            return self
        names = {n.lower() for n, _ in pairs}
        return HeaderEdits(tuple(p for p in self.set if p[0].lower() not in names) + pairs,
                           tuple(p for p in self.add if p[0].lower() not in names), self.remove)


NO_EDITS = HeaderEdits()


@dataclass(frozen=True, slots=True)
class LocalReply:
    """An answer of the waypoint's own. `flag` is Envoy's response flag (NR: no route).
    `grpc_status`: the status a gRPC request is answered with (Trailers-Only, HTTP 200)
    in place of the one mapped from `status` (an injected gRPC abort); `delay`: seconds
    to wait before answering (an injected delay before an injected abort);
    `service_key`: the service of the cluster the route named, which Envoy resolves with
    the route before any filter answers (what the request's metrics name; None: no
    cluster); `content_type`: "" for an answer without one (a CORS preflight's);
    `response_headers`: edits on the answer once a route with a destination took the
    request (its header edits and CORS headers, x-ratelimit-* headers), as Envoy's local
    replies pass through the route entry and the encoder filters."""
    status: int
    route: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    flag: str = "-"
    reason: str = ""
    grpc_status: int | None = None
    delay: float = 0.0
    service_key: str | None = None
    content_type: str = "text/plain"
    response_headers: HeaderEdits = NO_EDITS

    def content_headers(self) -> tuple[tuple[str, str], ...]:
        return (("content-type", self.content_type),) if self.content_type else ()


@dataclass(frozen=True, slots=True)
class Forward:
    """Where the request goes and as what. `service_key` None: the service it was sent
    to; `port` the backend's port; `target` the origin-form request-target to send;
    `authority` the Host / :authority to send."""
    route: str
    service_key: str | None
    port: int
    target: str
    authority: str
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    timeout: float | None = None
    retry: RetryPolicy | None = DEFAULT_RETRY_POLICY
    subset: str = ""                  # a DestinationRule subset of the backend ("": all its endpoints)
    delay: float = 0.0                # an injected fault's delay before the request goes on, seconds
    mirrors: tuple[tuple[str, int], ...] = ()   # (service key, port) that get a copy of this request


def gateway_retry_policy(retry: Retry | None, per_try: float | None = None) -> RetryPolicy | None:
    """The retries istiod programs for a Gateway API rule: Istio's default without a
    `retry` stanza; with one, `attempts` retries (2 unless set; 0: none) on connection
    failures, refused streams, gRPC unavailable and cancelled, and the listed codes,
    each attempt bounded by `per_try` (timeouts.backendRequest)."""
    if retry is None:
        return DEFAULT_RETRY_POLICY
    if retry.effective_attempts <= 0:
        return None
    conditions, codes = parse_retry_on(",".join(retry.retry_on))
    return RetryPolicy(retry.effective_attempts, conditions, codes, per_try_timeout=per_try,
                       backoff_base=retry.backoff if retry.backoff is not None else DEFAULT_BACKOFF_BASE)


def decide(view, service, port: int, request: RequestView, r: float, *,
           waypoint_namespace: str | None = None, mirror_draws: Sequence[float] = ()) -> LocalReply | Forward | None:
    """The route decision for one request to `service`:`port` (`r` uniform in [0, 1):
    the weighted backend choice; `mirror_draws`: one each for the rule's mirrors, in
    order, whether it gets a copy; a mirror without a draw gets one)."""
    table = view.route_table(service.key, port, waypoint_namespace)
    if not table:
        return None
    entry = None
    if request.grpc:
        call = grpc_call(request.path)
        if call is not None:
            entry = select_grpc(table, service=call[0], method=call[1], headers=request.headers)
    if entry is None:
        entry = select_http(table, method=request.method, path=request.path, query=request.query,
                            headers=request.headers)
    if entry is None:
        return LocalReply(404, "", body=NO_ROUTE_BODY, flag="NR", reason="no route matched the request")
    return rule_decision(entry, port, request, r, mirror_draws)


def route_name(entry: RouteEntry) -> str:
    route = entry.route.route
    return f"{route.namespace}.{route.name}.{entry.rule.index}"


def rule_decision(entry: RouteEntry, port: int, request: RequestView, r: float,
                  mirror_draws: Sequence[float] = ()) -> LocalReply | Forward:
    """What the matched rule does with the request."""
    name = route_name(entry)
    rule = entry.rule.rule
    filters = rule.filters
    request_edits = _edits(filters, FilterType.REQUEST_HEADER_MODIFIER)
    redirect = next((f for f in filters if isinstance(f, RequestRedirect)), None)
    # a redirect, and a rule without weighted backends (istiod's direct response), are
    # routes without a route entry, which Envoy's CORS filter passes by
    if redirect is not None:
        location = redirect_location(redirect, entry, request, port)
        return LocalReply(redirect.status_code, name, headers=(("location", location),), flag="-",
                          reason=f"redirected to {location}")
    backend = choose_backend(entry.rule.backends, r)
    if backend is None:
        return LocalReply(500, name, body=NO_BACKEND_BODY, flag="NR",
                          reason=f"route {name}: no backend carries weight")
    # Envoy's CORS filter runs before its router: it answers a preflight even for a
    # backend that does not exist
    allowed = cors(next((gateway_cors(f) for f in filters if isinstance(f, Cors)), None), request.method,
                   request.headers)
    if isinstance(allowed, Preflight):
        return preflight_reply(name, allowed, backend.service_key if backend.valid else None)
    set_cors = allowed.headers if allowed is not None else ()
    if not backend.valid:
        # the router's own answer passes through the route entry: the rule's response
        # headers and the backend's own (istiod keeps an unresolved backend's filters)
        return LocalReply(500, name, headers=set_cors, body=NO_BACKEND_BODY, flag="UH",
                          reason=f"route {name}: {backend.message or str(backend.problem)}",
                          response_headers=merge_edits(_edits(filters, FilterType.RESPONSE_HEADER_MODIFIER),
                                                       _edits(backend.ref.filters,
                                                              FilterType.RESPONSE_HEADER_MODIFIER)))
    rewrite = next((f for f in filters if isinstance(f, URLRewrite)), None)
    backend_filters = backend.ref.filters
    target = _with_query(request.path, request.query)
    authority = request.authority
    if rewrite is not None:
        if rewrite.path is not None:
            target = _with_query(rewritten_path(rewrite.path, entry, request.path), request.query)
        if rewrite.hostname is not None:
            authority = rewrite.hostname
    http = isinstance(rule, HTTPRouteRule)
    return Forward(name, backend.service_key, backend.ref.port or port, target, authority,
                   request_headers=merge_edits(request_edits, _edits(backend_filters, FilterType.REQUEST_HEADER_MODIFIER)),
                   response_headers=merge_edits(_edits(filters, FilterType.RESPONSE_HEADER_MODIFIER),
                                                _edits(backend_filters, FilterType.RESPONSE_HEADER_MODIFIER)
                                                ).then_set(set_cors),
                   timeout=rule.deadlines[0] if http else None,
                   retry=gateway_retry_policy(rule.retry if http else None, rule.deadlines[1] if http else None),
                   mirrors=mirror_targets(entry.rule.mirrors, port, mirror_draws))


CORS_PREFLIGHT = "CORS preflight"       # the reason a preflight answer carries


def preflight_reply(name: str, answer: Preflight, service_key: str | None, delay: float = 0.0) -> LocalReply:
    """The CORS filter's own 200 to a preflight: its headers, no body, no content-type."""
    return LocalReply(200, name, headers=answer.headers, reason=CORS_PREFLIGHT, delay=delay,
                      service_key=service_key, content_type="")


def mirror_targets(mirrors, port: int, draws: Sequence[float]) -> tuple[tuple[str, int], ...]:
    """The (service key, port) of each RequestMirror that takes this request: in
    proportion to its percent (`draws` in [0, 1), one per mirror)."""
    out = []
    for i, (mirror, service_key) in enumerate(mirrors):
        draw = draws[i] if i < len(draws) else 0.0
        if draw * 100.0 < mirror.percent:
            out.append((service_key, mirror.backend.port or port))
    return tuple(out)


def _edits(filters, kind: FilterType) -> HeaderEdits:
    for f in filters:
        if isinstance(f, HeaderModifier) and f.type == kind:
            return HeaderEdits(f.set, f.add, f.remove)
    return NO_EDITS


def merge_edits(first: HeaderEdits, then: HeaderEdits) -> HeaderEdits:
    """`first`, then `then`."""
    if not then:
        return first
    if not first:
        return then
    return HeaderEdits(first.set + then.set, first.add + then.add, first.remove + then.remove)


def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


def matched_prefix(entry: RouteEntry) -> str | None:
    """The PathPrefix the request matched, if it matched one (what ReplacePrefixMatch
    replaces)."""
    path = getattr(entry.match, "path", None)
    if path is None or path.type is not PathMatchType.PATH_PREFIX:
        return None
    return path.value


def replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """Gateway API's ReplacePrefixMatch: the matched prefix (on segment boundaries, a
    trailing "/" of either side not doubled) becomes `replacement`."""
    rest = path[len(prefix.rstrip("/")):]
    if replacement.endswith("/") and rest.startswith("/"):
        replacement = replacement[:-1]
    return (replacement + rest) or "/"


def rewritten_path(modifier: PathModifier, entry: RouteEntry, path: str) -> str:
    if modifier.type is PathModifierType.REPLACE_FULL_PATH:
        return modifier.value
    prefix = matched_prefix(entry)
    # ReplacePrefixMatch is only accepted with a PathPrefix match; anything else keeps the path
    return replace_prefix(path, prefix, modifier.value) if prefix is not None else path


_DEFAULT_PORTS = {"http": 80, "https": 443}


def redirect_location(redirect: RequestRedirect, entry: RouteEntry, request: RequestView, port: int) -> str:
    """The Location of a RequestRedirect: each part the filter leaves out is the
    request's (the port: the scheme's well-known one when the filter names a scheme,
    else the service port), and a scheme's well-known port is not written."""
    scheme = redirect.scheme or request.scheme
    host = redirect.hostname or _host_of(request.authority)
    if redirect.port is not None:
        out_port = redirect.port
    elif redirect.scheme is not None:
        out_port = _DEFAULT_PORTS.get(scheme, port)
    else:
        out_port = port
    path = request.path
    if redirect.path is not None:
        path = rewritten_path(redirect.path, entry, path)
    netloc = host if out_port == _DEFAULT_PORTS.get(scheme) else f"{host}:{out_port}"
    return f"{scheme}://{netloc}{_with_query(path, request.query)}"


def _host_of(authority: str) -> str:
    if authority.startswith("["):
        return authority[:authority.index("]") + 1] if "]" in authority else authority
    return authority.rpartition(":")[0] if ":" in authority else authority
