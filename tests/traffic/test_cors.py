"""CORS on a route, as Envoy's CORS filter applies the policy istiod writes for a
VirtualService's `corsPolicy` or a Gateway API `CORS` filter: the preflights the
waypoint answers itself (and with what), the ones it lets through to the backend, the
headers an actual request's response gets; then the same through the route decisions,
where the filter sits between the fault filter and the router."""
from __future__ import annotations

import textwrap

import pytest

from meshcore.node.dump import virtual_service as dumped
from meshcore.sources.config import load
from meshcore.traffic.cors import Actual, Preflight, cors, gateway_cors
from meshcore.traffic.decide import Forward, HeaderEdits, LocalReply, RequestView, decide
from meshcore.traffic.decide_istio import VirtualServiceRandoms, decide_virtual_service
from meshcore.traffic.istio_model import CorsPolicy, MatchKind, StringMatch, UnmatchedPreflights
from meshcore.traffic.model import Cors
from meshcore.traffic.virtualservice import _cors

ORIGIN = "https://app.example"


def policy(**fields) -> CorsPolicy:
    """A corsPolicy as a VirtualService writes it."""
    return _cors(fields, "corsPolicy")


def preflight(origin=ORIGIN, method="PUT", request_headers=None, **extra) -> dict:
    headers = {"origin": origin, "access-control-request-method": method, **extra}
    if request_headers is not None:
        headers["access-control-request-headers"] = request_headers
    return headers


FULL = dict(allowOrigins=[{"exact": ORIGIN}, {"prefix": "https://dev."}, {"regex": r"https://[a-z]+\.shop\.example"}],
            allowMethods=["GET", "PUT"], allowHeaders=["x-token", "content-type"], exposeHeaders=["x-trace"],
            maxAge="24h", allowCredentials=True)


# -- preflights -----------------------------------------------------------------------------

@pytest.mark.parametrize("origin", [ORIGIN, "https://dev.app", "https://api.shop.example"])
def test_a_preflight_from_an_allowed_origin_is_answered_with_the_policy(origin):
    got = cors(policy(**FULL), "OPTIONS", preflight(origin))
    assert got == Preflight((("access-control-allow-origin", origin), ("access-control-allow-credentials", "true"),
                             ("access-control-allow-methods", "GET,PUT"),
                             ("access-control-allow-headers", "x-token,content-type"),
                             ("access-control-max-age", "86400")))


@pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.evil", "http://app.example",
                                    "https://x.shop.example.evil"])
def test_a_preflight_from_another_origin_goes_on_to_the_backend_by_default(origin):
    assert cors(policy(**FULL), "OPTIONS", preflight(origin)) is None
    assert cors(policy(**FULL, unmatchedPreflights="FORWARD"), "OPTIONS", preflight(origin)) is None
    assert cors(policy(**FULL, unmatchedPreflights="UNSPECIFIED"), "OPTIONS", preflight(origin)) is None


def test_ignore_answers_a_preflight_from_another_origin_without_allowing_it():
    got = cors(policy(**FULL, unmatchedPreflights="IGNORE"), "OPTIONS", preflight("https://evil.example"))
    # Envoy still writes the rest of the policy: without Allow-Origin the browser stops there
    assert isinstance(got, Preflight) and "access-control-allow-origin" not in dict(got.headers)
    assert dict(got.headers)["access-control-allow-methods"] == "GET,PUT"


@pytest.mark.parametrize("method, headers", [
    ("OPTIONS", {"origin": ORIGIN}),                                            # no request method: not a preflight
    ("OPTIONS", {"origin": ORIGIN, "access-control-request-method": ""}),
    ("options", preflight()),                                                   # methods are case-sensitive
])
def test_an_options_request_that_is_not_a_preflight_is_an_actual_request(method, headers):
    assert isinstance(cors(policy(**FULL), method, headers), Actual)


def test_without_an_origin_nothing_happens_even_to_an_options_request():
    assert cors(policy(**FULL), "OPTIONS", {"access-control-request-method": "PUT"}) is None
    assert cors(policy(**FULL), "OPTIONS", preflight(origin="")) is None
    assert cors(None, "OPTIONS", preflight()) is None


def test_a_preflight_answer_holds_only_what_the_policy_says():
    got = cors(policy(allowOrigins=[{"exact": ORIGIN}]), "OPTIONS", preflight())
    assert got == Preflight((("access-control-allow-origin", ORIGIN),))
    got = cors(policy(allowOrigins=[{"exact": ORIGIN}], allowCredentials=False, maxAge="90s"), "OPTIONS", preflight())
    assert got == Preflight((("access-control-allow-origin", ORIGIN), ("access-control-max-age", "90")))


def test_a_wildcard_among_methods_or_headers_echoes_what_the_browser_asked_for():
    p = gateway_cors(Cors(allow_origins=(ORIGIN,), allow_methods=("*",), allow_headers=("*",)))
    got = dict(cors(p, "OPTIONS", preflight(method="PATCH", request_headers="x-a, x-b")).headers)
    assert got["access-control-allow-methods"] == "PATCH" and got["access-control-allow-headers"] == "x-a, x-b"
    # nothing asked: Envoy writes the header empty
    assert dict(cors(p, "OPTIONS", preflight()).headers)["access-control-allow-headers"] == ""


# -- actual requests --------------------------------------------------------------------------

def test_an_actual_request_from_an_allowed_origin_gets_the_origin_echoed_credentials_and_exposed_headers():
    assert cors(policy(**FULL), "GET", {"origin": ORIGIN}) == Actual(
        (("access-control-allow-origin", ORIGIN), ("access-control-allow-credentials", "true"),
         ("access-control-expose-headers", "x-trace")))
    assert cors(policy(allowOrigins=[{"exact": ORIGIN}]), "POST", {"origin": ORIGIN}) == Actual(
        (("access-control-allow-origin", ORIGIN),))


def test_an_actual_request_from_another_origin_or_without_one_is_left_alone():
    assert cors(policy(**FULL), "GET", {"origin": "https://evil.example"}) is None
    assert cors(policy(**FULL, unmatchedPreflights="IGNORE"), "GET", {"origin": "https://evil.example"}) is None
    assert cors(policy(**FULL), "GET", {}) is None


def test_the_deprecated_allow_origin_is_read_only_without_allow_origins():
    old = policy(allowOrigin=[ORIGIN, "https://b.example"])
    assert isinstance(cors(old, "GET", {"origin": "https://b.example"}), Actual)
    both = policy(allowOrigin=["https://b.example"], allowOrigins=[{"exact": ORIGIN}])
    assert cors(both, "GET", {"origin": "https://b.example"}) is None


def test_a_matcher_that_takes_a_star_lets_every_origin_in():
    for match in ({"exact": "*"}, {"regex": ".*"}, {"prefix": "*"}):
        got = cors(policy(allowOrigins=[match]), "GET", {"origin": "https://anyone.example"})
        assert got == Actual((("access-control-allow-origin", "https://anyone.example"),))
    assert cors(policy(), "GET", {"origin": ORIGIN}) is None             # no origins: none allowed


def test_a_repeated_origin_is_matched_as_its_values_joined():
    assert cors(policy(allowOrigins=[{"exact": ORIGIN}]), "GET", {"origin": f"{ORIGIN},{ORIGIN}"}) is None


# -- Gateway API's filter, as istiod converts it ------------------------------------------

@pytest.mark.parametrize("origin, kind, value", [
    ("https://a.example", MatchKind.EXACT, "https://a.example"),
    ("https://a.example:*", MatchKind.PREFIX, "https://a.example:"),
    ("*", MatchKind.REGEX, r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\t\n\f\r ?#]+$"),
])
def test_gateway_origins_become_exact_prefix_or_regex_matches(origin, kind, value):
    (m,) = gateway_cors(Cors(allow_origins=(origin,))).allow_origins
    assert (m.kind, m.value) == (kind, value)


@pytest.mark.parametrize("allowed, origin, matches", [
    ("*", "https://a.example", True),
    ("*", "http://a.example:8080", True),
    ("*", "null", False),                                   # not scheme://host: a sandboxed page
    ("*", "https://a.example/path", False),
    ("https://*.example.com", "https://www.example.com", True),
    ("https://*.example.com", "https://a.b.example.com", True),
    ("https://*.example.com", "https://example.com", False),
    ("https://*.example.com", "https://www.example.com.evil", False),
    ("https://*.example.com", "https://wwwXexample.com", False),   # the dot is a dot
    ("http://*.example.com:8080", "http://a.example.com:8080", True),
])
def test_gateway_wildcard_origins_match_as_istiod_writes_them(allowed, origin, matches):
    got = cors(gateway_cors(Cors(allow_origins=(allowed,))), "GET", {"origin": origin})
    assert (got is not None) is matches


def test_a_gateway_filter_answers_unmatched_preflights_and_carries_its_max_age_and_credentials():
    p = gateway_cors(Cors(allow_origins=(ORIGIN,), allow_methods=("GET",), allow_headers=("x-a",),
                          expose_headers=("x-b",), allow_credentials=True, max_age=5))
    assert p == CorsPolicy(allow_origins=(StringMatch(MatchKind.EXACT, ORIGIN),), allow_methods=("GET",),
                           allow_headers=("x-a",), expose_headers=("x-b",), max_age=5.0, allow_credentials=True,
                           unmatched_preflights=UnmatchedPreflights.IGNORE)
    assert dict(cors(p, "OPTIONS", preflight()).headers)["access-control-max-age"] == "5"
    other = cors(p, "OPTIONS", preflight("https://evil.example"))
    assert isinstance(other, Preflight) and "access-control-allow-origin" not in dict(other.headers)
    assert gateway_cors(Cors(allow_origins=(ORIGIN,))).allow_credentials is None


# -- in the route decisions ---------------------------------------------------------------------

SERVICES = """\
services:
- {name: echo, namespace: shop, hostname: echo.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080}}
- {name: v1, namespace: shop, hostname: v1.shop.svc.cluster.local, vips: ["/10.96.0.2"], ports: {80: 8080}}
- {name: v2, namespace: shop, hostname: v2.shop.svc.cluster.local, vips: ["/10.96.0.3"], ports: {80: 8080}}
"""
ECHO, V1, V2 = ("shop/echo.shop.svc.cluster.local", "shop/v1.shop.svc.cluster.local",
                "shop/v2.shop.svc.cluster.local")
CORS_YAML = f"corsPolicy: {{allowOrigins: [{{exact: '{ORIGIN}'}}], allowMethods: [PUT], exposeHeaders: [x-trace]}}"


def virtual_service(http: str):
    doc = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\n"
           "spec:\n  hosts: [echo.shop.svc.cluster.local]\n  http:\n" + textwrap.indent(textwrap.dedent(http), "  "))
    view = load(inline=SERVICES + "---\n" + doc)
    return view


def vs_decide(http: str, method: str, headers: dict, randoms=VirtualServiceRandoms(0.0, 0.999, 0.999)):
    view = virtual_service(http)
    return decide_virtual_service(view, view.by_service_key[ECHO], 80,
                                  RequestView(method, "/", "", "echo.shop", headers), randoms,
                                  waypoint_namespace="shop")


def test_a_virtual_service_preflight_is_answered_with_no_body_and_names_the_routes_service():
    got = vs_decide(f"- route: [{{destination: {{host: v1}}, weight: 50}}, {{destination: {{host: v2}}, weight: 50}}]"
                    f"\n  {CORS_YAML}\n", "OPTIONS", preflight(), VirtualServiceRandoms(0.9, 0.999, 0.999))
    assert isinstance(got, LocalReply)
    assert (got.status, got.body, got.content_type, got.flag, got.route) == (200, b"", "", "-", "shop.r.0")
    assert got.headers == (("access-control-allow-origin", ORIGIN), ("access-control-allow-methods", "PUT"))
    assert got.service_key == V2                       # the weighted cluster drawn with the route


def test_a_virtual_service_preflight_from_another_origin_is_forwarded():
    got = vs_decide(f"- route: [{{destination: {{host: v1}}}}]\n  {CORS_YAML}\n", "OPTIONS",
                    preflight("https://evil.example"))
    assert isinstance(got, Forward) and got.service_key == V1 and not got.response_headers


def test_a_virtual_service_actual_request_gets_the_headers_over_the_routes_own():
    got = vs_decide(f"""\
- route: [{{destination: {{host: v1}}}}]
  headers:
    response: {{set: {{access-control-allow-origin: '*', x-route: a}}, add: {{access-control-expose-headers: x}}}}
  {CORS_YAML}
""", "GET", {"origin": ORIGIN})
    assert isinstance(got, Forward)
    backend = [("access-control-allow-origin", "https://backend.example"), ("x-backend", "one")]
    assert sorted(got.response_headers.apply(backend)) == sorted([
        ("x-backend", "one"), ("x-route", "a"), ("access-control-allow-origin", ORIGIN),
        ("access-control-expose-headers", "x-trace")])


def test_a_fault_abort_comes_before_cors_and_a_delay_holds_the_preflight_answer():
    aborted = vs_decide(f"""\
- route: [{{destination: {{host: v1}}}}]
  fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
  {CORS_YAML}
""", "OPTIONS", preflight())
    assert (aborted.status, aborted.flag, aborted.headers, aborted.service_key) == (503, "FI", (), V1)
    delayed = vs_decide(f"""\
- route: [{{destination: {{host: v1}}}}]
  fault: {{delay: {{fixedDelay: 2s, percentage: {{value: 100}}}}}}
  {CORS_YAML}
""", "OPTIONS", preflight())
    assert (delayed.status, delayed.delay) == (200, 2.0)


def test_a_route_to_a_missing_cluster_answers_preflights_and_its_503_carries_the_cors_headers():
    http = f"- route: [{{destination: {{host: nowhere}}}}]\n  {CORS_YAML}\n"
    got = vs_decide(http, "GET", {"origin": ORIGIN})
    assert (got.status, got.flag, got.service_key) == (503, "NC", None)
    assert ("access-control-allow-origin", ORIGIN) in got.headers, got
    answered = vs_decide(http, "OPTIONS", preflight())
    assert (answered.status, answered.reason, answered.service_key) == (200, "CORS preflight", None)


@pytest.mark.parametrize("http, status", [("- redirect: {uri: /elsewhere}\n", 301),
                                          ("- directResponse: {status: 418}\n", 418)])
def test_a_redirect_or_direct_response_has_no_route_entry_for_cors_to_act_on(http, status):
    for method, headers in (("GET", {"origin": ORIGIN}), ("OPTIONS", preflight())):
        got = vs_decide(f"{http}  {CORS_YAML}\n", method, headers)
        assert got.status == status and not any(n.startswith("access-control-") for n, _ in got.headers), got


ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
"""
GATEWAY_CORS = ("{type: CORS, cors: {allowOrigins: ['https://*.example'], allowMethods: [GET, PUT], "
                "allowCredentials: true}}")


def gw_decide(rules: str, method: str, headers: dict, r: float = 0.0):
    view = load(inline=SERVICES + "---\n" + ROUTE + textwrap.indent(textwrap.dedent(rules), "  "))
    return decide(view, view.by_service_key[ECHO], 80, RequestView(method, "/", "", "echo.shop", headers), r)


def test_an_httproute_cors_filter_answers_preflights_and_adds_headers_to_responses():
    rules = f"- filters: [{GATEWAY_CORS}]\n  backendRefs: [{{name: v1, port: 80}}, {{name: v2, port: 80}}]\n"
    answered = gw_decide(rules, "OPTIONS", preflight("https://app.example"), r=0.7)
    assert isinstance(answered, LocalReply) and answered.service_key == V2 and answered.content_type == ""
    assert answered.headers == (("access-control-allow-origin", "https://app.example"),
                                ("access-control-allow-credentials", "true"),
                                ("access-control-allow-methods", "GET,PUT"), ("access-control-max-age", "5"))
    # istiod answers preflights from other origins too, without allowing them
    other = gw_decide(rules, "OPTIONS", preflight("https://app.other"))
    assert isinstance(other, LocalReply) and "access-control-allow-origin" not in dict(other.headers)
    actual = gw_decide(rules, "GET", {"origin": "https://app.example"})
    assert isinstance(actual, Forward)
    assert actual.response_headers == HeaderEdits(set=(("access-control-allow-origin", "https://app.example"),
                                                       ("access-control-allow-credentials", "true")))
    assert gw_decide(rules, "GET", {"origin": "https://app.other"}).response_headers == HeaderEdits()


@pytest.mark.parametrize("rules, status", [
    (f"- filters: [{GATEWAY_CORS}, {{type: RequestRedirect, requestRedirect: {{hostname: b.example}}}}]\n", 302),
    (f"- filters: [{GATEWAY_CORS}]\n  backendRefs: [{{name: v1, port: 80, weight: 0}}]\n", 500),
])
def test_an_httproute_redirect_or_weightless_rule_is_not_touched_by_its_cors_filter(rules, status):
    for method, headers in (("GET", {"origin": "https://app.example"}), ("OPTIONS", preflight("https://app.example"))):
        got = gw_decide(rules, method, headers)
        assert got.status == status and not any(n.startswith("access-control-") for n, _ in got.headers), got


def test_an_httproute_backend_that_does_not_resolve_still_gets_cors():
    rules = f"- filters: [{GATEWAY_CORS}]\n  backendRefs: [{{name: nowhere, port: 80}}]\n"
    assert gw_decide(rules, "OPTIONS", preflight("https://app.example")).status == 200
    got = gw_decide(rules, "GET", {"origin": "https://app.example"})
    assert got.status == 500 and ("access-control-allow-origin", "https://app.example") in got.headers


def test_an_httproute_with_a_cors_filter_is_accepted():
    view = load(inline=SERVICES + "---\n" + ROUTE + f"  - filters: [{GATEWAY_CORS}]\n"
                                                   f"    backendRefs: [{{name: v1, port: 80}}]\n")
    (route,) = view.routes
    assert all(c.status for p in route.parents for c in p.conditions), route.parents


def test_then_set_puts_later_headers_over_earlier_edits():
    edits = HeaderEdits(set=(("A", "1"), ("b", "2")), add=(("a", "3"), ("c", "4")), remove=("a",))
    assert edits.then_set((("a", "9"),)) == HeaderEdits(set=(("b", "2"), ("a", "9")), add=(("c", "4"),),
                                                          remove=("a",))
    assert edits.then_set(()) is edits


def test_config_dump_shows_a_cors_policy_in_its_own_field_names():
    view = virtual_service(f"- route: [{{destination: {{host: v1}}}}]\n  {CORS_YAML[:-1]}, maxAge: 1h, "
                           "unmatchedPreflights: IGNORE, allowOrigin: ['https://old.example']}\n")
    (vs,) = view.virtual_services
    assert dumped(vs)["http"][0]["corsPolicy"] == {
        "allowOrigins": [{"exact": ORIGIN}], "allowOrigin": ["https://old.example"], "allowMethods": ["PUT"],
        "exposeHeaders": ["x-trace"], "maxAge": "3600s", "unmatchedPreflights": "IGNORE"}
