"""Precedence across every route attached to one service, one row per tie-break of the
Gateway API's list (HTTPRouteRule.matches): exact path, longest prefix, method, more
header matches, more query matches, oldest route, namespace/name, rule order; and the
same for GRPCRoute (service characters, method characters, header matches)."""
from __future__ import annotations

import ipaddress
import random

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from meshcore.state.model import Service
from meshcore.traffic.gateway_api import grpc_route, http_route
from meshcore.traffic.resolve import resolve_routes
from meshcore.traffic.select import (grpc_match_matches, http_match_matches, query_parameters, select_grpc,
                                     select_http)

ECHO = Service(name="echo", namespace="shop", hostname="echo.shop.svc.cluster.local",
               vips=(("", ipaddress.ip_address("10.96.0.1")),), ports=((80, 8080),))
KEY = ECHO.key


def route(name: str, *matches: str, created: str | None = None, ns: str = "shop", kind: str = "HTTPRoute",
          rules: list[str] | None = None):
    """A route whose rules each hold one of `matches` (YAML flow mappings), in order."""
    stamp = f", creationTimestamp: '{created}'" if created else ""
    rules = rules or [f"{{matches: [{m}]}}" for m in matches]
    text = (f"apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}"
            f"{stamp}}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: echo, namespace: shop}}]\n"
            f"  rules: [{', '.join(rules)}]\n")
    return (grpc_route if kind == "GRPCRoute" else http_route)(yaml.safe_load(text))


def chosen(routes, *, method="GET", path="/", query="", headers=None):
    table = resolve_routes(routes, (), [ECHO]).table(KEY, 80)
    entry = select_http(table, method=method, path=path, query=query, headers=headers or {})
    return (entry.route.route.name, entry.rule.index) if entry else None


T1, T2 = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"

HTTP_ROWS = [
    # (tie-break, routes, request, expected (route, rule))
    ("exact path over prefix",
     [route("a", "{path: {type: PathPrefix, value: /foo}}", created=T1),
      route("b", "{path: {type: Exact, value: /foo}}", created=T2)],
     dict(path="/foo"), ("b", 0)),
    ("exact path over a longer prefix that also matches",
     [route("a", "{path: {value: /foo/bar}}"), route("b", "{path: {type: Exact, value: /foo/bar}}")],
     dict(path="/foo/bar"), ("b", 0)),
    ("longer prefix first",
     [route("a", "{path: {value: /foo}}", created=T1), route("b", "{path: {value: /foo/bar}}", created=T2)],
     dict(path="/foo/bar/baz"), ("b", 0)),
    ("the prefix's trailing slash does not count",
     [route("a", "{path: {value: /foo/}}", created=T1), route("b", "{path: {value: /foo}}", created=T2)],
     dict(path="/foo/x"), ("a", 0)),
    ("prefix over a regular expression (Istio's ranking)",
     [route("a", "{path: {type: RegularExpression, value: '/foo/.*'}}", created=T1),
      route("b", "{path: {value: /foo}}", created=T2)],
     dict(path="/foo/x"), ("b", 0)),
    ("longer regular expression first",
     [route("a", "{path: {type: RegularExpression, value: '/.*'}}", created=T1),
      route("b", "{path: {type: RegularExpression, value: '/f[o]+/.*'}}", created=T2)],
     dict(path="/foo/x"), ("b", 0)),
    ("method match next",
     [route("a", "{path: {value: /foo}}", created=T1), route("b", "{path: {value: /foo}, method: GET}", created=T2)],
     dict(path="/foo"), ("b", 0)),
    ("a longer prefix beats a method",
     [route("a", "{path: {value: /foo/bar}}", created=T2), route("b", "{path: {value: /foo}, method: GET}",
                                                                 created=T1)],
     dict(path="/foo/bar"), ("a", 0)),
    ("more header matches next",
     [route("a", "{headers: [{name: x, value: '1'}]}", created=T1),
      route("b", "{headers: [{name: x, value: '1'}, {name: y, value: '2'}]}", created=T2)],
     dict(headers={"x": "1", "y": "2"}), ("b", 0)),
    ("a method beats more headers",
     [route("a", "{method: GET}", created=T2),
      route("b", "{headers: [{name: x, value: '1'}, {name: y, value: '2'}]}", created=T1)],
     dict(headers={"x": "1", "y": "2"}), ("a", 0)),
    ("more query matches next",
     [route("a", "{queryParams: [{name: q, value: '1'}]}", created=T1),
      route("b", "{queryParams: [{name: q, value: '1'}, {name: r, value: '2'}]}", created=T2)],
     dict(query="q=1&r=2"), ("b", 0)),
    ("more headers beat more query matches",
     [route("a", "{headers: [{name: x, value: '1'}]}", created=T2),
      route("b", "{queryParams: [{name: q, value: '1'}, {name: r, value: '2'}]}", created=T1)],
     dict(query="q=1&r=2", headers={"x": "1"}), ("a", 0)),
    ("then the oldest route",
     [route("a", "{path: {value: /foo}}", created=T2), route("b", "{path: {value: /foo}}", created=T1)],
     dict(path="/foo"), ("b", 0)),
    ("a dated route is older than one without a creationTimestamp",
     [route("a", "{path: {value: /foo}}"), route("b", "{path: {value: /foo}}", created=T2)],
     dict(path="/foo"), ("b", 0)),
    ("then namespace/name alphabetically",
     [route("beta", "{path: {value: /foo}}", created=T1), route("alpha", "{path: {value: /foo}}", created=T1)],
     dict(path="/foo"), ("alpha", 0)),
    ("then the first rule of the route",
     [route("a", "{path: {value: /foo}}", "{path: {value: /foo}}")],
     dict(path="/foo"), ("a", 0)),
    ("precedence is across rules, not rule order",
     [route("a", "{path: {value: /}}", "{path: {value: /foo}}")],
     dict(path="/foo"), ("a", 1)),
    ("and across routes, not route age",
     [route("a", "{path: {value: /}}", created=T1), route("b", "{path: {value: /foo}}", created=T2)],
     dict(path="/foo/x"), ("b", 0)),
    ("a more specific match that does not match gives way",
     [route("a", "{path: {value: /foo}, method: POST}"), route("b", "{path: {value: /foo}}")],
     dict(path="/foo", method="GET"), ("b", 0)),
    ("no match: 404", [route("a", "{path: {value: /foo}}")], dict(path="/bar"), None),
]


@pytest.mark.parametrize("routes,request_,expected", [r[1:] for r in HTTP_ROWS], ids=[r[0] for r in HTTP_ROWS])
def test_http_precedence(routes, request_, expected):
    assert chosen(routes, **request_) == expected
    assert chosen(list(reversed(routes)), **request_) == expected


def test_namespace_order_between_producer_and_consumer_routes():
    """A table holds the service's own routes and, for a waypoint of another namespace,
    that namespace's consumer routes as a block before them: within a block every route
    has the same namespace, so the namespace part of "namespace/name" never decides."""
    own = route("z", "{path: {value: /foo}}", ns="shop")
    consumer = route("a", "{path: {value: /foo}}", ns="front")
    index = resolve_routes([own, consumer], (), [ECHO])
    assert select_http(index.table(KEY, 80), method="GET", path="/foo", headers={}).route.route is own
    # in a waypoint of namespace front, its own routes come first
    assert select_http(index.table(KEY, 80, "front"), method="GET", path="/foo", headers={}).route.route is consumer
    assert select_http(index.table(KEY, 80, "front"), method="GET", path="/bar", headers={}) is None


def test_port_specific_routes_join_the_portless_ones_on_their_port_only():
    portless = route("a", "{path: {value: /}}")
    text = ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: b, namespace: shop}\n"
            "spec:\n  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]\n"
            "  rules: [{matches: [{path: {value: /foo}}]}]\n")
    on_80 = http_route(yaml.safe_load(text))
    index = resolve_routes([portless, on_80], (), [ECHO])
    assert select_http(index.table(KEY, 80), method="GET", path="/foo", headers={}).route.route is on_80
    assert select_http(index.table(KEY, 81), method="GET", path="/foo", headers={}).route.route is portless
    only = resolve_routes([on_80], (), [ECHO])
    assert only.table(KEY, 81) is None


GRPC_ROWS = [
    ("more service characters first",
     [route("a", "{method: {service: pkg.S}}", created=T1, kind="GRPCRoute"),
      route("b", "{method: {service: pkg.S, method: M}}", created=T2, kind="GRPCRoute")],
     ("pkg.S", "M", {}), ("b", 0)),
    ("a service beats a method alone",
     [route("a", "{method: {method: Method}}", created=T1, kind="GRPCRoute"),
      route("b", "{method: {service: pkg.S}}", created=T2, kind="GRPCRoute")],
     ("pkg.S", "Method", {}), ("b", 0)),
    ("longer service first",
     [route("a", "{method: {type: RegularExpression, service: 'pkg\\..*'}}", created=T1, kind="GRPCRoute"),
      route("b", "{method: {type: RegularExpression, service: 'pkg\\.S.*'}}", created=T2, kind="GRPCRoute")],
     ("pkg.Svc", "M", {}), ("b", 0)),
    ("more method characters next",
     [route("a", "{method: {service: pkg.S, type: RegularExpression, method: 'G.*'}}", created=T1, kind="GRPCRoute"),
      route("b", "{method: {service: pkg.S, type: RegularExpression, method: 'Get.*'}}", created=T2,
            kind="GRPCRoute")],
     ("pkg.S", "GetThing", {}), ("b", 0)),
    ("more header matches next",
     [route("a", "{method: {service: pkg.S}}", created=T1, kind="GRPCRoute"),
      route("b", "{method: {service: pkg.S}, headers: [{name: x, value: '1'}]}", created=T2, kind="GRPCRoute")],
     ("pkg.S", "M", {"x": "1"}), ("b", 0)),
    ("then the oldest route",
     [route("a", "{method: {service: pkg.S}}", created=T2, kind="GRPCRoute"),
      route("b", "{method: {service: pkg.S}}", created=T1, kind="GRPCRoute")],
     ("pkg.S", "M", {}), ("b", 0)),
    ("then namespace/name",
     [route("b", "{method: {service: pkg.S}}", kind="GRPCRoute"),
      route("a", "{method: {service: pkg.S}}", kind="GRPCRoute")],
     ("pkg.S", "M", {}), ("a", 0)),
    ("then rule order",
     [route("a", "{method: {service: pkg.S}}", "{method: {service: pkg.S}}", kind="GRPCRoute")],
     ("pkg.S", "M", {}), ("a", 0)),
    ("a rule without matches takes every call, last",
     [route("a", kind="GRPCRoute", rules=["{}", "{matches: [{method: {service: pkg.S}}]}"])],
     ("pkg.S", "M", {}), ("a", 1)),
]


@pytest.mark.parametrize("routes,call,expected", [r[1:] for r in GRPC_ROWS], ids=[r[0] for r in GRPC_ROWS])
def test_grpc_precedence(routes, call, expected):
    for ordered in (routes, list(reversed(routes))):
        table = resolve_routes(ordered, (), [ECHO]).table(KEY, 80)
        service, method, headers = call
        entry = select_grpc(table, service=service, method=method, headers=headers)
        assert (entry.route.route.name, entry.rule.index) == expected


# -- the order does not depend on the order routes were read in --------------------------------

_MATCHES = st.sampled_from([
    "{}", "{path: {value: /}}", "{path: {value: /a}}", "{path: {value: /a/b}}", "{path: {type: Exact, value: /a}}",
    "{path: {type: RegularExpression, value: '/a.*'}}", "{method: GET}", "{path: {value: /a}, method: POST}",
    "{headers: [{name: x, value: '1'}]}", "{headers: [{name: x, value: '1'}, {name: y, value: '2'}]}",
    "{queryParams: [{name: q, value: '1'}]}", "{path: {value: /a}, headers: [{name: x, value: '1'}]}"])
_ROUTES = st.lists(st.tuples(st.lists(_MATCHES, min_size=1, max_size=4), st.sampled_from([None, T1, T2])),
                   min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(_ROUTES, st.randoms(use_true_random=False))
def test_table_order_is_independent_of_the_order_routes_arrive(specs, rnd):
    routes = [route(f"r{i}", *matches, created=created) for i, (matches, created) in enumerate(specs)]
    shuffled = routes[:]
    rnd.shuffle(shuffled)

    def order(rs):
        table = resolve_routes(rs, (), [ECHO]).table(KEY, 80)
        return [(e.route.key, e.rule.index, e.match_index) for e in table.http]
    assert order(routes) == order(shuffled)


def test_selection_agrees_with_a_brute_force_reading_of_the_spec():
    """Every matching entry, ranked by the spec's list directly: the first is chosen."""
    rnd = random.Random(7)
    pool = ["/", "/a", "/a/b", "/ab", "/a/b/c"]
    for _ in range(200):
        routes = [route(f"r{i}", *[f"{{path: {{type: {rnd.choice(['Exact', 'PathPrefix'])}, "
                                  f"value: {rnd.choice(pool)}}}{', method: GET' if rnd.random() < .3 else ''}}}"
                                  for _ in range(rnd.randint(1, 3))], created=rnd.choice([None, T1, T2]))
                  for i in range(rnd.randint(1, 4))]
        path = rnd.choice(pool + ["/a/", "/b"])
        got = chosen(routes, path=path)
        candidates = []
        for r in routes:
            for rule_index, rule in enumerate(r.rules):
                m = rule.matches[0]
                value = m.path.value
                ok = path == value if m.path.type == "Exact" else (
                    value == "/" or path == value or path.startswith(value + "/"))
                if ok:
                    created = r.created.timestamp() if r.created else 0.0
                    candidates.append(((m.path.type != "Exact", -len(value), m.method is None,
                                        r.created is None, created, r.name, rule_index), (r.name, rule_index)))
        candidates.sort()
        assert got == (candidates[0][1] if candidates else None)


_PATHS = st.sampled_from(["/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/b", "/a/bc"])


@settings(max_examples=60, deadline=None)
@given(_ROUTES, _PATHS, st.sampled_from(["GET", "POST"]), st.sampled_from(["", "q=1", "q=2"]),
       st.sampled_from([{}, {"x": "1"}, {"x": "1", "y": "2"}]))
def test_the_indexed_table_chooses_what_a_scan_of_every_entry_would(specs, path, method, query, headers):
    routes = [route(f"r{i}", *matches, created=created) for i, (matches, created) in enumerate(specs)]
    table = resolve_routes(routes, (), [ECHO]).table(KEY, 80)
    parsed = query_parameters(query)
    scanned = next((e for e in table.http if http_match_matches(e.match, method, path, parsed, headers)), None)
    assert select_http(table, method=method, path=path, query=query, headers=headers) is scanned


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["{}", "{method: {service: a.S}}", "{method: {service: a.S, method: M}}",
                                 "{method: {method: M}}", "{method: {service: b.S}}",
                                 "{method: {type: RegularExpression, service: 'a\\..*'}}",
                                 "{method: {service: a.S}, headers: [{name: x, value: '1'}]}"]), min_size=1, max_size=5),
       st.sampled_from(["a.S", "b.S", "a.T"]), st.sampled_from(["M", "N"]), st.sampled_from([{}, {"x": "1"}]))
def test_the_indexed_grpc_table_chooses_what_a_scan_would(matches, service, method, headers):
    table = resolve_routes([route("g", *matches, kind="GRPCRoute")], (), [ECHO]).table(KEY, 80)
    scanned = next((e for e in table.grpc if grpc_match_matches(e.match, service, method, headers)), None)
    assert select_grpc(table, service=service, method=method, headers=headers) is scanned
