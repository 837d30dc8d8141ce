"""Routes resolved against the mesh's services when a view is built, as istiod resolves
them when it converts them (so a service that arrives later fixes a route that named it):

    index = resolve_routes(routes, grants, services)
    index.routes                        # every route with its conditions, for /config_dump
    index.table(service_key, port, waypoint_namespace)   # RouteTable, or None

What istiod would only write in a route's status meshcore records the same way,
keeping the route:
- a parentRef that is not a Service (meshcore's routes attach to services only) or
  names a service that does not exist: Accepted=False, NoMatchingParent, for that
  parent; the route does not attach there;
- a backendRef to a service that does not exist (BackendNotFound), of a kind other than
  a Service (InvalidKind), or across namespaces without a ReferenceGrant when grants
  are enforced (RefNotPermitted): ResolvedRefs=False; the route attaches, and the share
  of requests that backend would have taken is answered 500;
- a filter istiod cannot apply (ExtensionRef, ExternalAuth, a per-backend filter other
  than a header modifier) or a header value with control characters (InvalidFilter),
  and a backend named by hostname instead of service name (InvalidDestination):
  ResolvedRefs=False and the route attaches nowhere (istiod converts none of it).

ReferenceGrant: istiod does not check grants for a route whose parent is a Service
(it converts mesh routes with grant enforcement off: any client could reach the
backend directly anyway), so meshcore, wire-compatible, does not either by default;
`enforce_grants=True` applies Gateway API's rule (a cross-namespace backend needs a
grant in the backend's namespace from the route's kind and namespace).

A route attached to a service in another namespace is a GAMMA "consumer" route. A
waypoint takes routes from the service's namespace and from its own (istiod's
getVirtualServiceForWaypoint): a consumer route applies only to a waypoint in the
route's namespace, where its matches come before the service's own routes (istiod
lists a proxy's own namespace's routes first: PushContext.VirtualServicesForGateway).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meshcore.state.model import Service
from meshcore.traffic.model import (
    BackendRef, Condition, ConditionType, FilterType, GRPCRoute, HeaderModifier, HTTPRoute, ParentRef, ParentStatus,
    Reason, ReferenceGrant, RequestMirror, ResolvedBackend, ResolvedRoute, ResolvedRule, RouteKind,
    UnsupportedFilter)
from meshcore.traffic.select import RouteTable, build_table

_HEADER_FILTERS = (FilterType.REQUEST_HEADER_MODIFIER, FilterType.RESPONSE_HEADER_MODIFIER)


@dataclass(frozen=True)
class RouteIndex:
    """Every route with what resolution found, and the route tables by service port."""
    routes: tuple[ResolvedRoute, ...] = ()
    # service key -> {(port or None, waypoint namespace or None): RouteTable}
    tables: dict = field(default_factory=dict)

    def table(self, service_key: str, port: int, waypoint_namespace: str | None = None) -> RouteTable | None:
        """The table for requests to `service_key` on `port` in a waypoint of
        `waypoint_namespace` (None: the service's own routes only); None: no route."""
        by_port = self.tables.get(service_key)
        if not by_port:
            return None
        for ns in ((waypoint_namespace, None) if waypoint_namespace else (None,)):
            found = by_port.get((port, ns)) or by_port.get((None, ns))
            if found is not None:
                return found
        return None


EMPTY_INDEX = RouteIndex()


class _Problem(Exception):
    """The route cannot be converted at all (istiod's hard errors)."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def resolve_routes(routes: Iterable[HTTPRoute | GRPCRoute], grants: Iterable[ReferenceGrant],
                   services: Iterable[Service], *, enforce_grants: bool = False) -> RouteIndex:
    by_name = {(s.namespace, s.name): s for s in services}
    grants = tuple(grants)
    resolved = []
    attached: dict[str, list[tuple[ResolvedRoute, int | None, str | None]]] = {}
    for route in sorted(routes, key=lambda r: (r.kind, r.key)):
        r = _resolve(route, by_name, grants, enforce_grants)
        resolved.append(r)
        if not r.rules:
            continue
        for status in r.parents:
            if status.accepted:
                parent = by_name[(status.parent.namespace, status.parent.name)]
                consumer = route.namespace if route.namespace != parent.namespace else None
                attached.setdefault(parent.key, []).append((r, status.parent.port, consumer))
    return RouteIndex(tuple(resolved), {key: _tables(items) for key, items in attached.items()})


def _tables(items: list[tuple[ResolvedRoute, int | None, str | None]]) -> dict:
    """Every (port, waypoint namespace) a lookup can ask for, each table built once."""
    ports = {None} | {port for _, port, _ in items if port is not None}
    namespaces = {None} | {ns for _, _, ns in items if ns is not None}
    out = {}
    for port in ports:
        def on(p):
            return p is None or p == port
        for ns in namespaces:
            own = [r for r, p, c in items if c is None and on(p)]
            consumer = [r for r, p, c in items if ns is not None and c == ns and on(p)]
            table = build_table([_distinct(consumer), _distinct(own)])
            if table:
                out[(port, ns)] = table
    return out


def _distinct(routes: list[ResolvedRoute]) -> list[ResolvedRoute]:
    """A route attached to the same port twice is in it once (two parentRefs with
    different sectionNames: port names, which meshcore's services do not have, so each
    attaches to every port, as istiod ignores sectionName for a Service parent)."""
    return list({r.key: r for r in routes}.values())


# -- one route -------------------------------------------------------------------------------

def _resolve(route, by_name: dict, grants: tuple, enforce_grants: bool) -> ResolvedRoute:
    parents = [(ref, _parent_condition(route, ref, by_name)) for ref in route.parent_refs]
    try:
        _check_filters(route)
        rules, problems = _rules(route, by_name, grants, enforce_grants)
    except _Problem as exc:
        rules, problems = (), [(exc.reason, exc.message)]
    if problems:
        refs = Condition(ConditionType.RESOLVED_REFS, False, problems[0][0], "; ".join(m for _, m in problems))
    else:
        refs = Condition(ConditionType.RESOLVED_REFS, True, Reason.RESOLVED_REFS, "All references resolved")
    statuses = []
    for ref, accepted in parents:
        conditions = [accepted, refs]
        service = by_name.get((ref.namespace, ref.name)) if ref.is_service else None
        if service is not None and service.waypoint is None:
            conditions.append(Condition(ConditionType.RESOLVED_WAYPOINTS, True, Reason.RESOLVED_WAYPOINTS,
                                        f"service {ref.namespace}/{ref.name} has no waypoint (no "
                                        "istio.io/use-waypoint label on it or its namespace): its traffic does "
                                        "not pass through a waypoint, where routes apply"))
        statuses.append(ParentStatus(ref, tuple(conditions)))
    return ResolvedRoute(route, tuple(statuses), rules)


def _parent_condition(route, ref: ParentRef, by_name: dict) -> Condition:
    if not ref.is_service:
        return Condition(ConditionType.ACCEPTED, False, Reason.NO_MATCHING_PARENT,
                         f"parent {ref.kind} {ref.namespace}/{ref.name} ({ref.group or 'core'}): meshcore attaches "
                         "routes to Services (kind: Service, group: \"\") only")
    service = by_name.get((ref.namespace, ref.name))
    if service is None:
        return Condition(ConditionType.ACCEPTED, False, Reason.NO_MATCHING_PARENT,
                         f"parent service: {ref.name!r} not found (in namespace {ref.namespace})")
    message = "Route was valid"
    if ref.namespace != route.namespace:
        message += (f"; a consumer route of namespace {route.namespace}: applies in a waypoint of that namespace "
                    "only")
    return Condition(ConditionType.ACCEPTED, True, Reason.ACCEPTED, message)


def _check_filters(route) -> None:
    for i, rule in enumerate(route.rules):
        for f in rule.filters:
            _check_filter(f, f"rule {i}")
        for j, backend in enumerate(rule.backend_refs):
            for f in backend.filters:
                _check_filter(f, f"rule {i} backend {j}")
                if f.type not in _HEADER_FILTERS:
                    raise _Problem(Reason.INVALID_FILTER, f"unsupported filter type {str(f.type)!r} on a backend "
                                                          f"({f'rule {i} backend {j}'}): only header modifiers")
            if "." in backend.name and backend.is_service:
                raise _Problem(Reason.INVALID_DESTINATION, f"service name invalid ({backend.name!r}, rule {i}); the "
                                                           "name of the Service must be used, not the hostname.")


def _check_filter(f, where: str) -> None:
    if isinstance(f, UnsupportedFilter):
        detail = f": {f.detail}" if f.detail else ""
        raise _Problem(Reason.INVALID_FILTER, f"unsupported filter type {str(f.type)!r} ({where}{detail})")
    if isinstance(f, HeaderModifier):
        for name, value in f.set + f.add:
            if any(c != "\t" and (c < " " or c == "\x7f") for c in value):
                raise _Problem(Reason.INVALID_FILTER, f"header {name!r} value contains invalid characters ({where})")


def _rules(route, by_name: dict, grants: tuple, enforce_grants: bool) -> tuple[tuple[ResolvedRule, ...], list]:
    problems: list[tuple[Reason, str]] = []
    rules = []
    for index, rule in enumerate(route.rules):
        backends = []
        if rule.redirect is None or any(b.weight for b in rule.backend_refs):
            for ref in rule.backend_refs:
                backend = _backend(route, ref, by_name, grants, enforce_grants) if ref.weight else ResolvedBackend(ref)
                if not backend.valid:
                    problems.append((backend.problem, backend.message))
                backends.append(backend)
        mirrors = []
        for f in rule.filters:
            if isinstance(f, RequestMirror):
                target = _backend(route, f.backend, by_name, grants, enforce_grants)
                if target.valid:
                    mirrors.append((f, target.service_key))
                elif route.kind is RouteKind.GRPC:
                    raise _Problem(target.problem, f"{target.message} (a mirror: the route is not converted)")
                else:
                    problems.append((target.problem, f"{target.message} (a mirror: not mirrored)"))
        rules.append(ResolvedRule(rule, index, tuple(backends), tuple(mirrors)))
    return tuple(rules), problems


def _backend(route, ref: BackendRef, by_name: dict, grants: tuple, enforce_grants: bool) -> ResolvedBackend:
    if not ref.is_service:
        return ResolvedBackend(ref, None, Reason.INVALID_KIND,
                               f"referencing unsupported backendRef: group {ref.group!r} kind {ref.kind!r}")
    if enforce_grants and ref.namespace != route.namespace and not any(
            g.namespace == ref.namespace and g.permits(str(route.kind), route.namespace, "Service", ref.name)
            for g in grants):
        return ResolvedBackend(ref, None, Reason.REF_NOT_PERMITTED,
                               f"backendRef {ref.name}/{ref.namespace} not accessible to a {route.kind} in namespace "
                               f"{route.namespace!r} (missing a ReferenceGrant?)")
    service = by_name.get((ref.namespace, ref.name))
    if service is None:
        return ResolvedBackend(ref, None, Reason.BACKEND_NOT_FOUND,
                               f"backend({ref.name}.{ref.namespace}) not found")
    return ResolvedBackend(ref, service.key)
