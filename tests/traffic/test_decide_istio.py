"""The waypoint's decision for one request by the VirtualServices bound to its service,
from VirtualServices written as users write them: which route, which destination, which
path and host, which header edits, which local answer, which injected fault."""
from __future__ import annotations

import textwrap

import pytest

from meshcore.sources.config import load
from meshcore.traffic.decide import Forward, HeaderEdits, LocalReply, RequestView
from meshcore.traffic.decide_istio import VirtualServiceRandoms, decide_virtual_service, then
from meshcore.traffic.retry import DEFAULT_RETRY_POLICY

SERVICES = """\
services:
- {name: echo, namespace: shop, hostname: echo.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080, 81: 8081}}
- {name: v1, namespace: shop, hostname: v1.shop.svc.cluster.local, vips: ["/10.96.0.2"], ports: {80: 8080, 9090: 9090}}
- {name: v2, namespace: shop, hostname: v2.shop.svc.cluster.local, vips: ["/10.96.0.3"], ports: {80: 8080}}
- {name: api, namespace: other, hostname: api.other.svc.cluster.local, vips: ["/10.96.0.4"], ports: {80: 8080, 81: 8081}}
"""
ECHO = "shop/echo.shop.svc.cluster.local"
V1, V2, API = "shop/v1.shop.svc.cluster.local", "shop/v2.shop.svc.cluster.local", "other/api.other.svc.cluster.local"
NEVER = VirtualServiceRandoms(0.0, 0.999999, 0.999999)      # first destination; a fault below 100 % not drawn


def virtual_service(http: str, *, name: str = "r", namespace: str = "shop", created: str = "") -> str:
    meta = f"{{name: {name}, namespace: {namespace}" + (f", creationTimestamp: '{created}'" if created else "") + "}"
    return (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {meta}\n"
            f"spec:\n  hosts: [echo.shop.svc.cluster.local]\n  http:\n"
            + textwrap.indent(textwrap.dedent(http), "  "))


def view_of(*docs: str):
    return load(inline="---\n".join((SERVICES, *docs)))


def request(path="/", *, query="", authority="echo.shop", headers=None, grpc=False, scheme="http", method="GET"):
    return RequestView(method, path, query, authority, headers or {}, grpc=grpc, scheme=scheme)


def decide_in(view, req: RequestView, randoms: VirtualServiceRandoms = NEVER, port: int = 80):
    return decide_virtual_service(view, view.by_service_key[ECHO], port, req, randoms, waypoint_namespace="shop")


def decide_on(http: str, req: RequestView | None = None, randoms: VirtualServiceRandoms = NEVER, port: int = 80):
    return decide_in(view_of(virtual_service(http)), req or request(), randoms, port)


# -- whether VirtualServices decide at all, and which route --------------------------------

def test_a_service_without_virtual_services_is_not_decided_on():
    assert decide_in(view_of(), request()) is None


@pytest.mark.parametrize("http, port, expected", [
    # routes for another port only: istiod builds the service's default route for this one
    ("- match: [{port: 81}]\n  route: [{destination: {host: v1}}]\n", 80, None),
    ("- match: [{port: 81}]\n  route: [{destination: {host: v2}}]\n", 81, V2),
    # a match on source labels is dropped on a waypoint: no route at all
    ("- match: [{sourceLabels: {app: web}}]\n  route: [{destination: {host: v1}}]\n", 80, None),
    # a match for another gateway only: dropped too
    ("- match: [{gateways: [shop/ingress]}]\n  route: [{destination: {host: v1}}]\n", 80, None),
])
def test_routes_for_the_port_decide_whether_virtual_services_apply(http, port, expected):
    got = decide_on(http, port=port)
    assert (got if got is None else got.service_key) == expected


def test_a_request_no_route_matches_gets_404_no_route():
    got = decide_on("- match: [{uri: {exact: /only}}]\n  route: [{destination: {host: v1}}]\n", request("/other"))
    assert isinstance(got, LocalReply) and (got.status, got.flag, got.route, got.body) == (404, "NR", "", b"")


FIRST = virtual_service("""\
- name: jason
  match: [{headers: {end-user: {exact: jason}}}]
  route: [{destination: {host: v1}}]
- match: [{uri: {prefix: /api}}]
  route: [{destination: {host: v2}}]
""", name="first", created="2024-01-01T00:00:00Z")
SECOND = virtual_service("""\
- match: [{uri: {prefix: /api/special}}]
  route: [{destination: {host: echo}}]
- route: [{destination: {host: api.other.svc.cluster.local}}]
""", name="second", created="2024-02-01T00:00:00Z")


@pytest.mark.parametrize("req, service, route", [
    (request("/api/special", headers={"end-user": "jason"}), V1, "shop.first.jason"),
    (request("/api/special"), V2, "shop.first.1"),     # the older VirtualService's route comes first
    (request("/web"), API, "shop.second.1"),           # then the newer one's, in order
])
def test_first_match_in_order_across_virtual_services(req, service, route):
    # written newer first: istiod orders them by creation time, not by where they were written
    got = decide_in(view_of(SECOND, FIRST), req)
    assert isinstance(got, Forward) and (got.service_key, got.route) == (service, route)


def test_route_names_for_logs():
    http = """\
    - name: named
      match: [{name: m, uri: {prefix: /m}}]
      route: [{destination: {host: v1}}]
    - route: [{destination: {host: v1}}]
    """
    assert decide_on(http, request("/m")).route == "shop.r.named.m"
    assert decide_on(http, request("/x")).route == "shop.r.1"


# -- destinations ---------------------------------------------------------------------------

WEIGHTED = "- route: [{destination: {host: v1}, weight: 25}, {destination: {host: v2}, weight: 75}]\n"


@pytest.mark.parametrize("http, r, expected", [
    (WEIGHTED, 0.0, V1), (WEIGHTED, 0.2499, V1), (WEIGHTED, 0.25, V2), (WEIGHTED, 0.999999, V2),
    # weight 0 takes nothing when others carry weight
    ("- route: [{destination: {host: v1}, weight: 0}, {destination: {host: v2}, weight: 100}]\n", 0.0, V2),
    # a single destination takes everything whatever its weight
    ("- route: [{destination: {host: v1}, weight: 0}]\n", 0.7, V1),
])
def test_weights_split_requests_between_destinations(http, r, expected):
    got = decide_on(http, randoms=VirtualServiceRandoms(r, 0.5, 0.5))
    assert isinstance(got, Forward) and got.service_key == expected


@pytest.mark.parametrize("destination, port, expected", [
    ("{host: v1}", 80, (V1, 80, "")),                                # a short name: the route's namespace
    ("{host: v1, subset: canary}", 80, (V1, 80, "canary")),
    ("{host: v1, port: {number: 9090}}", 80, (V1, 9090, "")),
    ("{host: api.other.svc.cluster.local}", 81, (API, 81, "")),       # several ports: the request's
    ("{host: v2}", 81, (V2, 80, "")),                                 # one port: that one
])
def test_the_destination_names_service_port_and_subset(destination, port, expected):
    got = decide_on(f"- route: [{{destination: {destination}}}]\n", port=port)
    assert isinstance(got, Forward) and (got.service_key, got.port, got.subset) == expected


@pytest.mark.parametrize("destination, why", [
    ("{host: nowhere}", "no service nowhere.shop.svc.cluster.local"),
    ("{host: api}", "no service api.shop.svc.cluster.local"),         # short names complete in the route's namespace
    ("{host: v1, port: {number: 7000}}", "has no port 7000"),
])
def test_a_destination_without_a_cluster_answers_503_no_cluster(destination, why):
    got = decide_on(f"- name: to\n  route: [{{destination: {destination}}}]\n")
    assert isinstance(got, LocalReply) and (got.status, got.flag, got.route) == (503, "NC", "shop.r.to")
    assert why in got.reason


def test_the_503_for_a_destination_without_a_cluster_carries_the_routes_response_headers():
    # Envoy's router answers through the route entry, which adds its response headers
    got = decide_on("- headers: {response: {set: {x-route: r}, remove: [server]}}\n"
                    "  route: [{destination: {host: nowhere}, headers: {response: {add: {x-dest: d}}}}]\n")
    assert isinstance(got, LocalReply) and (got.status, got.flag) == (503, "NC")
    assert got.response_headers.apply([("server", "x"), ("x-route", "old")]) == [("x-route", "r"), ("x-dest", "d")]


# -- faults ---------------------------------------------------------------------------------

def fault(spec: str) -> str:
    return f"- fault: {spec}\n  route: [{{destination: {{host: v1}}}}]\n"


@pytest.mark.parametrize("spec, delay_r, expected", [
    ("{delay: {fixedDelay: 2s, percentage: {value: 100}}}", 0.999999, 2.0),
    ("{delay: {fixedDelay: 2s, percentage: {value: 0}}}", 0.0, 0.0),
    ("{delay: {fixedDelay: 2s, percentage: {value: 50}}}", 0.4999, 2.0),
    ("{delay: {fixedDelay: 2s, percentage: {value: 50}}}", 0.5, 0.0),     # the boundary is not delayed
    ("{delay: {fixedDelay: 2s}}", 0.0, 0.0),                              # no percentage: 0 %
    ("{delay: {fixedDelay: 500ms, percent: 30}}", 0.29, 0.5),
])
def test_injected_delays_by_percentage(spec, delay_r, expected):
    got = decide_on(fault(spec), randoms=VirtualServiceRandoms(0.0, delay_r, 0.0))
    assert isinstance(got, Forward) and got.delay == expected


@pytest.mark.parametrize("spec, abort_r, aborted", [
    ("{abort: {httpStatus: 503, percentage: {value: 100}}}", 0.999999, True),
    ("{abort: {httpStatus: 503, percentage: {value: 0}}}", 0.0, False),
    ("{abort: {httpStatus: 503, percentage: {value: 25}}}", 0.2499, True),
    ("{abort: {httpStatus: 503, percentage: {value: 25}}}", 0.25, False),
    ("{abort: {httpStatus: 503}}", 0.0, False),                           # no percentage: 0 %
])
def test_injected_aborts_by_percentage(spec, abort_r, aborted):
    got = decide_on(fault(spec), randoms=VirtualServiceRandoms(0.0, 0.0, abort_r))
    if aborted:
        assert isinstance(got, LocalReply)
        assert (got.status, got.flag, got.body, got.grpc_status) == (503, "FI", b"fault filter abort", None)
    else:
        assert isinstance(got, Forward)


def test_a_grpc_abort_is_a_200_carrying_the_grpc_status():
    got = decide_on(fault("{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}"),
                    request("/pkg.Svc/Call", grpc=True, method="POST"))
    assert isinstance(got, LocalReply) and (got.status, got.grpc_status, got.flag) == (200, 14, "FI")


def test_an_injected_abort_carries_the_routes_response_headers():
    # Envoy finalizes its filters' local replies with the route entry's response headers
    got = decide_on("- fault: {abort: {httpStatus: 503, percentage: {value: 100}}}\n"
                    "  headers: {response: {set: {x-route: faulty}, remove: [server]}}\n"
                    "  route: [{destination: {host: v1}}]\n")
    assert isinstance(got, LocalReply) and got.flag == "FI"
    assert got.response_headers.apply([("server", "x")]) == [("x-route", "faulty")]


def test_a_delay_and_an_abort_both_drawn_delay_the_abort():
    spec = "{delay: {fixedDelay: 1s, percentage: {value: 100}}, abort: {httpStatus: 429, percentage: {value: 100}}}"
    got = decide_on(fault(spec))
    assert isinstance(got, LocalReply) and (got.status, got.delay) == (429, 1.0)


def test_delay_and_abort_are_drawn_independently():
    spec = "{delay: {fixedDelay: 1s, percentage: {value: 50}}, abort: {httpStatus: 429, percentage: {value: 50}}}"
    got = decide_on(fault(spec), randoms=VirtualServiceRandoms(0.0, 0.1, 0.9))
    assert isinstance(got, Forward) and got.delay == 1.0
    got = decide_on(fault(spec), randoms=VirtualServiceRandoms(0.0, 0.9, 0.1))
    assert isinstance(got, LocalReply) and (got.status, got.delay) == (429, 0.0)


# -- redirects and direct responses ---------------------------------------------------------

@pytest.mark.parametrize("redirect, authority, port, status, location", [
    ("{uri: /new}", "echo.shop", 80, 301, "http://echo.shop/new?q=1"),            # the query is kept
    ("{uri: '/new?x=2'}", "echo.shop", 80, 301, "http://echo.shop/new?x=2"),     # unless the uri has one
    ("{uri: /new, redirectCode: 308}", "echo.shop", 80, 308, "http://echo.shop/new?q=1"),
    ("{authority: other.example}", "echo.shop:8080", 80, 301, "http://other.example/old/a?q=1"),
    ("{authority: other.example, port: 8443}", "echo.shop", 80, 301, "http://other.example:8443/old/a?q=1"),
    ("{port: 8443}", "echo.shop:8080", 80, 301, "http://echo.shop:8443/old/a?q=1"),
    # istiod drops port 80 for http: Envoy then keeps the request's port
    ("{port: 80}", "echo.shop:8080", 80, 301, "http://echo.shop:8080/old/a?q=1"),
    ("{scheme: https}", "echo.shop:80", 80, 301, "https://echo.shop/old/a?q=1"),   # the old scheme's port dropped
    ("{scheme: https}", "echo.shop:8080", 80, 301, "https://echo.shop:8080/old/a?q=1"),
    ("{scheme: https, port: 443}", "echo.shop:8080", 80, 301, "https://echo.shop:8080/old/a?q=1"),
    ("{scheme: https, port: 8443}", "[fd00::1]:80", 80, 301, "https://[fd00::1]:8443/old/a?q=1"),
    ("{derivePort: FROM_REQUEST_PORT}", "echo.shop", 81, 301, "http://echo.shop:81/old/a?q=1"),
    ("{derivePort: FROM_REQUEST_PORT}", "echo.shop:81", 80, 301, "http://echo.shop:81/old/a?q=1"),
    ("{scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}", "echo.shop:80", 80, 301, "https://echo.shop/old/a?q=1"),
    ("{prefixRewrite: /new}", "echo.shop", 80, 301, "http://echo.shop/new/a?q=1"),  # the matched prefix replaced
])
def test_redirect_locations(redirect, authority, port, status, location):
    http = f"- match: [{{uri: {{prefix: /old}}}}]\n  redirect: {redirect}\n"
    got = decide_on(http, request("/old/a", query="q=1", authority=authority), port=port)
    assert isinstance(got, LocalReply) and got.status == status and dict(got.headers)["location"] == location


def test_a_redirect_prefix_rewrite_without_a_uri_match_replaces_the_leading_slash():
    got = decide_on("- match: [{headers: {x: {exact: y}}}]\n  redirect: {prefixRewrite: /v2/}\n",
                    request("/a", headers={"x": "y"}))
    assert dict(got.headers)["location"] == "http://echo.shop/v2/a"


@pytest.mark.parametrize("answer, status, body", [
    ("{status: 418, body: {string: teapot}}", 418, b"teapot"),
    ("{status: 503, body: {bytes: aGVsbG8=}}", 503, b"hello"),
    ("{status: 204}", 204, b""),
])
def test_direct_responses(answer, status, body):
    got = decide_on(f"- name: dr\n  directResponse: {answer}\n")
    assert isinstance(got, LocalReply) and (got.status, got.body, got.route) == (status, body, "shop.r.dr")


def test_a_redirect_or_direct_response_carries_the_routes_response_headers():
    headers = "  headers: {response: {set: {x-why: moved}, add: {x-via: mesh}}}\n"
    got = decide_on("- redirect: {uri: /new}\n" + headers)
    assert got.headers == (("location", "http://echo.shop/new"), ("x-why", "moved"), ("x-via", "mesh"))
    got = decide_on("- directResponse: {status: 200}\n" + headers)
    assert got.headers == (("x-why", "moved"), ("x-via", "mesh"))


# -- rewrites -------------------------------------------------------------------------------

@pytest.mark.parametrize("match, rewrite, path, target", [
    ("{uri: {prefix: /foo}}", "/bar", "/foo/x", "/bar/x?a=1"),
    ("{uri: {prefix: /foo}}", "/bar", "/foobar", "/barbar?a=1"),       # a plain prefix, not segments
    ("{uri: {prefix: /foo/}}", "/", "/foo/x", "/x?a=1"),
    ("{uri: {exact: /foo}}", "/bar", "/foo", "/bar?a=1"),              # the whole path
    ("{uri: {regex: '/f.*'}}", "/bar", "/foo/x", "/bar?a=1"),
    ("{headers: {x: {exact: y}}}", "/v2/", "/foo", "/v2/foo?a=1"),     # no uri match: istiod's prefix "/"
    ("{uri: {prefix: /FOO}, ignoreUriCase: true}", "/bar", "/foo/x", "/bar/x?a=1"),
])
def test_uri_rewrite_is_envoys_prefix_rewrite(match, rewrite, path, target):
    http = f"- match: [{match}]\n  rewrite: {{uri: {rewrite}}}\n  route: [{{destination: {{host: v1}}}}]\n"
    got = decide_on(http, request(path, query="a=1", headers={"x": "y"}))
    assert isinstance(got, Forward) and got.target == target


@pytest.mark.parametrize("match, rewrite, path, target", [
    ("'^/service/([^/]+)(/.*)$'", r"'\2/instance/\1'", "/service/foo/v1/api", "/v1/api/instance/foo"),
    ("o", "'0'", "/foo/bo", "/f00/b0"),                                  # every match
    ("'x*'", "-", "/axb", "-/-a-b-"),                                   # RE2: no empty match right after one
])
def test_uri_regex_rewrite_keeps_the_query(match, rewrite, path, target):
    http = (f"- rewrite: {{uriRegexRewrite: {{match: {match}, rewrite: {rewrite}}}}}\n"
            "  route: [{destination: {host: v1}}]\n")
    got = decide_on(http, request(path, query="q=1"))
    assert isinstance(got, Forward) and got.target == f"{target}?q=1"


@pytest.mark.parametrize("http, authority", [
    ("- rewrite: {authority: new.example}\n  route: [{destination: {host: v1}}]\n", "new.example"),
    ("- headers: {request: {set: {host: set.example}}}\n  route: [{destination: {host: v1}}]\n", "set.example"),
    ("- route: [{destination: {host: v1}, headers: {request: {set: {':authority': d.example}}}}]\n", "d.example"),
    # the route's wins over the destination's
    ("- rewrite: {authority: new.example}\n"
     "  route: [{destination: {host: v1}, headers: {request: {set: {host: d.example}}}}]\n", "new.example"),
    ("- route: [{destination: {host: v1}}]\n", "echo.shop"),
])
def test_authority_rewrites(http, authority):
    got = decide_on(http)
    assert isinstance(got, Forward) and got.authority == authority
    assert "host" not in {n for n, _ in got.request_headers.set + got.request_headers.add}


# -- header edits ---------------------------------------------------------------------------

def test_route_header_operations_both_ways():
    http = """\
    - headers:
        request: {set: {x-env: prod}, add: {x-trace: 'on'}, remove: [x-debug]}
        response: {set: {x-served-by: mesh}, remove: [server]}
      route: [{destination: {host: v1}}]
    """
    got = decide_on(http)
    assert got.request_headers.apply([("x-env", "dev"), ("x-debug", "1"), ("x-trace", "a")]) == [
        ("x-trace", "a"), ("x-env", "prod"), ("x-trace", "on")]
    assert got.response_headers.apply([("server", "x"), ("x-served-by", "y")]) == [("x-served-by", "mesh")]


SINGLE = """\
- headers: {request: {set: {x-a: route}, add: {x-b: route}, remove: [x-c]}}
  route:
  - destination: {host: v1}
    headers: {request: {set: {x-a: dest, x-b: dest, x-c: dest}}}
"""
SPLIT = """\
- headers: {request: {set: {x-a: route}, add: {x-b: route}, remove: [x-c]}}
  route:
  - destination: {host: v1}
    weight: 100
    headers: {request: {set: {x-a: dest, x-b: dest, x-c: dest}}}
  - {destination: {host: v2}, weight: 0}
"""


@pytest.mark.parametrize("http, expected", [
    # one destination: its operations follow the route's in one list, removes first
    (SINGLE, {("x-a", "dest"), ("x-b", "dest"), ("x-c", "dest")}),
    # weighted: the destination's are applied first, then the route's
    (SPLIT, {("x-a", "route"), ("x-b", "dest"), ("x-b", "route")}),
])
def test_destination_header_operations_merge_as_envoy_applies_them(http, expected):
    got = decide_on(http)
    assert set(got.request_headers.apply([("x-a", "0"), ("x-c", "0")])) == expected


@pytest.mark.parametrize("first, second, headers", [
    (HeaderEdits(set=(("a", "1"),)), HeaderEdits(remove=("a",)), [("a", "0"), ("b", "0")]),
    (HeaderEdits(add=(("a", "1"),)), HeaderEdits(set=(("a", "2"),)), [("a", "0")]),
    (HeaderEdits(set=(("a", "1"),), remove=("b",)), HeaderEdits(add=(("a", "2"), ("b", "3"))), [("b", "0")]),
])
def test_then_is_one_edit_after_the_other(first, second, headers):
    assert sorted(then(first, second).apply(headers)) == sorted(second.apply(first.apply(headers)))


# -- timeouts and retries -------------------------------------------------------------------

@pytest.mark.parametrize("extra, timeout", [("timeout: 2.5s", 2.5), ("", None)])
def test_timeouts(extra, timeout):
    got = decide_on(f"- route: [{{destination: {{host: v1}}}}]\n  {extra}\n")
    assert got.timeout == timeout


@pytest.mark.parametrize("extra, num_retries, per_try", [
    ("", DEFAULT_RETRY_POLICY.num_retries, None),
    ("retries: {attempts: 5, perTryTimeout: 1s, retryOn: 5xx}", 5, 1.0),
    ("retries: {attempts: 0}", None, None),
])
def test_retries(extra, num_retries, per_try):
    got = decide_on(f"- route: [{{destination: {{host: v1}}}}]\n  {extra}\n")
    if num_retries is None:
        assert got.retry is None
    else:
        assert (got.retry.num_retries, got.retry.per_try_timeout) == (num_retries, per_try)


def test_a_consistently_hashed_destination_retries_on_the_same_host():
    rule = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: v1, namespace: shop}
spec:
  host: v1.shop.svc.cluster.local
  subsets: [{name: sticky, labels: {v: "1"}, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}]
"""
    view = view_of(rule, virtual_service("- route: [{destination: {host: v1, subset: sticky}}]\n"))
    assert decide_in(view, request()).retry.retry_other_hosts is False
    view = view_of(rule, virtual_service("- route: [{destination: {host: v1}}]\n"))
    assert decide_in(view, request()).retry.retry_other_hosts is True
