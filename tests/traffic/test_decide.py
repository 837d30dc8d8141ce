"""The waypoint's decision for one request, from routes written as users write them:
which backend, which path and host, which header edits, which local answer."""
from __future__ import annotations

import textwrap

import pytest

from meshcore.sources.config import load
from meshcore.traffic.decide import (Forward, HeaderEdits, LocalReply, RequestView, decide, replace_prefix)

SERVICES = """\
services:
- {name: echo, namespace: shop, hostname: echo.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080}}
- {name: v1, namespace: shop, hostname: v1.shop.svc.cluster.local, vips: ["/10.96.0.2"], ports: {80: 8080, 81: 8081}}
- {name: v2, namespace: shop, hostname: v2.shop.svc.cluster.local, vips: ["/10.96.0.3"], ports: {80: 8080}}
"""
HEAD = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
"""


def view_with(rules: str):
    return load(inline=SERVICES + "---\n" + HEAD + textwrap.indent(textwrap.dedent(rules), "  "))


def request(path="/", *, method="GET", query="", authority="echo.shop:80", headers=None, grpc=False):
    return RequestView(method, path, query, authority, headers or {}, grpc=grpc)


def decide_on(rules: str, req: RequestView, r: float = 0.0, port: int = 80):
    view = view_with(rules)
    return decide(view, view.by_service_key["shop/echo.shop.svc.cluster.local"], port, req, r)


def test_a_service_without_routes_is_not_decided_on():
    view = load(inline=SERVICES)
    assert decide(view, view.by_service_key["shop/echo.shop.svc.cluster.local"], 80, request(), 0.0) is None


def test_a_request_no_rule_matches_gets_404_no_route():
    got = decide_on("- matches: [{path: {type: Exact, value: /only}}]\n  backendRefs: [{name: v1, port: 80}]\n",
                    request("/other"))
    assert isinstance(got, LocalReply) and (got.status, got.flag) == (404, "NR")


@pytest.mark.parametrize("r, expected", [(0.0, "v1"), (0.24, "v1"), (0.25, "v2"), (0.99, "v2")])
def test_weights_split_requests_between_backends(r, expected):
    got = decide_on("- backendRefs: [{name: v1, port: 80, weight: 1}, {name: v2, port: 80, weight: 3}]\n",
                    request("/x"), r)
    assert isinstance(got, Forward) and got.service_key == f"shop/{expected}.shop.svc.cluster.local"
    assert (got.port, got.target, got.route) == (80, "/x", "shop.r.0")


@pytest.mark.parametrize("rules, why", [
    ("- backendRefs: [{name: v1, port: 80, weight: 0}]\n", "no backend carries weight"),
    ("- backendRefs: [{name: missing, port: 80}]\n", "missing"),
])
def test_a_rule_without_a_usable_backend_answers_500(rules, why):
    got = decide_on(rules, request("/x"))
    assert isinstance(got, LocalReply) and got.status == 500 and why in got.reason


def test_the_500_for_a_backend_that_does_not_exist_carries_the_rules_response_headers():
    # Envoy's router answers through the route entry, which adds its response headers
    got = decide_on("- filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-rule, "
                    "value: r0}]}}]\n  backendRefs: [{name: missing, port: 80, filters: [{type: "
                    "ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-backend, value: b}]}}]}]\n",
                    request("/x"))
    assert isinstance(got, LocalReply) and (got.status, got.flag) == (500, "UH")
    assert got.response_headers.apply([("x-rule", "old")]) == [("x-rule", "r0"), ("x-backend", "b")]


def test_the_backend_port_defaults_to_the_request_port_only_where_the_route_names_none():
    got = decide_on("- backendRefs: [{name: v1, port: 81}]\n", request("/"))
    assert got.port == 81


@pytest.mark.parametrize("path, modifier, expected", [
    ("/foo/bar", "{type: ReplacePrefixMatch, replacePrefixMatch: /xyz}", "/xyz/bar"),
    ("/foo", "{type: ReplacePrefixMatch, replacePrefixMatch: /xyz}", "/xyz"),
    ("/foo/", "{type: ReplacePrefixMatch, replacePrefixMatch: /xyz}", "/xyz/"),
    ("/foo/bar", "{type: ReplacePrefixMatch, replacePrefixMatch: /}", "/bar"),
    ("/foo", "{type: ReplacePrefixMatch, replacePrefixMatch: /}", "/"),
    ("/foo/bar", "{type: ReplacePrefixMatch, replacePrefixMatch: /xyz/}", "/xyz/bar"),
    ("/foo/bar", "{type: ReplaceFullPath, replaceFullPath: /one}", "/one"),
])
def test_url_rewrite_of_the_path_keeps_the_query(path, modifier, expected):
    rules = f"""\
    - matches: [{{path: {{type: PathPrefix, value: /foo}}}}]
      filters: [{{type: URLRewrite, urlRewrite: {{hostname: v1.example, path: {modifier}}}}}]
      backendRefs: [{{name: v1, port: 80}}]
    """
    got = decide_on(rules, request(path, query="a=1"))
    assert (got.target, got.authority) == (f"{expected}?a=1", "v1.example")


@pytest.mark.parametrize("prefix, replacement, path, expected", [
    ("/", "/xyz", "/foo", "/xyz/foo"), ("/", "/", "/foo", "/foo"), ("/foo/", "/bar", "/foo/x", "/bar/x"),
])
def test_prefix_replacement_on_segment_boundaries(prefix, replacement, path, expected):
    assert replace_prefix(path, prefix, replacement) == expected


@pytest.mark.parametrize("redirect, expected_status, location", [
    ("{}", 302, "http://echo.shop/a?q=1"),                                   # the service port (80) is not written
    ("{statusCode: 301, hostname: other.example}", 301, "http://other.example/a?q=1"),
    ("{scheme: https}", 302, "https://echo.shop/a?q=1"),                     # the scheme's port: not written
    ("{scheme: https, port: 8443}", 302, "https://echo.shop:8443/a?q=1"),
    ("{port: 8080}", 302, "http://echo.shop:8080/a?q=1"),
    ("{path: {type: ReplaceFullPath, replaceFullPath: /b}}", 302, "http://echo.shop/b?q=1"),
])
def test_redirects_fill_in_what_the_filter_leaves_out_from_the_request(redirect, expected_status, location):
    rules = f"- filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
    got = decide_on(rules, request("/a", query="q=1", authority="echo.shop"))
    assert isinstance(got, LocalReply) and got.status == expected_status
    assert dict(got.headers)["location"] == location


def test_header_modifiers_of_the_rule_and_of_the_backend_both_apply():
    rules = """\
    - filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Env, value: prod}], remove: [x-debug]}}
      - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-Served-By, value: mesh}]}}
      backendRefs:
      - name: v1
        port: 80
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-backend, value: v1}]}}]
    """
    got = decide_on(rules, request("/"))
    sent = got.request_headers.apply([("x-env", "dev"), ("X-ENV", "test"), ("x-debug", "1"), ("accept", "*/*")])
    assert sent == [("accept", "*/*"), ("x-env", "prod"), ("x-backend", "v1")]
    assert got.response_headers.apply([("server", "s")]) == [("server", "s"), ("x-served-by", "mesh")]


def test_header_edits_without_anything_leave_the_headers_as_they_are():
    headers = [("a", "1")]
    assert HeaderEdits().apply(headers) is headers


@pytest.mark.parametrize("timeouts, expected", [
    ("{request: 2s}", 2.0), ("{request: 0s}", None), ("{backendRequest: 500ms}", 0.5),
    ("{request: 10s, backendRequest: 1s}", 1.0),
])
def test_the_request_timeout_is_the_one_istiod_derives(timeouts, expected):
    got = decide_on(f"- timeouts: {timeouts}\n  backendRefs: [{{name: v1, port: 80}}]\n", request("/"))
    assert got.timeout == expected


def test_grpc_calls_match_grpc_routes_first():
    view = load(inline=SERVICES + "---\n" + textwrap.dedent("""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: g, namespace: shop}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo}]
          rules:
          - matches: [{method: {service: pkg.Echo, method: Say}}]
            backendRefs: [{name: v2, port: 80}]
        ---
        """) + HEAD + "  - backendRefs: [{name: v1, port: 80}]\n")
    echo = view.by_service_key["shop/echo.shop.svc.cluster.local"]
    grpc = decide(view, echo, 80, request("/pkg.Echo/Say", method="POST", grpc=True), 0.0)
    other = decide(view, echo, 80, request("/pkg.Echo/Other", method="POST", grpc=True), 0.0)
    assert grpc.service_key == "shop/v2.shop.svc.cluster.local" and grpc.route == "shop.g.0"
    assert other.service_key == "shop/v1.shop.svc.cluster.local"
