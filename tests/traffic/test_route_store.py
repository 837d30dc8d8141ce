"""Routes in the mesh store: resolved when a view is built, so a service arriving later
fixes a route that named it; removed cleanly; tables built once per change."""
from __future__ import annotations

import ipaddress
import textwrap
from dataclasses import replace as replace_fields

import yaml
from hypothesis import given, settings, strategies as st

from meshcore.sources.config import load
from meshcore.state import Kind, MeshStore, Remove, Service, Upsert, Workload
from meshcore.traffic.gateway_api import http_route, reference_grant
from meshcore.traffic.model import ConditionType, Reason, RouteKind
from meshcore.traffic.resolve import EMPTY_INDEX, resolve_routes
from meshcore.traffic.select import select_http

ECHO_KEY = "shop/echo.shop.svc.cluster.local"


def svc(name: str, vip: str) -> Service:
    return Service(name=name, namespace="shop", hostname=f"{name}.shop.svc.cluster.local",
                   vips=(("", ipaddress.ip_address(vip)),), ports=((80, 8080),))


ECHO, V1 = svc("echo", "10.96.0.1"), svc("v1", "10.96.0.2")

ROUTE = http_route(yaml.safe_load(textwrap.dedent("""\
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: r, namespace: shop}
    spec:
      parentRefs: [{group: "", kind: Service, name: echo}]
      rules:
      - matches: [{path: {value: /v1}}]
        backendRefs: [{name: v1, port: 80}]
    """)))


def condition(view, kind: ConditionType):
    (resolved,) = view.routes
    return next(c for c in resolved.parents[0].conditions if c.type is kind)


def test_a_route_resolves_when_its_services_arrive_later():
    store = MeshStore()
    store.apply("files", [Upsert(ROUTE)])
    assert condition(store.view, ConditionType.ACCEPTED).reason is Reason.NO_MATCHING_PARENT
    assert store.view.route_table(ECHO_KEY, 80) is None

    store.apply("files", [Upsert(ECHO)])
    assert condition(store.view, ConditionType.ACCEPTED).status
    assert condition(store.view, ConditionType.RESOLVED_REFS).reason is Reason.BACKEND_NOT_FOUND
    entry = select_http(store.view.route_table(ECHO_KEY, 80), method="GET", path="/v1", headers={})
    assert not entry.rule.backends[0].valid

    store.apply("files", [Upsert(V1)])
    assert condition(store.view, ConditionType.RESOLVED_REFS).status
    entry = select_http(store.view.route_table(ECHO_KEY, 80), method="GET", path="/v1", headers={})
    assert entry.rule.backends[0].service_key == V1.key


def test_removing_the_parent_service_detaches_the_route_and_removing_the_route_empties_the_index():
    store = MeshStore()
    store.apply("files", [Upsert(ECHO), Upsert(V1), Upsert(ROUTE)])
    before = store.view
    assert before.route_table(ECHO_KEY, 80) is not None

    store.apply("files", [Remove(Kind.SERVICE, ECHO.key)])
    assert store.view.route_table(ECHO_KEY, 80) is None
    assert condition(store.view, ConditionType.ACCEPTED).reason is Reason.NO_MATCHING_PARENT
    assert before.route_table(ECHO_KEY, 80) is not None          # a view handed out never changes

    applied = store.apply("files", [Remove(Kind.HTTP_ROUTE, ROUTE.key)])
    assert applied.keys(Kind.HTTP_ROUTE) == {ROUTE.key}
    assert store.view.routes == () and store.view.routing is EMPTY_INDEX


def test_a_change_resolves_only_the_routes_it_touches():
    store = MeshStore()
    other = svc("other", "10.96.0.9")
    on_other = http_route(yaml.safe_load(textwrap.dedent("""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: o, namespace: shop}
        spec: {parentRefs: [{group: "", kind: Service, name: other}]}
        """)))
    store.apply("files", [Upsert(ECHO), Upsert(V1), Upsert(other), Upsert(ROUTE), Upsert(on_other)])
    index = store.view.routing
    workload = Workload(uid="w", name="w", namespace="shop", ips=(ipaddress.ip_address("10.0.0.5"),))
    store.apply("files", [Upsert(workload)])
    assert store.view.routing is index
    store.apply("files", [Upsert(ROUTE)])                        # the same route again: no change
    assert store.view.routing is index
    store.apply("files", [Upsert(svc("v2", "10.96.0.3"))])       # a service no route names
    assert store.view.routing is index

    # a service a route names: that route resolved again, the other route's table kept
    store.apply("files", [Upsert(replace_fields(V1, ports=((80, 9090),)))])
    after = store.view.routing
    assert after is not index
    assert after.resolved[(RouteKind.HTTP, "shop/o")] is index.resolved[(RouteKind.HTTP, "shop/o")]
    assert after.tables[other.key] is index.tables[other.key]
    assert after.resolved[(RouteKind.HTTP, ROUTE.key)] is not index.resolved[(RouteKind.HTTP, ROUTE.key)]


def test_a_renamed_parent_moves_the_route_to_the_new_service_key():
    store = MeshStore()
    store.apply("files", [Upsert(ECHO), Upsert(ROUTE)])
    moved = replace_fields(ECHO, hostname="echo.example", vips=(("", ipaddress.ip_address("10.96.0.7")),))
    store.apply("files", [Remove(Kind.SERVICE, ECHO.key), Upsert(moved)])
    assert store.view.route_table(ECHO_KEY, 80) is None
    assert store.view.route_table(moved.key, 80) is not None


def test_subscribers_hear_of_route_changes_and_replace_diffs_them():
    store = MeshStore()
    heard = []
    store.subscribe(lambda change: heard.append(dict(change.changed)), (Kind.HTTP_ROUTE, Kind.REFERENCE_GRANT))
    grant = reference_grant(yaml.safe_load(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: back}\n"
        "spec: {from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}], "
        "to: [{group: '', kind: Service}]}\n"))
    store.replace("files", [ECHO, ROUTE, grant], atomic=True)
    assert heard == [{Kind.SERVICE: {ECHO.key}, Kind.HTTP_ROUTE: {ROUTE.key}, Kind.REFERENCE_GRANT: {grant.key}}]
    assert store.view.reference_grants == (grant,)
    store.replace("files", [ECHO], atomic=True)
    assert heard[-1] == {Kind.HTTP_ROUTE: {ROUTE.key}, Kind.REFERENCE_GRANT: {grant.key}}
    assert store.view.routes == () and store.view.reference_grants == ()


def test_another_source_cannot_replace_a_route():
    store = MeshStore()
    store.apply("files", [Upsert(ROUTE)])
    applied = store.apply("xds", [Upsert(ROUTE)])
    assert [str(r) for r in applied.rejected] == ["HTTPRoute shop/r: owned by source files"]


def test_configuration_files_carry_routes_into_the_view():
    view = load(inline=textwrap.dedent("""\
        services:
        - {name: echo, namespace: shop, hostname: echo.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080}}
        - {name: v1, namespace: shop, hostname: v1.shop.svc.cluster.local, vips: ["/10.96.0.2"], ports: {80: 8080}}
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: g, namespace: shop}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
          rules: [{matches: [{method: {service: pkg.Echo}}], backendRefs: [{name: v1, port: 80}]}]
        ---
        apiVersion: gateway.networking.k8s.io/v1beta1
        kind: HTTPRoute
        metadata: {name: h, namespace: shop}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo}]
        """))
    assert [r.key for r in view.routes] == ["shop/g", "shop/h"]
    table = view.route_table(ECHO_KEY, 80)
    assert [e.route.key for e in table.grpc] == ["shop/g"] and [e.route.key for e in table.http] == ["shop/h"]
    assert view.route_table(ECHO_KEY, 8080).grpc == ()
    # the route without rules takes every request, and with no backend answers 500
    assert select_http(table, method="GET", path="/x", headers={}).rule.answers_500


# -- incremental resolution agrees with resolving everything afresh ---------------------------

def _pool_route(name: str, parent: str, backend: str, port: str = "") -> object:
    port = f", port: {port}" if port else ""
    return http_route(yaml.safe_load(
        f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\n"
        f"spec:\n  parentRefs: [{{group: '', kind: Service, name: {parent}{port}}}]\n"
        f"  rules: [{{matches: [{{path: {{value: /{name}}}}}], backendRefs: [{{name: {backend}, port: 80}}]}}]\n"))


ROUTE_POOL = [_pool_route("a", "echo", "v1"), _pool_route("a", "v1", "echo", "80"), _pool_route("b", "echo", "v2"),
              _pool_route("c", "v2", "nope"), _pool_route("d", "echo", "v1", "80")]
SERVICE_POOL = [ECHO, V1, svc("v2", "10.96.0.3"), replace_fields(ECHO, hostname="echo.example"),
                replace_fields(V1, ports=((80, 9090),))]


_UPSERT = st.sampled_from(ROUTE_POOL + SERVICE_POOL).map(lambda r: ("put", r))
_REMOVE = st.sampled_from([(Kind.HTTP_ROUTE, f"shop/{k}") for k in "abcd"] + [(Kind.SERVICE, s.key)
                                                                              for s in SERVICE_POOL])
_STEPS = st.lists(st.lists(st.one_of(_UPSERT, _REMOVE.map(lambda r: ("remove", r))), min_size=1, max_size=4),
                  min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(_STEPS)
def test_incremental_resolution_agrees_with_a_fresh_one(steps):
    store = MeshStore()
    for step in steps:
        changes = {}
        for op, what in step:
            if op == "put":
                change = Upsert(what)
                changes.setdefault((change.kind, change.key), change)
            else:
                changes.setdefault(what, Remove(*what))
        store.apply("files", list(changes.values()))
        view = store.view
        fresh = resolve_routes([*view.http_route_by_key.values(), *view.grpc_route_by_key.values()],
                               view.grant_by_key.values(), view.by_service_key.values())
        assert view.routing.routes == fresh.routes
        assert view.routing.tables == fresh.tables
