"""What the waypoint does with one request, by the Istio VirtualServices bound to its
service: a pure function of the view, the request and the random numbers given, with
the semantics Envoy gives the routes istiod generates for a waypoint.

    decide_virtual_service(view, service, port, request, randoms, waypoint_namespace=)
        ─► None         no VirtualService programs a route for this service and port: the
                        request goes on as before (istiod builds the service's default route)
        ─► LocalReply   404 NR (no route matched), 503 NC (the destination has no cluster),
                        a redirect, a direct response, an injected abort (FI), the answer
                        to a CORS preflight
        ─► Forward      the destination service, port and subset, the rewritten path and
                        host, header edits both ways, the timeout, the retry policy, an
                        injected delay

The routes of all VirtualServices that apply (view.virtual_services_for, in istiod's
order) are tried in order, the first whose match takes the request wins; once any of
them programs a route for the port, a request none matches is answered 404, as Envoy
does with the waypoint's virtual host holding those routes only.

Where meshcore differs from Envoy:
- weighted destinations and fault percentages are drawn from the numbers in
  `VirtualServiceRandoms`, not from Envoy's stream id;
- a `%VARIABLE%` in a header value is passed on as written (Envoy substitutes it);
- mirrors and consistent-hash keys are not decided here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from meshcore.traffic.cors import Preflight, cors
from meshcore.traffic.decide import Forward, HeaderEdits, LocalReply, RequestView, preflight_reply
from meshcore.traffic.istio_model import (
    DerivePort, HeaderOperations, Headers, HTTPMatch, HTTPRoute, MatchKind, Redirect, RegexRewrite,
    RequestAttributes, RouteDestination,
)
from meshcore.traffic.retry import retry_policy
from meshcore.traffic.virtualservice_select import (
    SelectedRoute, applies_to_port, choose_destination, fault_decision, mirrors_for, select_http_route,
)

NO_ROUTE_BODY = b""                         # Envoy's 404 for an unmatched route has no body
NO_CLUSTER_BODY = b""                       # nor its 503 for a destination without a cluster
FAULT_ABORT_BODY = b"fault filter abort"    # what Envoy's fault filter answers (and its grpc-message)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class VirtualServiceRandoms:
    """The random numbers one request's decision draws on, each uniform in [0, 1):
    which weighted destination, whether the route's fault delays, whether it aborts."""
    destination: float
    delay: float
    abort: float
    mirrors: tuple[float, ...] = ()   # one per mirror of the route, in order (missing: mirrored)


def decide_virtual_service(view, service, port: int, request: RequestView, randoms: VirtualServiceRandoms, *,
                           waypoint_namespace: str) -> LocalReply | Forward | None:
    """The VirtualService decision for one request to `service`:`port` at a waypoint of
    `waypoint_namespace`."""
    virtual_services = view.virtual_services_for(service, waypoint_namespace)
    if not virtual_services or not applies_to_port(virtual_services, port, waypoint_namespace=waypoint_namespace):
        return None
    selected = select_http_route(virtual_services, request_attributes(request, port),
                                 waypoint_namespace=waypoint_namespace)
    if selected is None:
        return LocalReply(404, "", body=NO_ROUTE_BODY, flag="NR", reason="no route matched the request")
    return route_decision(view, selected, port, request, randoms, waypoint_namespace=waypoint_namespace)


def request_attributes(request: RequestView, port: int) -> RequestAttributes:
    return RequestAttributes(request.method, _with_query(request.path, request.query), request.authority,
                             request.scheme, tuple(request.headers.items()), port)


def route_name(selected: SelectedRoute) -> str:
    """`namespace.name.<route>` for logs: the route's name (and its match's, as Envoy
    names the route), or its index among the VirtualService's http routes."""
    vs = selected.virtual_service
    label = selected.route.name or str(next(i for i, r in enumerate(vs.http) if r is selected.route))
    if selected.match is not None and selected.match.name:
        label = f"{label}.{selected.match.name}"
    return f"{vs.namespace}.{vs.name}.{label}"


def route_decision(view, selected: SelectedRoute, port: int, request: RequestView, randoms: VirtualServiceRandoms,
                   *, waypoint_namespace: str) -> LocalReply | Forward:
    """What the selected route does with the request. Envoy's fault filter runs before
    its router: an injected delay comes first, an injected abort answers in place of
    whatever the route would have done."""
    name = route_name(selected)
    route = selected.route
    chosen = choose_destination(route, randoms.destination)
    cluster = cluster_service_key(view, chosen, port, waypoint_namespace)
    fault = fault_decision(route.fault, randoms.delay, randoms.abort)
    delay = fault.delay or 0.0
    # Envoy finalizes every answer with the route's response headers, its filters' own
    # local replies (an injected abort) and the router's redirects and direct responses
    # alike; a redirect or direct response has no route entry, and the CORS filter
    # passes it by
    response_edits = header_edits(route.headers.response) if route.headers else HeaderEdits()
    if fault.aborts:
        return replace(fault_abort(name, fault.http_status, fault.grpc_status, delay), service_key=cluster,
                       response_headers=response_edits)
    if route.redirect is not None:
        location = redirect_location(route.redirect, selected.match, request, port)
        return LocalReply(route.redirect.code, name, headers=tuple(response_edits.apply([("location", location)])),
                          reason=f"redirected to {location}", delay=delay)
    if route.direct_response is not None:
        answer = route.direct_response
        return LocalReply(answer.status, name, headers=tuple(response_edits.apply([])), body=answer.body or b"",
                          reason="direct response", delay=delay)
    # Istio puts Envoy's CORS filter after the fault filter and before the router
    allowed = cors(route.cors_policy, request.method, request.headers)
    if isinstance(allowed, Preflight):
        return preflight_reply(name, allowed, cluster, delay)
    set_cors = allowed.headers if allowed is not None else ()
    return forward(view, selected, name, chosen, port, request, delay, waypoint_namespace=waypoint_namespace,
                   mirror_draws=randoms.mirrors, set_cors=set_cors)


def cluster_service_key(view, chosen: RouteDestination | None, port: int, waypoint_namespace: str) -> str | None:
    """The service of the cluster a route's destination names, None when there is no
    such cluster (a redirect, a direct response, an unknown host or port)."""
    if chosen is None:
        return None
    backend = view.service_by_hostname(chosen.destination.host, waypoint_namespace)
    if backend is None or backend.target_port(destination_port(chosen.destination.port, backend, port)) is None:
        return None
    return backend.key


def fault_abort(name: str, http_status: int | None, grpc_status: int | None, delay: float) -> LocalReply:
    """Envoy's fault filter abort: the HTTP status; for a gRPC status, HTTP 200 with that
    status for a gRPC request (Trailers-Only) and a plain 200 for any other."""
    if grpc_status is not None:
        return LocalReply(200, name, body=FAULT_ABORT_BODY, flag="FI", reason=FAULT_ABORT_BODY.decode(),
                          grpc_status=grpc_status, delay=delay)
    return LocalReply(http_status, name, body=FAULT_ABORT_BODY, flag="FI", reason=FAULT_ABORT_BODY.decode(),
                      delay=delay)


# -- forwarding --------------------------------------------------------------------------

def destination_port(destination_port_number: int | None, service, request_port: int) -> int:
    """istiod's waypoint destination port: the one the route names, else the service's
    only port when it has one, else the port the request was sent to."""
    if destination_port_number is not None:
        return destination_port_number
    if service is not None and len(service.ports) == 1:
        return service.ports[0][0]
    return request_port


def no_cluster(name: str, why: str, delay: float) -> LocalReply:
    """A destination istiod names a cluster for that does not exist: Envoy's router
    answers the route's cluster_not_found_response_code, 503 for a VirtualService
    (Gateway API routes are the ones istiod sets to 500)."""
    return LocalReply(503, name, body=NO_CLUSTER_BODY, flag="NC", reason=f"route {name}: {why}", delay=delay)


def forward(view, selected: SelectedRoute, name: str, chosen: RouteDestination, port: int, request: RequestView,
            delay: float, *, waypoint_namespace: str, mirror_draws: tuple = (),
            set_cors: tuple[tuple[str, str], ...] = ()) -> LocalReply | Forward:
    route = selected.route
    dest = chosen.destination
    # a hostname several namespaces define: istiod prefers the proxy's (the waypoint's) namespace
    backend = view.service_by_hostname(dest.host, waypoint_namespace)
    out_port = destination_port(dest.port, backend, port)
    route_ops, dest_ops = route.headers or Headers(), chosen.headers or Headers()
    weighted = len(route.route) > 1             # istiod writes weighted clusters for two or more
    missing = (f"no service {dest.host}" if backend is None else
               f"service {dest.host} has no port {out_port}" if backend.target_port(out_port) is None else None)
    if missing is not None:
        # the router's own answer passes through the route entry (and the weighted
        # cluster's): the response headers a forwarded answer would get
        return replace(no_cluster(name, missing, delay), headers=set_cors,
                       response_headers=route_header_edits(route_ops.response, dest_ops.response, weighted=weighted))
    return Forward(
        name, backend.key, out_port,
        target=rewritten_target(route, selected.match, request),
        authority=rewritten_authority(route, chosen, request.authority),
        request_headers=route_header_edits(route_ops.request, dest_ops.request, weighted=weighted),
        response_headers=route_header_edits(route_ops.response, dest_ops.response, weighted=weighted
                                            ).then_set(set_cors),
        timeout=route.timeout,                    # None: Istio's default, no timeout
        retry=retry_policy(route.retries, consistent_hash=not weighted and hashes_consistently(
            view, backend, dest.subset, dest.port, waypoint_namespace)),
        subset=dest.subset,
        delay=delay,
        mirrors=tuple(target for m in mirrors_for(route, (*mirror_draws, *(0.0,) * len(route.mirrors)))
                      if (target := mirror_target(view, m, port, waypoint_namespace)) is not None),
    )


def mirror_target(view, mirror, port: int, waypoint_namespace: str) -> tuple[str, int] | None:
    """(service key, port) of a mirror's destination; None when no such service exists
    (Envoy sends a shadow to a cluster that does not exist nowhere)."""
    service = view.service_by_hostname(mirror.destination.host, waypoint_namespace)
    if service is None:
        return None
    return service.key, destination_port(mirror.destination.port, service, port)


def hashes_consistently(view, backend, subset: str, port: int | None, waypoint_namespace: str) -> bool:
    """Whether the destination's DestinationRule balances by consistent hash (then
    retries stay on the same host), read as istiod's HashForHTTPDestination reads it:
    the subset's port-level setting, the subset's, the rule's port-level, the rule's;
    port-level only for a port the destination names."""
    rule = view.destination_rule_for(backend, waypoint_namespace)
    if rule is None:
        return False

    def hashing(policy) -> bool:
        return bool(policy is not None and policy.load_balancer is not None
                    and policy.load_balancer.consistent_hash is not None)

    def port_hashing(policy) -> bool:
        return policy is not None and port is not None and hashing(policy.for_port(port))

    chosen = rule.subset(subset) if subset else None
    levels = (chosen.traffic_policy if chosen is not None else None, rule.traffic_policy)
    return any(port_hashing(p) or hashing(p) for p in levels)


# -- path and authority ------------------------------------------------------------------

def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


def matched_length(match: HTTPMatch | None, path: str) -> int:
    """How much of the path Envoy's prefix_rewrite replaces: the prefix of a prefix
    match; the whole path (not the query) of an exact or regex match; "/" where the match
    names no uri, the prefix istiod gives such a route."""
    uri = match.uri if match is not None else None
    if uri is None:
        return 1 if path.startswith("/") else 0
    if uri.kind is MatchKind.PREFIX:
        return len(uri.value)
    return len(path)


def prefix_rewritten(replacement: str, match: HTTPMatch | None, request: RequestView) -> str:
    """The request-target with what the route matched replaced, the query kept."""
    return replacement + _with_query(request.path, request.query)[matched_length(match, request.path):]


def regex_rewritten(rewrite: RegexRewrite, path: str) -> str:
    """Envoy's regex_rewrite: every match in the path (not the query) replaced, as RE2's
    GlobalReplace does (\\0-\\9 name groups; no empty match right after a match)."""
    out, pos, last_end = [], 0, -1
    for m in rewrite.pattern.finditer(path):
        if m.start() == m.end() == last_end:
            continue
        out.append(path[pos:m.start()])
        out.append(_substitute(rewrite.rewrite, m))
        pos = last_end = m.end()
    out.append(path[pos:])
    return "".join(out)


def _substitute(template: str, m) -> str:
    out, i = [], 0
    while i < len(template):
        c = template[i]
        if c == "\\" and i + 1 < len(template):
            nxt = template[i + 1]
            if nxt.isdigit():
                group = int(nxt)
                out.append((m.group(group) or "") if group <= m.re.groups else "")
                i += 2
                continue
            if nxt == "\\":
                out.append("\\")
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


def rewritten_target(route: HTTPRoute, match: HTTPMatch | None, request: RequestView) -> str:
    """The request-target sent on: `rewrite.uri` is Envoy's prefix_rewrite (istiod sets
    it whatever the match), `uriRegexRewrite` its regex_rewrite."""
    rewrite = route.rewrite
    if rewrite is not None and rewrite.uri_regex is not None:
        return _with_query(regex_rewritten(rewrite.uri_regex, request.path), request.query)
    if rewrite is not None and rewrite.uri:
        return prefix_rewritten(rewrite.uri, match, request)
    return _with_query(request.path, request.query)


def _authority_of(ops: HeaderOperations) -> str:
    """The Host a header operation sets (istiod turns :authority/host into a host
    rewrite; `set` wins over `add`)."""
    found = ""
    for pairs in (ops.add, ops.set):
        for k, v in pairs:
            if k.lower() in (":authority", "host"):
                found = v
    return found


def rewritten_authority(route: HTTPRoute, chosen: RouteDestination, authority: str) -> str:
    """The route's host rewrite (`rewrite.authority`, else its request headers'
    :authority/host), else the destination's; the route's wins whatever the number of
    destinations, as istiod arranges it."""
    rewrite = route.rewrite.authority if route.rewrite is not None else ""
    route_level = rewrite or (_authority_of(route.headers.request) if route.headers else "")
    if route_level:
        return route_level
    dest_level = _authority_of(chosen.headers.request) if chosen.headers else ""
    return dest_level or authority


# -- header edits ------------------------------------------------------------------------

def _internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def header_edits(ops: HeaderOperations) -> HeaderEdits:
    """One level of operations as Envoy applies it: removes first, then `set`
    (overwrite) and `add` (append), each by name order as istiod sorts them; the
    authority is not a header here (see rewritten_authority)."""
    return HeaderEdits(tuple(sorted((k, v) for k, v in ops.set if not _internal(k))),
                       tuple(sorted((k, v) for k, v in ops.add if not _internal(k))),
                       tuple(k for k in ops.remove if not _internal(k)))


def then(first: HeaderEdits, second: HeaderEdits) -> HeaderEdits:
    """One HeaderEdits that does `first`, then `second`: what `second` sets or removes
    drops `first`'s values of that name."""
    if not second:
        return first
    if not first:
        return second
    overridden = {n.lower() for n, _ in second.set} | {n.lower() for n in second.remove}
    keep = tuple((n, v) for n, v in first.set if n.lower() not in overridden)
    keep_add = tuple((n, v) for n, v in first.add if n.lower() not in overridden)
    return HeaderEdits(keep + second.set, keep_add + second.add, first.remove + second.remove)


def route_header_edits(route_ops: HeaderOperations, dest_ops: HeaderOperations, *, weighted: bool) -> HeaderEdits:
    """The route's and the destination's header operations merged as Envoy applies what
    istiod generates. One destination: istiod appends its operations to the route's, so
    both levels' removes go first, then the route's set/add, then the destination's (the
    destination's `set` wins). Weighted destinations: the destination's are on the
    weighted cluster, which Envoy applies before the route's (the route's `set` and
    `remove` win)."""
    route_edits, dest_edits = header_edits(route_ops), header_edits(dest_ops)
    if not dest_edits:
        return route_edits
    if weighted:
        return then(dest_edits, route_edits)
    removes = HeaderEdits(remove=route_edits.remove + dest_edits.remove)
    return then(then(removes, HeaderEdits(route_edits.set, route_edits.add)),
                HeaderEdits(dest_edits.set, dest_edits.add))


# -- redirects ---------------------------------------------------------------------------

def _split_port(authority: str) -> tuple[str, str]:
    """(host, ":port" or "") as Envoy splits a Host header (IPv6 in brackets)."""
    if authority.startswith("["):
        end = authority.rfind("]:")
        return (authority[:end + 1], authority[end + 1:]) if end != -1 else (authority, "")
    end = authority.rfind(":")
    return (authority[:end], authority[end:]) if end != -1 else (authority, "")


def redirect_port(redirect: Redirect, request_port: int) -> str:
    """The port istiod writes into Envoy's redirect (":N", or "" for none): the given
    one, or the request's port for derivePort FROM_REQUEST_PORT; not the scheme's
    well-known one (the scheme is http unless the redirect names one)."""
    if redirect.port is not None:
        number = redirect.port
    elif redirect.derive_port is DerivePort.FROM_REQUEST_PORT:
        number = request_port
    else:
        return ""
    if _DEFAULT_PORTS.get(redirect.scheme or "http") == number:
        return ""
    return f":{number}"


def redirect_host(authority: str, new_scheme: str, new_port: str, request_protocol: str) -> str:
    """Envoy's host for a redirect that keeps the request's: its port dropped when the
    redirect names one, or when the scheme changes and the port was the old scheme's
    well-known one."""
    host, port = _split_port(authority)
    if not port:
        return authority
    drop = bool(new_port)
    if new_scheme != request_protocol:
        drop |= (request_protocol == "https" and port == ":443") or (request_protocol == "http" and port == ":80")
    return host if drop else authority


def redirect_path(redirect: Redirect, match: HTTPMatch | None, request: RequestView) -> str:
    """`uri` replaces the path (the request's query kept unless the uri has its own);
    `prefixRewrite` replaces what the route matched, as a prefix_rewrite does."""
    if redirect.uri:
        path = redirect.uri if "?" in redirect.uri else _with_query(redirect.uri, request.query)
    elif redirect.prefix_rewrite:
        path = prefix_rewritten(redirect.prefix_rewrite, match, request)
    else:
        path = _with_query(request.path, request.query)
    return path if path.startswith("/") else "/" + path


def redirect_location(redirect: Redirect, match: HTTPMatch | None, request: RequestView, request_port: int) -> str:
    """The Location Envoy writes for the redirect istiod generates (ApplyRedirect):
    the scheme given or the request's; the authority given, else the request's Host
    (see redirect_host); the port istiod derives; the path as redirect_path says."""
    scheme = redirect.scheme or request.scheme
    port = redirect_port(redirect, request_port)
    request_protocol = request.headers.get("x-forwarded-proto") or request.scheme
    host = redirect.authority or redirect_host(request.authority, scheme, port, request_protocol)
    return f"{scheme}://{host}{port}{redirect_path(redirect, match, request)}"
