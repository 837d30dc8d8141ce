"""Choosing the route rule for a request, and the backend for a rule: pure functions
over a RouteTable the view built once per change.

    table = view.route_table(service.key, port, waypoint_namespace=ns)   # None: no route attached
    entry = select_grpc(table, service=s, method=m, headers=h) or \
        select_http(table, method="GET", path="/a/b", query="x=1", headers=h)
    entry is None                   # no rule matches: the waypoint answers 404
    entry.rule.answers_500          # no backend carries weight (and no redirect): 500
    backend = choose_backend(entry.rule.backends, random.random())
    backend is None or not backend.valid      # 500 as well

How a service-parented route is chosen, as Istio does it: by the service (its VIP) and
port the request was sent to, never by the Host header. istiod builds a waypoint's
routes for a service with one virtual host matching any authority, and the route's
`hostnames` are not used for a Service parent (GAMMA asks mesh routes not to set them).
A port-specific parentRef (`port: 80`) attaches the route only to that port.

Precedence (Gateway API's HTTPRouteRule.matches comment), per match across every route
in the table: an Exact path, then the longest PathPrefix, then (Istio's choice for what
the spec leaves to implementations) a RegularExpression path, longer patterns first; a
method match; more header matches; more query matches; then the oldest route by
creationTimestamp (a route without one counts as created when read, after every dated
one), then "namespace/name" alphabetically; then, within a route, the rules and their
matches in order. GRPCRoute: more characters of service, then of method, then more
header matches, then the same route order.

On a port, routes attached to that port and routes attached to the whole service are
ranked together, as the spec asks of "all routes attached to the same parent". istiod
differs here: it keeps them in two lists (one per port-specific or portless parent)
and tries the whole of the list holding the oldest route first.

A gRPC request (content-type application/grpc...) is offered to the GRPCRoutes first and,
when none matches, to the HTTPRoutes: istiod merges both kinds attached to a service
into one list where a gRPC match is a path match, so an HTTPRoute's rule can take a
gRPC request no GRPCRoute matched. (Where a gRPC match and an HTTP match would both
take a request, istiod ranks them together by path; meshcore prefers the GRPCRoute.)

Matching: a PathPrefix matches whole segments ("/foo" takes /foo, /foo/ and /foo/bar,
not /foobar) and ignores a trailing slash of its own; paths compare case-sensitively.
Header names compare case-insensitively: `headers` maps lower-case names to values,
a repeated header's values joined with "," (as Envoy presents them). A query
parameter is compared as written in the query string (not percent-decoded), by its
first occurrence. A regular expression must match the whole value (Envoy's RE2
full match).
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshcore.traffic.model import (GRPCRouteMatch, HTTPRouteMatch, PathMatch, PathMatchType, ResolvedBackend,
                                    ResolvedRoute, ResolvedRule, ValueMatch, ValueMatchType)
from meshcore.traffic.regex import literal_prefix


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One match of one rule: what selection returns."""
    route: ResolvedRoute
    rule: ResolvedRule
    match: HTTPRouteMatch | GRPCRouteMatch
    match_index: int


@dataclass(frozen=True, slots=True)
class PositionIndex:
    """Where in a table the entries that can match a request are, so selection looks at
    those (in table order) instead of every entry: by exact value, by path prefix (its
    value without the trailing slash, "" for "/"), regular-expression paths by their
    literal prefix (regex.literal_prefix: a path can only match a pattern it starts
    with), and the rest (patterns without one, and gRPC matches without an exact
    service), each a sorted tuple of positions."""
    exact: dict = field(default_factory=dict)
    prefix: dict = field(default_factory=dict)
    other: tuple[int, ...] = ()
    regex: dict = field(default_factory=dict)
    regex_lengths: tuple[int, ...] = ()          # the lengths of regex's keys, ascending


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The matches of every route attached to one service port, in precedence order."""
    http: tuple[RouteEntry, ...] = ()
    grpc: tuple[RouteEntry, ...] = ()
    http_index: PositionIndex = field(default=PositionIndex(), compare=False, repr=False)
    grpc_index: PositionIndex = field(default=PositionIndex(), compare=False, repr=False)

    def __bool__(self) -> bool:
        return bool(self.http or self.grpc)


# -- precedence ---------------------------------------------------------------------------

_PATH_RANK = {PathMatchType.EXACT: 0, PathMatchType.PATH_PREFIX: 1, PathMatchType.REGULAR_EXPRESSION: 2}


def _prefix(value: str) -> str:
    """A PathPrefix as it compares: without its trailing slash ("/" stays "/")."""
    return value.rstrip("/") or "/"


def route_order(entry: RouteEntry) -> tuple:
    """The tie-breaks after the match's own specificity."""
    route = entry.route.route
    created = route.created
    return (created is None, created.timestamp() if created is not None else 0.0,
            f"{route.namespace}/{route.name}", entry.rule.index, entry.match_index)


def http_precedence(entry: RouteEntry) -> tuple:
    """Sort key: the smaller, the earlier a match is tried."""
    m = entry.match
    length = len(_prefix(m.path.value)) if m.path.type is PathMatchType.PATH_PREFIX else len(m.path.value)
    return (_PATH_RANK[m.path.type], -length, m.method is None, -len(m.headers), -len(m.query_params),
            *route_order(entry))


def grpc_precedence(entry: RouteEntry) -> tuple:
    m = entry.match
    service = len(m.method.service) if m.method is not None else 0
    method = len(m.method.method) if m.method is not None else 0
    return (-service, -method, -len(m.headers), *route_order(entry))


def entries(route: ResolvedRoute) -> list[RouteEntry]:
    return [RouteEntry(route, rule, match, i) for rule in route.rules for i, match in enumerate(rule.rule.matches)]


def build_table(blocks: Iterable[Iterable[ResolvedRoute]]) -> RouteTable:
    """A table from blocks of routes: each block's matches in precedence order, the
    blocks one after the other (the routes of a waypoint's own namespace before the
    service's: see resolve.py)."""
    http: list[RouteEntry] = []
    grpc: list[RouteEntry] = []
    for routes in blocks:
        block = [e for r in routes for e in entries(r)]
        http += sorted((e for e in block if isinstance(e.match, HTTPRouteMatch)), key=http_precedence)
        grpc += sorted((e for e in block if isinstance(e.match, GRPCRouteMatch)), key=grpc_precedence)
    return RouteTable(tuple(http), tuple(grpc), _http_index(http), _grpc_index(grpc))


def _http_index(table: list[RouteEntry]) -> PositionIndex:
    exact: dict[str, list[int]] = {}
    prefix: dict[str, list[int]] = {}
    regex: dict[str, list[int]] = {}
    other = []
    for i, e in enumerate(table):
        path = e.match.path
        if path.type is PathMatchType.EXACT:
            exact.setdefault(path.value, []).append(i)
        elif path.type is PathMatchType.PATH_PREFIX:
            prefix.setdefault(path.value.rstrip("/"), []).append(i)
        else:
            literal = literal_prefix(path.regex) if path.regex is not None else ""
            if literal:
                regex.setdefault(literal, []).append(i)
            else:
                other.append(i)
    return PositionIndex({k: tuple(v) for k, v in exact.items()}, {k: tuple(v) for k, v in prefix.items()},
                         tuple(other), {k: tuple(v) for k, v in regex.items()}, tuple(sorted({len(k) for k in regex})))


def _grpc_index(table: list[RouteEntry]) -> PositionIndex:
    exact: dict[str, list[int]] = {}
    other = []
    for i, e in enumerate(table):
        m = e.match.method
        if m is not None and m.type is ValueMatchType.EXACT and m.service:
            exact.setdefault(m.service, []).append(i)
        else:
            other.append(i)
    return PositionIndex({k: tuple(v) for k, v in exact.items()}, {}, tuple(other))


def _in_order(lists: list) -> Iterable[int]:
    lists = [positions for positions in lists if positions]
    if len(lists) == 1:
        return lists[0]
    return heapq.merge(*lists)


def http_candidates(table: RouteTable, path: str) -> Iterable[int]:
    """The positions of the entries whose path condition can admit `path`, in order."""
    index = table.http_index
    lists = [index.other, index.exact.get(path)]
    prefixes = index.prefix
    if prefixes:
        lists.append(prefixes.get(""))
        # every segment boundary of the path, and the whole path
        cut = path.find("/", 1)
        while cut != -1:
            lists.append(prefixes.get(path[:cut]))
            cut = path.find("/", cut + 1)
        lists.append(prefixes.get(path))
    if index.regex:
        patterns = index.regex
        for length in index.regex_lengths:
            if length > len(path):
                break
            lists.append(patterns.get(path[:length]))
    return _in_order(lists)


# -- matching --------------------------------------------------------------------------------

def path_matches(match: PathMatch, path: str) -> bool:
    if match.type is PathMatchType.EXACT:
        return path == match.value
    if match.type is PathMatchType.PATH_PREFIX:
        prefix = match.value.rstrip("/")
        # on a segment boundary: the prefix is the whole path or ends where a segment does
        return not prefix or path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")
    return match.regex.fullmatch(path) is not None


def value_matches(match: ValueMatch, value: str | None) -> bool:
    if value is None:
        return False
    if match.type is ValueMatchType.EXACT:
        return value == match.value
    return match.regex.fullmatch(value) is not None


def query_parameters(query: str) -> dict[str, str]:
    """Each name's first value, as written (a name without "=" has the value "")."""
    out: dict[str, str] = {}
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.setdefault(name, value)
    return out


def http_match_matches(match: HTTPRouteMatch, method: str, path: str, query: dict | None,
                       headers: Mapping[str, str]) -> bool:
    """`query`: the parsed query string (query_parameters)."""
    return ((match.method is None or match.method == method)
            and path_matches(match.path, path)
            and all(value_matches(h, headers.get(h.name)) for h in match.headers)
            and all(value_matches(q, query.get(q.name)) for q in match.query_params))


def select_http(table: RouteTable | None, *, method: str, path: str, query: str = "",
                headers: Mapping[str, str]) -> RouteEntry | None:
    """The first match of `table` the request meets, or None (404). `path` without its
    query string, `query` without the "?", `headers` as the module docstring says."""
    if table is None:
        return None
    return first_http_match(table, http_candidates(table, path), method, path, query, headers)


def first_http_match(table: RouteTable, positions: Iterable[int], method: str, path: str, query: str,
                     headers: Mapping[str, str]) -> RouteEntry | None:
    """The first entry at `positions` (in precedence order) the request meets; the
    query string is parsed only once a match asks about it."""
    parsed: dict | None = None
    rows = table.http
    for position in positions:
        entry = rows[position]
        match = entry.match
        if match.query_params and parsed is None:
            parsed = query_parameters(query)
        if http_match_matches(match, method, path, parsed, headers):
            return entry
    return None


def grpc_match_matches(match: GRPCRouteMatch, service: str, method: str, headers: Mapping[str, str]) -> bool:
    m = match.method
    if m is not None:
        if m.type is ValueMatchType.EXACT:
            if m.service and m.service != service or m.method and m.method != method:
                return False
        elif (m.service_regex is not None and m.service_regex.fullmatch(service) is None
              or m.method_regex is not None and m.method_regex.fullmatch(method) is None):
            return False
    return all(value_matches(h, headers.get(h.name)) for h in match.headers)


def select_grpc(table: RouteTable | None, *, service: str, method: str,
                headers: Mapping[str, str]) -> RouteEntry | None:
    """The first GRPCRoute match for a call of `service`/`method` (grpc_call splits a
    request's path into them), or None."""
    if table is None:
        return None
    rows, index = table.grpc, table.grpc_index
    for position in _in_order([index.other, index.exact.get(service)]):
        entry = rows[position]
        if grpc_match_matches(entry.match, service, method, headers):
            return entry
    return None


def grpc_call(path: str) -> tuple[str, str] | None:
    """A gRPC request's path "/package.Service/Method" as (service, method), or None."""
    _, service, method = path.partition("?")[0].split("/", 2) if path.count("/") == 2 else ("", "", "")
    return (service, method) if service and method else None


# -- backends -------------------------------------------------------------------------------------

def choose_backend(backends: Iterable[ResolvedBackend], r: float) -> ResolvedBackend | None:
    """The backend a request goes to, given `r` uniform in [0, 1): each in proportion to
    its weight (weight 0: never). None when no backend carries weight (the rule answers
    500); an invalid backend is chosen for its share too, and answered 500."""
    weighted = [b for b in backends if b.weight > 0]
    total = sum(b.weight for b in weighted)
    if not total:
        return None
    point = r * total
    for b in weighted:
        if point < b.weight:
            return b
        point -= b.weight
    return weighted[-1]                 # r rounding up to 1.0
