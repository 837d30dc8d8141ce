"""Route selection with VirtualService semantics on a waypoint, and the decisions on a
selected route: weighted destination, fault injection, mirrors."""
import pytest
import yaml

from meshcore.traffic.istio_model import RequestAttributes as Req
from meshcore.traffic.virtualservice import virtual_service
from meshcore.traffic.virtualservice_select import (
    applies_to_port, choose_destination, fault_decision, mirrors_for, select_http_route, waypoint_virtual_services,
)


def vs(spec: str, *, name="reviews", namespace="prod", **meta):
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": name, "namespace": namespace, **meta}, "spec": yaml.safe_load(spec)}
    return virtual_service(doc)


def route_name(vss, req, **kw):
    selected = select_http_route(vss if isinstance(vss, list) else [vss], req, **kw)
    return None if selected is None else selected.name


RULES = vs("""
hosts: [reviews]
http:
- name: exact
  match: [{uri: {exact: /exact}}]
  route: [{destination: {host: reviews}}]
- name: prefix
  match: [{uri: {prefix: /api}}]
  route: [{destination: {host: reviews}}]
- name: regex
  match: [{uri: {regex: "/v[0-9]+"}}]
  route: [{destination: {host: reviews}}]
- name: nocase
  match: [{uri: {prefix: /CaSe}, ignoreUriCase: true}]
  route: [{destination: {host: reviews}}]
- name: nocase-regex
  match: [{uri: {regex: "/RX.*"}, ignoreUriCase: true}]
  route: [{destination: {host: reviews}}]
- name: header
  match: [{headers: {x-user: {exact: jason}}}]
  route: [{destination: {host: reviews}}]
- name: header-prefix-or-method
  match:
  - headers: {x-tier: {prefix: gold}}
  - method: {exact: DELETE}
  route: [{destination: {host: reviews}}]
- name: present
  match: [{headers: {x-present: {}}}]
  route: [{destination: {host: reviews}}]
- name: query
  match: [{queryParams: {version: {exact: "2"}}, uri: {prefix: /q}}]
  route: [{destination: {host: reviews}}]
- name: without
  match: [{withoutHeaders: {x-skip: {exact: "yes"}}, uri: {prefix: /w}}]
  route: [{destination: {host: reviews}}]
- name: authority-scheme
  match: [{authority: {regex: "reviews(:[0-9]+)?"}, scheme: {exact: https}}]
  route: [{destination: {host: reviews}}]
- name: catchall
  route: [{destination: {host: reviews}}]
- name: unreachable
  route: [{destination: {host: reviews}}]
""")


@pytest.mark.parametrize("req,expected", [
    (Req("GET", "/exact"), "exact"),
    (Req("GET", "/exact?x=1"), "exact"),                  # the query string is not part of the path
    (Req("GET", "/exact/"), "catchall"),
    (Req("GET", "/api"), "prefix"),
    (Req("GET", "/apiary"), "prefix"),                    # a character prefix, not a segment prefix
    (Req("GET", "/ap"), "catchall"),
    (Req("GET", "/v12"), "regex"),
    (Req("GET", "/v12/x"), "catchall"),                   # RE2 full match
    (Req("GET", "/xv12"), "catchall"),
    (Req("GET", "/case/ANY"), "nocase"),
    (Req("GET", "/CASE"), "nocase"),
    (Req("GET", "/rx"), "catchall"),                      # ignoreUriCase does not apply to regex
    (Req("GET", "/RX1"), "nocase-regex"),
    (Req("GET", "/", headers=(("X-User", "jason"),)), "header"),      # names case-insensitive
    (Req("GET", "/", headers=(("x-user", "Jason"),)), "catchall"),    # values case-sensitive
    (Req("GET", "/", headers=(("x-tier", "golden"),)), "header-prefix-or-method"),
    (Req("DELETE", "/"), "header-prefix-or-method"),      # match blocks are OR'ed
    (Req("GET", "/", headers=(("x-present", ""),)), "present"),
    (Req("GET", "/q?version=2"), "query"),
    (Req("GET", "/q?a=1&version=2"), "query"),
    (Req("GET", "/q?version=22"), "catchall"),
    (Req("GET", "/q"), "catchall"),
    (Req("GET", "/w"), "without"),                        # header absent: not matched by withoutHeaders
    (Req("GET", "/w", headers=(("x-skip", "no"),)), "without"),
    (Req("GET", "/w", headers=(("x-skip", "yes"),)), "catchall"),
    (Req("GET", "/", authority="reviews:9080", scheme="https"), "authority-scheme"),
    (Req("GET", "/", authority="reviews:9080", scheme="http"), "catchall"),
])
def test_first_match_in_list_order(req, expected):
    assert route_name(RULES, req) == expected


def test_exact_before_prefix_is_list_order_not_specificity():
    v = vs("""
hosts: [a]
http:
- {name: prefix, match: [{uri: {prefix: /}}], route: [{destination: {host: a}}]}
- {name: exact, match: [{uri: {exact: /x}}], route: [{destination: {host: a}}]}
""")
    assert route_name(v, Req("GET", "/x")) == "prefix"


def test_repeated_header_values_are_joined():
    v = vs("hosts: [a]\nhttp: [{name: h, match: [{headers: {x: {exact: 'a,b'}}}], route: [{destination: {host: a}}]}]")
    assert route_name(v, Req("GET", "/", headers=(("x", "a"), ("X", "b")))) == "h"


def test_pseudo_headers_and_host_in_header_matches():
    v = vs("""
hosts: [a]
http:
- {name: pseudo, match: [{headers: {':method': {exact: PUT}}}], route: [{destination: {host: a}}]}
- {name: host, match: [{headers: {host: {prefix: api.}}}], route: [{destination: {host: a}}]}
""")
    assert route_name(v, Req("PUT", "/")) == "pseudo"
    assert route_name(v, Req("GET", "/", authority="api.example")) == "host"
    assert route_name(v, Req("GET", "/", authority="www.example")) is None


def test_match_name_joins_route_name():
    v = vs("hosts: [a]\nhttp: [{name: r, match: [{name: m, uri: {prefix: /}}], route: [{destination: {host: a}}]}]")
    assert route_name(v, Req("GET", "/")) == "r.m"


def test_port_source_namespace_and_gateways_on_the_waypoint():
    v = vs("""
hosts: [a]
http:
- {name: port, match: [{port: 8080}], route: [{destination: {host: a}}]}
- {name: labels, match: [{sourceLabels: {app: x}}], route: [{destination: {host: a}}]}
- {name: ns, match: [{sourceNamespace: waypoints}], route: [{destination: {host: a}}]}
- {name: gw, match: [{gateways: [istio-system/ingress]}], route: [{destination: {host: a}}]}
- {name: mesh, match: [{gateways: [mesh], sourceNamespace: elsewhere}], route: [{destination: {host: a}}]}
""")
    assert route_name(v, Req("GET", "/", port=8080)) == "port"
    # sourceLabels matches are dropped on a waypoint; sourceNamespace selects the waypoint's own namespace
    assert route_name(v, Req("GET", "/", port=80), waypoint_namespace="waypoints") == "ns"
    # match gateways override sourceNamespace; only `mesh` reaches a waypoint
    assert route_name(v, Req("GET", "/", port=80), waypoint_namespace="other") == "mesh"
    assert applies_to_port([v], 80, waypoint_namespace="other")


def test_no_match_means_404_only_when_routes_exist_for_the_port():
    v = vs("hosts: [a]\nhttp: [{match: [{port: 8080, uri: {prefix: /x}}], route: [{destination: {host: a}}]}]")
    assert route_name(v, Req("GET", "/y", port=8080)) is None
    assert applies_to_port([v], 8080)            # Envoy answers 404 (NR)
    assert not applies_to_port([v], 9090)        # the service's default route applies


def test_across_virtual_services_istiod_order():
    old = vs("hosts: [reviews]\nhttp: [{name: old, match: [{uri: {prefix: /}}], route: [{destination: {host: a}}]}]",
             name="zzz", creationTimestamp="2020-01-01T00:00:00Z")
    new = vs("hosts: [reviews]\nhttp: [{name: new, route: [{destination: {host: a}}]}]",
             name="aaa", creationTimestamp="2021-01-01T00:00:00Z")
    ordered = waypoint_virtual_services([new, old], hostname="reviews.prod.svc.cluster.local",
                                        service_namespace="prod", waypoint_namespace="prod")
    assert [v.name for v in ordered] == ["zzz", "aaa"]           # oldest first
    assert route_name(ordered, Req("GET", "/")) == "old"
    # no creationTimestamp (files): ties go by name, then namespace
    b = vs("hosts: [reviews]\nhttp: [{name: b, route: [{destination: {host: a}}]}]", name="b")
    a = vs("hosts: [reviews]\nhttp: [{name: a, route: [{destination: {host: a}}]}]", name="a")
    ordered = waypoint_virtual_services([b, a], hostname="reviews.prod.svc.cluster.local",
                                        service_namespace="prod", waypoint_namespace="prod")
    assert [v.name for v in ordered] == ["a", "b"]


def test_which_virtual_services_bind_a_service_on_a_waypoint():
    host = "reviews.prod.svc.cluster.local"
    spec = "hosts: [reviews.prod.svc.cluster.local]\nhttp: [{route: [{destination: {host: a}}]}]"
    candidates = [
        vs(spec, name="public-in-service-ns"),
        vs(spec + "\nexportTo: ['.']", name="private-in-service-ns"),        # not visible in the waypoint's ns
        vs(spec + "\nexportTo: ['.']", name="private-in-waypoint-ns", namespace="wp"),
        vs(spec + "\nexportTo: [wp]", name="exported-to-waypoint-ns"),
        vs(spec, name="elsewhere", namespace="other"),                       # neither namespace
        vs(spec + "\ngateways: [istio-system/gw]", name="gateway-only"),     # not the mesh gateway
        vs(spec + "\ngateways: [mesh, istio-system/gw]", name="mesh-and-gateway"),
        vs("hosts: ['*.prod.svc.cluster.local']\nhttp: [{route: [{destination: {host: a}}]}]", name="wildcard"),
        vs("hosts: [ratings]\nhttp: [{route: [{destination: {host: a}}]}]", name="other-host"),
    ]
    ordered = waypoint_virtual_services(candidates, hostname=host, service_namespace="prod",
                                        waypoint_namespace="wp")
    assert [v.name for v in ordered] == ["private-in-waypoint-ns", "exported-to-waypoint-ns", "mesh-and-gateway",
                                         "public-in-service-ns", "wildcard"]


@pytest.mark.parametrize("r,expected", [(0.0, "v1"), (0.74, "v1"), (0.75, "v3"), (0.999, "v3")])
def test_weighted_destination(r, expected):
    v = vs("""
hosts: [a]
http:
- route:
  - {destination: {host: a, subset: v1}, weight: 75}
  - {destination: {host: a, subset: v2}, weight: 0}
  - {destination: {host: a, subset: v3}, weight: 25}
""")
    assert choose_destination(v.http[0], r).destination.subset == expected


def test_single_destination_takes_everything_whatever_its_weight():
    v = vs("hosts: [a]\nhttp: [{route: [{destination: {host: a, subset: v1}, weight: 0}]}]")
    assert choose_destination(v.http[0], 0.5).destination.subset == "v1"


def test_weights_split_statistically():
    v = vs("hosts: [a]\nhttp: [{route: [{destination: {host: a, subset: x}, weight: 10}, "
           "{destination: {host: a, subset: y}, weight: 90}]}]")
    picks = [choose_destination(v.http[0], i / 1000).destination.subset for i in range(1000)]
    assert picks.count("x") == 100


def test_fault_percentages():
    v = vs("""
hosts: [a]
http:
- route: [{destination: {host: a}}]
  fault:
    delay: {fixedDelay: 2s, percentage: {value: 10}}
    abort: {httpStatus: 418, percentage: {value: 50}}
- route: [{destination: {host: a}}]
  fault: {abort: {httpStatus: 500}, delay: {fixedDelay: 1s}}
- route: [{destination: {host: a}}]
  fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}, delay: {fixedDelay: 1s, percent: 100}}
""")
    f = v.http[0].fault
    assert fault_decision(f, 0.05, 0.9).delay == 2 and not fault_decision(f, 0.05, 0.9).aborts
    assert fault_decision(f, 0.5, 0.2).http_status == 418 and fault_decision(f, 0.5, 0.2).delay is None
    # without a percentage nothing is injected, whatever the draw
    assert fault_decision(v.http[1].fault, 0.0, 0.0) == fault_decision(None, 0.0, 0.0)
    d = fault_decision(v.http[2].fault, 0.999, 0.999)
    assert d.grpc_status == 14 and d.http_status is None and d.delay == 1   # the deprecated integer percent
    hits = sum(fault_decision(f, 1, i / 1000).aborts for i in range(1000))
    assert hits == 500


def test_mirrors():
    v = vs("""
hosts: [a]
http:
- route: [{destination: {host: a}}]
  mirrors:
  - {destination: {host: m1}, percentage: {value: 20}}
  - {destination: {host: m2}}
""")
    r = v.http[0]
    assert [m.destination.host[:2] for m in mirrors_for(r, [0.1, 0.999])] == ["m1", "m2"]
    assert [m.destination.host[:2] for m in mirrors_for(r, [0.3, 0.0])] == ["m2"]
