"""Decisions on parsed VirtualServices, with Istio's semantics on a waypoint (not
Gateway API's): which VirtualServices bind a service and in what order, which route a
request takes, which destination a weighted route picks, whether a fault is injected,
which mirrors get a copy. Pure functions: randomness comes in as numbers in [0, 1).

    waypoint_virtual_services(vss, hostname=, service_namespace=, waypoint_namespace=) -> [VirtualService]
    select_http_route(vss, request, waypoint_namespace=) -> SelectedRoute | None   # indexed (RouteIndex)
    applies_to_port(vss, port, waypoint_namespace=) -> bool
    choose_destination(route, r) -> RouteDestination | None
    fault_decision(fault, delay_r, abort_r) -> FaultDecision
    mirrors_for(route, randoms) -> [Mirror]
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from meshcore.traffic.istio_fields import host_matches
from meshcore.traffic.istio_model import (
    Fault, HTTPMatch, HTTPRoute, MatchKind, Mirror, RequestAttributes, RouteDestination, StringMatch,
    VirtualService,
)
from meshcore.traffic.regex import literal_prefix


@dataclass(frozen=True, slots=True)
class SelectedRoute:
    virtual_service: VirtualService
    route: HTTPRoute
    match: HTTPMatch | None          # None: the route has no match conditions

    @property
    def name(self) -> str:
        """The route's name as Envoy logs it: the route's, then `.` and the match's."""
        if self.match is not None and self.match.name:
            return f"{self.route.name}.{self.match.name}"
        return self.route.name


# -- which VirtualServices, in which order -----------------------------------------------

def _visibility_bucket(vs: VirtualService, waypoint_namespace: str) -> int | None:
    """0: private to the waypoint's namespace, 1: exported to it by name, 2: public;
    None: not visible there. istiod indexes mesh VirtualServices this way and the
    waypoint reads the buckets in this order."""
    exports = vs.export_to or ("*",)       # the mesh's default exportTo is public
    if "*" in exports:
        return 2
    if vs.namespace == waypoint_namespace and ("." in exports or waypoint_namespace in exports):
        return 0
    if vs.namespace != waypoint_namespace and waypoint_namespace in exports:
        return 1
    return None


def waypoint_virtual_services(virtual_services: Iterable[VirtualService], *, hostname: str,
                              service_namespace: str, waypoint_namespace: str) -> list[VirtualService]:
    """The VirtualServices a waypoint applies to the service `hostname`, in the order their
    routes are concatenated (istiod's getVirtualServiceForWaypoint over the waypoint's
    SelectVirtualServices): bound to the `mesh` gateway, visible in the waypoint's
    namespace (exportTo), written in the service's or the waypoint's namespace, with a
    host that matches; private ones first, then those exported to the waypoint's
    namespace by name, then public ones; within each, oldest first
    (creationTimestamp, then name, then namespace: without an API server, documents
    with no creationTimestamp tie and go by name). Since Istio 1.30 a waypoint
    concatenates the routes of all of them; before, it took the first one with http
    routes only."""
    ranked = []
    for vs in virtual_services:
        if not vs.applies_to_mesh:
            continue
        bucket = _visibility_bucket(vs, waypoint_namespace)
        if bucket is None or vs.namespace not in (service_namespace, waypoint_namespace):
            continue
        if not any(host_matches(h, hostname) for h in vs.hosts):
            continue
        ranked.append((bucket, vs.creation_timestamp, vs.name, vs.namespace, vs))
    ranked.sort(key=lambda t: t[:4])
    return [t[4] for t in ranked]


# -- route selection ---------------------------------------------------------------------

def _match_applies(match: HTTPMatch, port: int, waypoint_namespace: str) -> bool:
    """Whether istiod programs this match on the waypoint's listener for `port` at all:
    matches with sourceLabels are dropped on waypoints (there is no source workload to
    select), gateways/sourceNamespace select as for any proxy in the waypoint's namespace."""
    if match.source_labels:
        return False
    if match.port is not None and match.port != port:
        return False
    if match.gateways:
        return "mesh" in match.gateways
    return not match.source_namespace or match.source_namespace == waypoint_namespace


def applies_to_port(virtual_services: Sequence[VirtualService], port: int, *, waypoint_namespace: str = "") -> bool:
    """Whether the VirtualServices program any route for `port`: then a request that
    matches none of them is answered 404 (Envoy's NR); otherwise the service's default
    route applies."""
    for vs in virtual_services:
        for route in vs.http:
            if not route.matches or any(_match_applies(m, port, waypoint_namespace) for m in route.matches):
                return True
    return False


def _header_value(request: RequestAttributes, name: str) -> str | None:
    """A header as Envoy's header matchers see it: pseudo-headers from the request line
    (HTTP/1.1's Host is :authority), a header that appears several times as its values
    joined with `,`."""
    if name.startswith(":"):
        return {":method": request.method, ":authority": request.authority, ":scheme": request.scheme,
                ":path": request.path}.get(name)
    values = [v for k, v in request.headers if k.lower() == name]
    if not values and name == "host" and request.authority:
        return request.authority
    return ",".join(values) if values else None


def _query_value(query: str, name: str) -> str | None:
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if unquote(key) == name:
            return unquote(value) if eq else ""
    return None


def _string_condition(m: StringMatch | None, value: str | None, *, ignore_case: bool = False) -> bool:
    if m is None:
        return True
    return value is not None and m.matches(value, ignore_case=ignore_case)


def match_request(match: HTTPMatch, request: RequestAttributes) -> bool:
    """One match block against a request: all its conditions hold."""
    path, _, query = request.path.partition("?")
    path = path.partition("#")[0]
    if match.uri is not None and not match.uri.matches(path, ignore_case=match.ignore_uri_case):
        return False
    if not _string_condition(match.method, request.method):
        return False
    if not _string_condition(match.authority, request.authority):
        return False
    if not _string_condition(match.scheme, request.scheme):
        return False
    for name, m in match.headers:
        value = _header_value(request, name)
        if value is None or not m.matches(value):
            return False
    for name, m in match.without_headers:
        value = _header_value(request, name)
        if m.kind is MatchKind.PRESENT:
            if value is not None:
                return False
        elif m.matches("" if value is None else value):   # a missing header reads as empty here
            return False
    for name, m in match.query_params:
        value = _query_value(query.partition("#")[0], name)
        if value is None or not m.matches(value):
            return False
    return True


def select_http_route(virtual_services: Sequence[VirtualService], request: RequestAttributes, *,
                      waypoint_namespace: str = "") -> SelectedRoute | None:
    """The first route, in list order across `virtual_services` (already in
    waypoint_virtual_services order) and within each, whose matches (OR'ed; none: every
    request) take the request. None: no route matches (see applies_to_port).

    Only the matches whose path condition can admit the request's path are tried, in
    the same order (RouteIndex); the answer is select_http_route_linear's."""
    index = route_index(virtual_services)
    path = request.path.partition("?")[0].partition("#")[0]
    entries = index.entries
    for position in index.candidates(path):
        vs, route, match = entries[position]
        if match is None:
            return SelectedRoute(vs, route, None)
        if _match_applies(match, request.port, waypoint_namespace) and match_request(match, request):
            return SelectedRoute(vs, route, match)
    return None


def select_http_route_linear(virtual_services: Sequence[VirtualService], request: RequestAttributes, *,
                             waypoint_namespace: str = "") -> SelectedRoute | None:
    """select_http_route trying every match in order: what the index must agree with."""
    for vs in virtual_services:
        for route in vs.http:
            if not route.matches:
                return SelectedRoute(vs, route, None)
            for match in route.matches:
                if _match_applies(match, request.port, waypoint_namespace) and match_request(match, request):
                    return SelectedRoute(vs, route, match)
    return None


@dataclass(frozen=True, slots=True)
class RouteIndex:
    """Every (VirtualService, route, match) in the order routes are tried (match None: a
    route without matches), with the positions of those whose `uri` is a regular
    expression kept by the pattern's literal prefix: a path that does not start with it
    cannot match, so such a match is tried only for paths that do. The rest are tried
    for every path. Positions merge back into list order, so the first match is the
    same as trying them all."""
    entries: tuple[tuple[VirtualService, HTTPRoute, HTTPMatch | None], ...]
    always: tuple[int, ...]
    regex: dict
    regex_lengths: tuple[int, ...]

    def candidates(self, path: str) -> Iterable[int]:
        if not self.regex:
            return self.always
        lists = [self.always] if self.always else []
        for length in self.regex_lengths:
            if length > len(path):
                break
            found = self.regex.get(path[:length])
            if found:
                lists.append(found)
        if len(lists) == 1:
            return lists[0]
        return heapq.merge(*lists)


def build_route_index(virtual_services: Sequence[VirtualService]) -> RouteIndex:
    entries, always, regex = [], [], {}
    for vs in virtual_services:
        for route in vs.http:
            for match in route.matches or (None,):
                position = len(entries)
                entries.append((vs, route, match))
                uri = match.uri if match is not None else None
                literal = literal_prefix(uri.pattern) if uri is not None and uri.kind is MatchKind.REGEX else ""
                if literal:
                    regex.setdefault(literal, []).append(position)
                else:
                    always.append(position)
    return RouteIndex(tuple(entries), tuple(always), {k: tuple(v) for k, v in regex.items()},
                      tuple(sorted({len(k) for k in regex})))


class VirtualServices(tuple):
    """The VirtualServices that apply to a service, in order, as a view answers them
    (istio_index.py keeps the answer per view): they carry their RouteIndex once
    built, so it lives and goes with them."""

    def route_index(self) -> RouteIndex:
        index = self.__dict__.get("_route_index")
        if index is None:
            index = self.__dict__["_route_index"] = build_route_index(self)
        return index


# other tuples' indexes, by identity, each with its tuple so the id is not reused while
# the entry lives
_BY_ID: dict[int, tuple[tuple, RouteIndex]] = {}
MAX_INDEXES = 64


def route_index(virtual_services: Sequence[VirtualService]) -> RouteIndex:
    """The index of `virtual_services`: built once for VirtualServices and kept for a few
    other tuples; built afresh for a list (it may change after it was indexed)."""
    if isinstance(virtual_services, VirtualServices):
        return virtual_services.route_index()
    if not isinstance(virtual_services, tuple):
        return build_route_index(virtual_services)
    found = _BY_ID.get(id(virtual_services))
    if found is not None and found[0] is virtual_services:
        return found[1]
    index = build_route_index(virtual_services)
    if len(_BY_ID) >= MAX_INDEXES:
        _BY_ID.clear()
    _BY_ID[id(virtual_services)] = (virtual_services, index)
    return index


# -- decisions on a selected route -------------------------------------------------------

def choose_destination(route: HTTPRoute, r: float) -> RouteDestination | None:
    """The destination a request goes to, given r in [0, 1). One destination takes all
    traffic whatever its weight; among several, weight 0 takes none and the others share
    by weight (Envoy's weighted clusters). None for a redirect or direct response."""
    if not route.route:
        return None
    if len(route.route) == 1:
        return route.route[0]
    weighted = [d for d in route.route if d.weight > 0]
    total = sum(d.weight for d in weighted)
    point = r * total
    for d in weighted:
        if point < d.weight:
            return d
        point -= d.weight
    return weighted[-1]


@dataclass(frozen=True, slots=True)
class FaultDecision:
    delay: float | None = None               # seconds to wait before going on
    http_status: int | None = None           # answer this instead of forwarding
    grpc_status: int | None = None           # or this gRPC status (HTTP 200, grpc-status trailer)

    @property
    def aborts(self) -> bool:
        return self.http_status is not None or self.grpc_status is not None


def _hit(percentage: float, r: float) -> bool:
    return r * 100.0 < percentage


def fault_decision(fault: Fault | None, delay_r: float, abort_r: float) -> FaultDecision:
    """Envoy's fault filter as istiod configures it: the delay and the abort are drawn
    independently (delay first, then abort), each for its percentage. A delay or abort
    written without a percentage has 0 % and injects nothing."""
    if fault is None:
        return FaultDecision()
    delay = fault.delay.fixed_delay if fault.delay and _hit(fault.delay.percentage, delay_r) else None
    abort = fault.abort if fault.abort and _hit(fault.abort.percentage, abort_r) else None
    if abort is None:
        return FaultDecision(delay)
    return FaultDecision(delay, abort.http_status, abort.grpc_code)


def mirrors_for(route: HTTPRoute, randoms: Sequence[float]) -> list[Mirror]:
    """The mirrors that get a copy of this request: one r in [0, 1) per mirror. A mirror
    written without a percentage gets every request."""
    return [m for m, r in zip(route.mirrors, randoms) if _hit(m.percentage, r)]
