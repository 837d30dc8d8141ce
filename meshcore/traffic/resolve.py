"""Routes resolved against the mesh's services when a view is built, as istiod resolves
them when it converts them (so a service that arrives later fixes a route that named it):

    index = resolve_routes(routes, grants, services)
    index = update_routes(index, http_routes, grpc_routes, grants, service_named,
                          changed_routes, changed_names)     # what the store calls per change
    index.routes                        # every route with its conditions, for /config_dump
    index.table(service_key, port, waypoint_namespace)   # RouteTable, or None

A change costs what it touches: the routes it changed and those naming a service it
changed are resolved again, and only the tables of the services they attach to are
sorted again; everything else is shared with the index before.

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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshcore.state.model import Service
from meshcore.traffic.model import (
    BackendRef, Condition, ConditionType, FilterType, GRPCRoute, HeaderModifier, HTTPRoute, ParentRef, ParentStatus,
    Reason, ReferenceGrant, RequestMirror, ResolvedBackend, ResolvedRoute, ResolvedRule, RouteKind,
    UnsupportedFilter)
from meshcore.traffic.select import RouteTable, build_table

_HEADER_FILTERS = (FilterType.REQUEST_HEADER_MODIFIER, FilterType.RESPONSE_HEADER_MODIFIER)


# (the route, the port its parentRef names or None, the route's namespace if it is a
# consumer route of the service or None)
Attachment = tuple[ResolvedRoute, "int | None", "str | None"]
RouteId = tuple[RouteKind, str]                 # (kind, namespace/name)


@dataclass(frozen=True)
class RouteIndex:
    """Every route with what resolution found, and the route tables by service port.
    Never changed once built: update_routes makes the next one, sharing what a change
    did not touch."""
    resolved: dict = field(default_factory=dict)       # RouteId -> ResolvedRoute
    # service key -> {(port or None, waypoint namespace or None): RouteTable}
    tables: dict = field(default_factory=dict)
    attached: dict = field(default_factory=dict)       # service key -> (Attachment, ...)
    where: dict = field(default_factory=dict)          # RouteId -> frozenset of the service keys it attaches to
    # (namespace, name) of a service -> the RouteIds naming it (parent, backend, mirror)
    naming: dict = field(default_factory=dict)

    @property
    def routes(self) -> tuple[ResolvedRoute, ...]:
        return tuple(self.resolved[i] for i in sorted(self.resolved))

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
    """Every route resolved afresh."""
    routes = list(routes)
    by_name: dict = {}
    for s in sorted(services, key=lambda s: s.key, reverse=True):
        by_name[(s.namespace, s.name)] = s           # of several with the name, the first by key
    return update_routes(EMPTY_INDEX, {r.key: r for r in routes if r.kind is RouteKind.HTTP},
                         {r.key: r for r in routes if r.kind is RouteKind.GRPC}, grants, by_name.get, None, (),
                         enforce_grants=enforce_grants)


def update_routes(previous: RouteIndex, http_routes: Mapping, grpc_routes: Mapping, grants: Iterable[ReferenceGrant],
                  service_named: Callable[[tuple[str, str]], Service | None], changed_routes: Iterable | None,
                  changed_names: Iterable[tuple[str, str]], *, enforce_grants: bool = False) -> RouteIndex:
    """The index after a change. `http_routes`, `grpc_routes`: every route in force by
    namespace/name; `service_named((namespace, name))` finds a service. Only the routes
    in `changed_routes` (RouteIds; None: all) or naming a service in `changed_names`
    are resolved again, and only the tables of the services they attach to (or did)
    are rebuilt."""
    by_kind = {RouteKind.HTTP: http_routes, RouteKind.GRPC: grpc_routes}
    if changed_routes is None:
        todo = {(kind, key) for kind, routes in by_kind.items() for key in routes} | set(previous.resolved)
    else:
        todo = set(changed_routes)
    for name in changed_names:
        todo |= previous.naming.get(name, frozenset())
    if not todo:
        return previous
    grants = tuple(grants)
    resolved, naming, where = dict(previous.resolved), dict(previous.naming), dict(previous.where)
    touched: set[str] = set()                          # service keys whose tables change
    fresh: dict[str, list[Attachment]] = {}
    for ident in todo:
        old = resolved.pop(ident, None)
        if old is not None:
            touched |= where.pop(ident, frozenset())
            for name in _names(old.route):
                naming[name] = naming[name] - {ident}
                if not naming[name]:
                    del naming[name]
        route = by_kind[ident[0]].get(ident[1])
        if route is None:
            continue
        r = _resolve(route, service_named, grants, enforce_grants)
        resolved[ident] = r
        for name in _names(route):
            naming[name] = naming.get(name, frozenset()) | {ident}
        keys = set()
        for key, attachment in _attachments(r, service_named):
            keys.add(key)
            fresh.setdefault(key, []).append(attachment)
        if keys:
            where[ident] = frozenset(keys)
            touched |= keys
    attached, tables = dict(previous.attached), dict(previous.tables)
    for key in touched:
        items = [a for a in attached.get(key, ()) if (a[0].kind, a[0].key) not in todo] + fresh.get(key, [])
        if items:
            attached[key] = tuple(items)
            tables[key] = _tables(items)
        else:
            attached.pop(key, None)
            tables.pop(key, None)
    return RouteIndex(resolved, tables, attached, where, naming) if resolved else EMPTY_INDEX


def _attachments(r: ResolvedRoute, service_named) -> list[tuple[str, Attachment]]:
    """(service key, attachment) for each parent the route attaches to."""
    out = []
    if not r.rules:
        return out
    for status in r.parents:
        if status.accepted:
            parent = service_named((status.parent.namespace, status.parent.name))
            consumer = r.route.namespace if r.route.namespace != parent.namespace else None
            out.append((parent.key, (r, status.parent.port, consumer)))
    return out


def _names(route) -> set[tuple[str, str]]:
    """The (namespace, name) of every service a route names."""
    names = {(p.namespace, p.name) for p in route.parent_refs if p.is_service}
    for rule in route.rules:
        names |= {(b.namespace, b.name) for b in rule.backend_refs if b.is_service}
        names |= {(f.backend.namespace, f.backend.name) for f in rule.filters if isinstance(f, RequestMirror)}
    return names


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

def _resolve(route, service_named, grants: tuple, enforce_grants: bool) -> ResolvedRoute:
    parents = [(ref, _parent_condition(route, ref, service_named)) for ref in route.parent_refs]
    try:
        _check_filters(route)
        rules, problems = _rules(route, service_named, grants, enforce_grants)
    except _Problem as exc:
        rules, problems = (), [(exc.reason, exc.message)]
    if problems:
        refs = Condition(ConditionType.RESOLVED_REFS, False, problems[0][0], "; ".join(m for _, m in problems))
    else:
        refs = Condition(ConditionType.RESOLVED_REFS, True, Reason.RESOLVED_REFS, "All references resolved")
    statuses = []
    for ref, accepted in parents:
        conditions = [accepted, refs]
        service = service_named((ref.namespace, ref.name)) if ref.is_service else None
        if service is not None and service.waypoint is None:
            conditions.append(Condition(ConditionType.RESOLVED_WAYPOINTS, True, Reason.RESOLVED_WAYPOINTS,
                                        f"service {ref.namespace}/{ref.name} has no waypoint (no "
                                        "istio.io/use-waypoint label on it or its namespace): its traffic does "
                                        "not pass through a waypoint, where routes apply"))
        statuses.append(ParentStatus(ref, tuple(conditions)))
    return ResolvedRoute(route, tuple(statuses), rules)


def _parent_condition(route, ref: ParentRef, service_named) -> Condition:
    if not ref.is_service:
        return Condition(ConditionType.ACCEPTED, False, Reason.NO_MATCHING_PARENT,
                         f"parent {ref.kind} {ref.namespace}/{ref.name} ({ref.group or 'core'}): meshcore attaches "
                         "routes to Services (kind: Service, group: \"\") only")
    service = service_named((ref.namespace, ref.name))
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


def _rules(route, service_named, grants: tuple, enforce_grants: bool) -> tuple[tuple[ResolvedRule, ...], list]:
    problems: list[tuple[Reason, str]] = []
    rules = []
    for index, rule in enumerate(route.rules):
        backends = []
        if rule.redirect is None or any(b.weight for b in rule.backend_refs):
            for ref in rule.backend_refs:
                backend = _backend(route, ref, service_named, grants, enforce_grants) if ref.weight else ResolvedBackend(ref)
                if not backend.valid:
                    problems.append((backend.problem, backend.message))
                backends.append(backend)
        mirrors = []
        for f in rule.filters:
            if isinstance(f, RequestMirror):
                target = _backend(route, f.backend, service_named, grants, enforce_grants)
                if target.valid:
                    mirrors.append((f, target.service_key))
                elif route.kind is RouteKind.GRPC:
                    raise _Problem(target.problem, f"{target.message} (a mirror: the route is not converted)")
                else:
                    problems.append((target.problem, f"{target.message} (a mirror: not mirrored)"))
        rules.append(ResolvedRule(rule, index, tuple(backends), tuple(mirrors)))
    return tuple(rules), problems


def _backend(route, ref: BackendRef, service_named, grants: tuple, enforce_grants: bool) -> ResolvedBackend:
    if not ref.is_service:
        return ResolvedBackend(ref, None, Reason.INVALID_KIND,
                               f"referencing unsupported backendRef: group {ref.group!r} kind {ref.kind!r}")
    if enforce_grants and ref.namespace != route.namespace and not any(
            g.namespace == ref.namespace and g.permits(str(route.kind), route.namespace, "Service", ref.name)
            for g in grants):
        return ResolvedBackend(ref, None, Reason.REF_NOT_PERMITTED,
                               f"backendRef {ref.name}/{ref.namespace} not accessible to a {route.kind} in namespace "
                               f"{route.namespace!r} (missing a ReferenceGrant?)")
    service = service_named((ref.namespace, ref.name))
    if service is None:
        return ResolvedBackend(ref, None, Reason.BACKEND_NOT_FOUND,
                               f"backend({ref.name}.{ref.namespace}) not found")
    return ResolvedBackend(ref, service.key)
