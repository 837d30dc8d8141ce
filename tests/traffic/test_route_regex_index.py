"""Regular-expression paths indexed by their literal prefix: the prefix is one every
full match starts with, and selection with the index chooses what trying every match in
order chooses, for Gateway API route tables and for VirtualServices."""
from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import given, settings, strategies as st

import meshcore.state  # noqa: F401  (first: traffic.resolve and the state package import each other)
from meshcore.traffic.istio_model import RequestAttributes
from meshcore.traffic.regex import literal_prefix
from meshcore.traffic.resolve import resolve_routes
from meshcore.traffic.select import http_match_matches, query_parameters, select_http
from meshcore.traffic.virtualservice import virtual_service
from meshcore.traffic.virtualservice_select import build_route_index, select_http_route, select_http_route_linear

from test_route_precedence import ECHO, KEY, T1, T2, route


@pytest.mark.parametrize("pattern, prefix", [
    ("/api/v[0-9]+/users", "/api/v"),
    ("^/api/v1/.*", "/api/v1/"),
    ("(/api)/v1", "/api/v1"),
    ("(?:/api)/v1/[a-z]+", "/api/v1/"),
    ("(/api)+/v1", ""),
    ("/ab*", "/a"),
    ("/ap?", "/a"),
    ("/a{2}", "/"),
    ("/a|/b", "/"),
    ("/api/(users|user)", "/api/user"),             # the parser moves a common start out of the branches
    (r"\/x\.y", "/x.y"),
    ("[/]x", "/x"),
    ("(?i)/api", ""),
    ("/a(?i:b)c", "/a"),
    (".*", ""),
    ("[a-z]+/x", ""),
    (r"/files/[0-9]+\.(png|jpg)", "/files/"),
])
def test_literal_prefix(pattern, prefix):
    assert literal_prefix(re.compile(pattern)) == prefix


_PATTERNS = ["/a.*", "/a/b/[0-9]+", "/a/b/.*", "/ab[c-e]", "(/a)+/b", "/a|/b", "(?i)/A.*", ".*", "/a/(b|bc)",
             "/b/[0-9]+/c", "/a/b", "^/a/b/c$", "/[ab]/b", "/a/b/c.*", "/x?/a"]
_PATHS = st.sampled_from(["/", "/a", "/A/b", "/a/", "/a/b", "/a/b/1", "/a/b/c", "/a/bc", "/abc", "/abz", "/b",
                          "/b/7/c", "/x/a", "/a/b/c/d", ""])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.one_of(
           st.sampled_from(_PATTERNS).map(lambda p: f"{{path: {{type: RegularExpression, value: '{p}'}}}}"),
           st.sampled_from(["{}", "{path: {value: /a}}", "{path: {type: Exact, value: /a/b}}", "{method: POST}",
                            "{path: {type: RegularExpression, value: '/a/b/.*'}, headers: [{name: x, value: '1'}]}"])),
           min_size=1, max_size=4), st.sampled_from([None, T1, T2])), min_size=1, max_size=8),
       _PATHS, st.sampled_from(["GET", "POST"]), st.sampled_from([{}, {"x": "1"}]))
def test_gateway_tables_choose_what_a_scan_would(specs, path, method, headers):
    routes = [route(f"r{i}", *matches, created=created) for i, (matches, created) in enumerate(specs)]
    table = resolve_routes(routes, (), [ECHO]).table(KEY, 80)
    parsed = query_parameters("")
    scanned = next((e for e in table.http if http_match_matches(e.match, method, path, parsed, headers)), None)
    assert select_http(table, method=method, path=path, query="", headers=headers) is scanned


_VS_MATCHES = st.one_of(
    st.sampled_from(_PATTERNS).map(lambda p: f"{{uri: {{regex: '{p}'}}}}"),
    st.sampled_from(_PATTERNS).map(lambda p: f"{{uri: {{regex: '{p}'}}, ignoreUriCase: true}}"),
    st.sampled_from(["{uri: {prefix: /a}}", "{uri: {exact: /a/b}}", "{method: {exact: POST}}",
                     "{uri: {regex: '/a/b/.*'}, headers: {x: {exact: '1'}}}",
                     "{uri: {prefix: /A}, ignoreUriCase: true}", "{uri: {regex: '/a.*'}, port: 81}"]))


def _vs(i: int, routes: list[list[str]]):
    http = [{"name": f"r{j}", **({"match": [yaml.safe_load(m) for m in matches]} if matches else {}),
             "route": [{"destination": {"host": "reviews"}}]} for j, matches in enumerate(routes)]
    return virtual_service({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                            "metadata": {"name": f"vs{i}", "namespace": "prod"},
                            "spec": {"hosts": ["reviews"], "http": http}})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.lists(_VS_MATCHES, max_size=3), min_size=1, max_size=4), min_size=1, max_size=3),
       _PATHS, st.sampled_from(["", "?q=1", "#f"]), st.sampled_from(["GET", "POST"]),
       st.sampled_from([(), (("x", "1"),)]), st.sampled_from([80, 81]))
def test_virtual_services_choose_what_trying_every_match_would(specs, path, suffix, method, headers, port):
    vss = tuple(_vs(i, routes) for i, routes in enumerate(specs))
    request = RequestAttributes(method, path + suffix, headers=headers, port=port)
    indexed = select_http_route(vss, request, waypoint_namespace="prod")
    linear = select_http_route_linear(vss, request, waypoint_namespace="prod")
    assert (indexed is None) == (linear is None)
    if indexed is not None:
        assert (indexed.virtual_service, indexed.route, indexed.match) == \
            (linear.virtual_service, linear.route, linear.match)
    assert select_http_route(list(vss), request, waypoint_namespace="prod") == indexed


def test_a_virtual_services_index_tries_only_patterns_the_path_starts_with():
    vss = (_vs(0, [[f"{{uri: {{regex: '/svc{i}/[0-9]+'}}}}"] for i in range(50)] + [[]]),)
    index = build_route_index(vss)
    assert len(index.entries) == 51 and index.always == (50,)            # the route without matches
    assert list(index.candidates("/svc7/12")) == [7, 50]
    assert list(index.candidates("/other")) == [50]
    assert select_http_route(vss, RequestAttributes("GET", "/svc42/9")).route.name == "r42"
    assert select_http_route(vss, RequestAttributes("GET", "/svc42/x")).route.name == "r50"


def test_a_views_virtual_services_carry_their_index():
    from meshcore.sources.config import load
    from meshcore.traffic.virtualservice_select import VirtualServices, route_index
    view = load(inline="""\
services:
- {name: reviews, namespace: prod, hostname: reviews.prod.svc.cluster.local, vips: ["/10.96.0.7"], ports: {80: 8080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews]
  http:
  - {name: v, match: [{uri: {regex: "/v[0-9]+/.*"}}], route: [{destination: {host: reviews}}]}
""")
    service = view.by_service_key["prod/reviews.prod.svc.cluster.local"]
    vss = view.virtual_services_for(service, "prod")
    assert isinstance(vss, VirtualServices) and vss is view.virtual_services_for(service, "prod")
    assert route_index(vss) is route_index(vss) and route_index(vss).regex == {"/v": (0,)}
