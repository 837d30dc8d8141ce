"""Loading Gateway API routes: the CRD defaults meshcore fills in itself, and what the
CRD's schema and CEL rules refuse at `kubectl apply`, refused with its field path."""
from __future__ import annotations

import textwrap
from datetime import datetime, timezone

import pytest
import yaml

from meshcore.errors import ConfigError
from meshcore.sources.config import parse
from meshcore.traffic.gateway_api import duration, grpc_route, http_route, reference_grant
from meshcore.traffic.model import (GATEWAY_GROUP, BackendRef, FilterType, GrantFrom, GrantTo, GRPCMethodMatch,
                                    GRPCRouteMatch, HeaderModifier, HTTPRouteMatch, ParentRef, PathMatch,
                                    PathMatchType, PathModifier, PathModifierType, RequestMirror, RequestRedirect,
                                    Retry, Timeouts, UnsupportedFilter, ValueMatch, ValueMatchType)

PARENT = '{group: "", kind: Service, name: echo}'


def doc(spec: str, kind: str = "HTTPRoute", version: str = "v1", meta: str = "{name: r, namespace: shop}") -> dict:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ") if spec.strip() else "  {}"
    return yaml.safe_load(f"apiVersion: gateway.networking.k8s.io/{version}\nkind: {kind}\n"
                          f"metadata: {meta}\nspec:\n{body}\n")


def rule(text: str) -> dict:
    return doc(f"parentRefs: [{PARENT}]\nrules:\n- " + textwrap.indent(textwrap.dedent(text).strip(), "  ")[2:])


def only_rule(text: str):
    return http_route(rule(text)).rules[0]


# -- defaults ----------------------------------------------------------------------------------

def test_a_route_without_rules_matches_every_request_with_path_prefix_slash():
    route = http_route(doc(f"parentRefs: [{PARENT}]"))
    assert [r.matches for r in route.rules] == [(HTTPRouteMatch(PathMatch(PathMatchType.PATH_PREFIX, "/")),)]
    assert route.rules[0].backend_refs == ()


DEFAULTS = [
    ("rule without matches: PathPrefix /", "backendRefs: [{name: a, port: 80}]",
     lambda r: r.matches == (HTTPRouteMatch(),) and r.matches[0].path == PathMatch(PathMatchType.PATH_PREFIX, "/")),
    ("empty matches: PathPrefix /", "matches: []",
     lambda r: r.matches == (HTTPRouteMatch(),)),
    ("a match without a path: PathPrefix /", "matches: [{method: GET}]",
     lambda r: r.matches[0].path == PathMatch(PathMatchType.PATH_PREFIX, "/") and r.matches[0].method == "GET"),
    ("a path without a type: PathPrefix", "matches: [{path: {value: /foo}}]",
     lambda r: r.matches[0].path == PathMatch(PathMatchType.PATH_PREFIX, "/foo")),
    ("a path without a value: /", "matches: [{path: {type: Exact}}]",
     lambda r: r.matches[0].path == PathMatch(PathMatchType.EXACT, "/")),
    ("a header match without a type: Exact, name in lower case",
     "matches: [{headers: [{name: X-Version, value: v1}]}]",
     lambda r: r.matches[0].headers == (ValueMatch("x-version", "v1", ValueMatchType.EXACT),)),
    ("a query match without a type: Exact, name as written", "matches: [{queryParams: [{name: Q, value: v}]}]",
     lambda r: r.matches[0].query_params == (ValueMatch("Q", "v", ValueMatchType.EXACT),)),
    ("the first of header names equal but for case", "matches: [{headers: [{name: a, value: '1'}, "
                                                     "{name: A, value: '2'}]}]",
     lambda r: r.matches[0].headers == (ValueMatch("a", "1"),)),
    ("a backend's weight: 1, its namespace the route's, group core, kind Service",
     "backendRefs: [{name: a, port: 80}]",
     lambda r: r.backend_refs == (BackendRef("a", "shop", 80, "", "Service", 1),)),
    ("weight 0 is kept", "backendRefs: [{name: a, port: 80, weight: 0}]", lambda r: r.backend_refs[0].weight == 0),
    ("a redirect answers 302", "filters: [{type: RequestRedirect, requestRedirect: {hostname: x.example}}]",
     lambda r: r.filters == (RequestRedirect(hostname="x.example", status_code=302),)),
    ("a mirror without percent or fraction mirrors everything",
     "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}}}]",
     lambda r: r.filters == (RequestMirror(BackendRef("m", "shop", 80), 100.0),)),
    ("a mirror fraction's denominator: 100",
     "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, fraction: {numerator: 5}}}]",
     lambda r: r.filters[0].percent == 5.0),
    ("a mirror fraction as a percentage", "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, "
                                          "port: 80}, fraction: {numerator: 1, denominator: 3}}}]",
     lambda r: abs(r.filters[0].percent - 100 / 3) < 1e-9),
    ("header modifier names in lower case, the first of equal names kept",
     "filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: '1'}, "
     "{name: x-a, value: '2'}], add: [{name: B, value: '3'}], remove: [C]}}]",
     lambda r: r.filters == (HeaderModifier(FilterType.REQUEST_HEADER_MODIFIER, (("x-a", "1"),), (("b", "3"),),
                                            ("c",)),)),
    ("timeouts in seconds", "timeouts: {request: 10s, backendRequest: 500ms}",
     lambda r: r.timeouts == Timeouts(10.0, 0.5)),
    ("a zero request timeout lets backendRequest be anything", "timeouts: {request: 0s, backendRequest: 1h}",
     lambda r: r.timeouts == Timeouts(0.0, 3600.0)),
    ("retry: attempts unset is istiod's 2", "retry: {codes: [503, 502], backoff: 100ms}",
     lambda r: r.retry == Retry(None, (503, 502), 0.1) and r.retry.effective_attempts == 2),
    ("ExtensionRef is kept, to be reported", "filters: [{type: ExtensionRef, extensionRef: {group: example.com, "
                                             "kind: Thing, name: t}}]",
     lambda r: r.filters == (UnsupportedFilter(FilterType.EXTENSION_REF, "Thing t (example.com)"),)),
    ("CORS, with its 5 s max age",
     "filters: [{type: CORS, cors: {allowOrigins: ['http://*.example.com:8080'], allowMethods: [GET, PUT],"
     " allowHeaders: [X-A], exposeHeaders: ['*']}}]",
     lambda r: r.filters[0].allow_origins == ("http://*.example.com:8080",) and r.filters[0].max_age == 5
     and r.filters[0].allow_methods == ("GET", "PUT")),
    ("a rewrite with ReplacePrefixMatch", "matches: [{path: {value: /a}}]\nfilters: [{type: URLRewrite, urlRewrite: "
                                          "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
     lambda r: r.filters[0].path == PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, "/b")),
]


@pytest.mark.parametrize("text,check", [(t, c) for _, t, c in DEFAULTS], ids=[d for d, _, _ in DEFAULTS])
def test_rule_defaults(text, check):
    assert check(only_rule(text))


def test_parent_ref_defaults_are_a_gateway_in_the_routes_namespace():
    route = http_route(doc("parentRefs: [{name: waypoint}, {group: '', kind: Service, name: echo, port: 80}, "
                           "{group: core, kind: Service, name: other, namespace: front}]"))
    assert route.parent_refs == (ParentRef("waypoint", "shop", GATEWAY_GROUP, "Gateway"),
                                 ParentRef("echo", "shop", "", "Service", port=80),
                                 ParentRef("other", "front", "core", "Service"))
    assert [p.is_service for p in route.parent_refs] == [False, True, True]


def test_metadata_namespace_defaults_and_creation_timestamp_is_read_either_way():
    assert http_route(doc("{}", meta="{name: r}")).namespace == "default"
    stamp = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    for meta in ("{name: r, creationTimestamp: '2024-05-01T12:00:00Z'}", "{name: r, creationTimestamp: "
                                                                          "2024-05-01T12:00:00Z}"):
        assert http_route(doc("{}", meta=meta)).created == stamp


def test_versions_each_kind_is_read_in():
    assert http_route(doc("{}", version="v1beta1")).name == "r"
    assert grpc_route(doc("{}", kind="GRPCRoute", version="v1alpha2")).rules == ()
    grant = reference_grant(doc("from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: front}]\n"
                                "to: [{group: '', kind: Service}]", kind="ReferenceGrant", version="v1beta1"))
    assert grant.from_ == (GrantFrom(GATEWAY_GROUP, "HTTPRoute", "front"),) and grant.to == (GrantTo("", "Service"),)


def test_grpc_route_defaults():
    route = grpc_route(doc(f"parentRefs: [{PARENT}]\nrules:\n- backendRefs: [{{name: a, port: 50051}}]\n"
                           "- matches: [{method: {service: pkg.Svc}, headers: [{name: X-A, value: b}]}]",
                           kind="GRPCRoute"))
    assert route.rules[0].matches == (GRPCRouteMatch(),)
    assert route.rules[1].matches == (GRPCRouteMatch(GRPCMethodMatch(ValueMatchType.EXACT, "pkg.Svc", ""),
                                                     (ValueMatch("x-a", "b"),)),)


@pytest.mark.parametrize("text,seconds", [("1h", 3600), ("1h30m", 5400), ("10s", 10), ("500ms", 0.5),
                                          ("1m1s1ms", 61.001), ("0s", 0), ("99999ms", 99.999)])
def test_durations(text, seconds):
    assert duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1", "1.5s", "1d", "-1s", "100000s", "1h1h1h1h1h", "1 s", "", "1us"])
def test_durations_refused(text):
    with pytest.raises(ConfigError, match="x"):
        duration(text, "x")


# -- refusals -----------------------------------------------------------------------------------

REFUSED = [
    # (rule text, field path, reason fragment)
    ("matches: [{path: {type: Prefix, value: /}}]", "spec.rules[0].matches[0].path.type", "Unsupported value"),
    ("matches: [{path: {value: foo}}]", "spec.rules[0].matches[0].path.value", "start with '/'"),
    ("matches: [{path: {value: /a//b}}]", "spec.rules[0].matches[0].path.value", "'//'"),
    ("matches: [{path: {value: /a/../b}}]", "spec.rules[0].matches[0].path.value", "'/../'"),
    ("matches: [{path: {value: /a%2fb}}]", "spec.rules[0].matches[0].path.value", "'%2f'"),
    ("matches: [{path: {value: /a/.}}]", "spec.rules[0].matches[0].path.value", "must not end with '/.'"),
    ("matches: [{path: {value: '/a b'}}]", "spec.rules[0].matches[0].path.value", "characters a path may not"),
    ("matches: [{path: {type: RegularExpression, value: '/(a)\\1'}}]", "spec.rules[0].matches[0].path.value",
     "backreference"),
    ("matches: [{path: {type: RegularExpression, value: '/(?!admin).*'}}]", "spec.rules[0].matches[0].path.value",
     "lookahead"),
    ("matches: [{path: {type: RegularExpression, value: '/[a'}}]", "spec.rules[0].matches[0].path.value",
     "not a regular expression"),
    ("matches: [{headers: [{name: a, type: RegularExpression, value: '(?<=x)y'}]}]",
     "spec.rules[0].matches[0].headers[0].value", "lookbehind"),
    ("matches: [{headers: [{name: 'a:b', value: x}]}]", "spec.rules[0].matches[0].headers[0].name",
     "not an HTTP header name"),
    ("matches: [{headers: [{name: a, value: x}, {name: a, value: y}]}]", "spec.rules[0].matches[0].headers[1].name",
     "Duplicate value"),
    ("matches: [{headers: [{name: a, value: ''}]}]", "spec.rules[0].matches[0].headers[0].value", "must not be empty"),
    ("matches: [{headers: [{name: a, type: Prefix, value: x}]}]", "spec.rules[0].matches[0].headers[0].type",
     "Unsupported value"),
    ("matches: [{queryParams: [{name: q, value: x}, {name: q, value: y}]}]",
     "spec.rules[0].matches[0].queryParams[1].name", "Duplicate value"),
    ("matches: [{method: get}]", "spec.rules[0].matches[0].method", "is not one of"),
    ("matches: [{port: 80}]", "spec.rules[0].matches[0].port", "unknown field"),
    ("backendRefs: [{name: a}]", "spec.rules[0].backendRefs[0].port", "Must have port for Service reference"),
    ("backendRefs: [{name: a, port: 0}]", "spec.rules[0].backendRefs[0].port", "out of range"),
    ("backendRefs: [{name: a, port: 80, weight: -1}]", "spec.rules[0].backendRefs[0].weight", "out of range"),
    ("backendRefs: [{name: a, port: 80, weight: 1000001}]", "spec.rules[0].backendRefs[0].weight", "out of range"),
    ("backendRefs: [{name: a, port: 80, weight: '1'}]", "spec.rules[0].backendRefs[0].weight", "integer"),
    ("filters: [{type: Rewrite}]", "spec.rules[0].filters[0].type", "Unsupported value"),
    ("filters: [{type: RequestHeaderModifier}]", "spec.rules[0].filters[0].requestHeaderModifier",
     "must be specified for RequestHeaderModifier"),
    ("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, urlRewrite: {}}]",
     "spec.rules[0].filters[0].urlRewrite", "must be nil if the filter.type is not URLRewrite"),
    ("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, "
     "requestHeaderModifier: {}}]", "spec.rules[0].filters", "cannot be repeated"),
    ("filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]",
     "spec.rules[0].filters", "not both"),
    ("filters: [{type: RequestRedirect, requestRedirect: {}}]\nbackendRefs: [{name: a, port: 80}]", "spec.rules[0]",
     "RequestRedirect filter must not be used together with backendRefs"),
    ("filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]",
     "spec.rules[0].filters[0].requestRedirect.statusCode", "Unsupported value"),
    ("filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]",
     "spec.rules[0].filters[0].requestRedirect.scheme", "Unsupported value"),
    ("filters: [{type: RequestRedirect, requestRedirect: {hostname: '*.example.com'}}]",
     "spec.rules[0].filters[0].requestRedirect.hostname", "DNS name"),
    ("filters: [{type: URLRewrite, urlRewrite: {hostname: ''}}]", "spec.rules[0].filters[0].urlRewrite.hostname",
     "must not be empty"),
    ("filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath}}}]",
     "spec.rules[0].filters[0].requestRedirect.path.replaceFullPath", "must be specified"),
    ("filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replacePrefixMatch: /a}}}]",
     "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath", "must be specified"),
    ("matches: [{path: {type: Exact, value: /a}}]\nfilters: [{type: URLRewrite, urlRewrite: {path: "
     "{type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]", "spec.rules[0].filters", "exactly one PathPrefix"),
    ("matches: [{path: {value: /a}}, {path: {value: /b}}]\nbackendRefs: [{name: a, port: 80, filters: "
     "[{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}]",
     "spec.rules[0].backendRefs[0].filters", "exactly one PathPrefix"),
    ("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, percent: 5, "
     "fraction: {numerator: 1}}}]", "spec.rules[0].filters[0].requestMirror", "Only one of percent or fraction"),
    ("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, percent: 101}}]",
     "spec.rules[0].filters[0].requestMirror.percent", "out of range"),
    ("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, "
     "fraction: {numerator: 3, denominator: 2}}}]", "spec.rules[0].filters[0].requestMirror.fraction",
     "numerator must be less than or equal to denominator"),
    ("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}}}]",
     "spec.rules[0].filters[0].requestMirror.backendRef.port", "Must have port"),
    ("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: '1'}, "
     "{name: a, value: '2'}]}}]", "spec.rules[0].filters[0].requestHeaderModifier.set[1].name", "Duplicate value"),
    ("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [a, a]}}]",
     "spec.rules[0].filters[0].requestHeaderModifier.remove[1]", "Duplicate value"),
    ("filters: [{type: CORS, cors: {allowOrigins: ['*', 'https://a.example']}}]",
     "spec.rules[0].filters[0].cors.allowOrigins", "AllowOrigins cannot contain '*' alongside other origins"),
    ("filters: [{type: CORS, cors: {allowOrigins: [xpto.com]}}]", "spec.rules[0].filters[0].cors.allowOrigins[0]",
     "not an origin"),
    ("filters: [{type: CORS, cors: {allowOrigins: ['http://www.example.com:111111']}}]",
     "spec.rules[0].filters[0].cors.allowOrigins[0]", "not an origin"),
    ("filters: [{type: CORS, cors: {allowOrigins: ['http://bar.*.com']}}]",
     "spec.rules[0].filters[0].cors.allowOrigins[0]", "not an origin"),
    ("filters: [{type: CORS, cors: {allowOrigins: ['http://www.example.com/cart']}}]",
     "spec.rules[0].filters[0].cors.allowOrigins[0]", "not an origin"),
    ("filters: [{type: CORS, cors: {allowMethods: [BAZINGA]}}]", "spec.rules[0].filters[0].cors.allowMethods[0]",
     "Unsupported value"),
    ("filters: [{type: CORS, cors: {allowMethods: ['*', GET]}}]", "spec.rules[0].filters[0].cors.allowMethods",
     "AllowMethods cannot contain '*' alongside other methods"),
    ("filters: [{type: CORS, cors: {maxAge: 0}}]", "spec.rules[0].filters[0].cors.maxAge", "below 1"),
    ("timeouts: {request: 1s, backendRequest: 2s}", "spec.rules[0].timeouts",
     "backendRequest timeout cannot be longer than request timeout"),
    ("timeouts: {request: 10}", "spec.rules[0].timeouts.request", "expected a string"),
    ("timeouts: {request: 1.5s}", "spec.rules[0].timeouts.request", "not a Gateway API duration"),
    ("retry: {attempts: 0}", "spec.rules[0].retry.attempts", "below 1"),
    ("retry: {codes: [200]}", "spec.rules[0].retry.codes[0]", "out of range"),
    ("retry: {codes: [503, 503]}", "spec.rules[0].retry.codes[1]", "Duplicate value"),
    ("name: Bad_Name", "spec.rules[0].name", "DNS name"),
    ("sessionPersistance: {}", "spec.rules[0].sessionPersistance", "unknown field"),
]


@pytest.mark.parametrize("text,path,reason", REFUSED, ids=[p + ": " + r for _, p, r in REFUSED])
def test_rule_refusals(text, path, reason):
    with pytest.raises(ConfigError) as caught:
        http_route(rule(text))
    assert caught.value.path == path
    assert reason in caught.value.reason


SPEC_REFUSED = [
    ("rules: []", "spec.rules", "at least one rule"),
    ("rules: [{name: a}, {name: a}]", "spec.rules[1].name", "Rule name must be unique"),
    ("rules: " + str([{"matches": [{}] * 64}, {"matches": [{}] * 64}, {"matches": [{}]}]).replace("'", '"'),
     "spec.rules", "must be less than 128"),
    ("rules: " + str([{}] * 17), "spec.rules", "at most 16"),
    ("hostnames: [Example.com]", "spec.hostnames[0]", "DNS name"),
    ("hostnames: ['10.0.0.1.']", "spec.hostnames[0]", "DNS name"),
    ("parentRefs: [{kind: Service, name: a, port: 0}]", "spec.parentRefs[0].port", "out of range"),
    ("parentRefs: [{kind: Service, name: a, namespace: Shop}]", "spec.parentRefs[0].namespace", "namespace name"),
    ("parentRefs: [{group: '', kind: Service, name: a}, {group: '', kind: Service, name: a}]", "spec.parentRefs",
     "must be specified when parentRefs includes 2 or more references to the same parent"),
    ("parentRefs: [{group: '', kind: Service, name: a, port: 80}, {group: '', kind: Service, name: a}]",
     "spec.parentRefs", "must be specified when parentRefs includes 2 or more references to the same parent"),
    ("parentRefs: [{group: '', kind: Service, name: a, port: 80}, {group: '', kind: Service, name: a, port: 80}]",
     "spec.parentRefs", "must be unique"),
    ("parentRefs: [{group: '', kind: Service}]", "spec.parentRefs[0].name", "required field is missing"),
    ("useDefaultGateways: Some", "spec.useDefaultGateways", "Unsupported value"),
    ("parentRefs: []\nfilters: []", "spec.filters", "unknown field"),
]


@pytest.mark.parametrize("text,path,reason", SPEC_REFUSED, ids=[p + ": " + r for _, p, r in SPEC_REFUSED])
def test_spec_refusals(text, path, reason):
    with pytest.raises(ConfigError) as caught:
        http_route(doc(text))
    assert caught.value.path == path
    assert reason in caught.value.reason


def test_distinct_ports_on_the_same_parent_are_accepted():
    route = http_route(doc("parentRefs: [{group: '', kind: Service, name: a, port: 80}, "
                           "{group: '', kind: Service, name: a, port: 81}]"))
    assert [p.port for p in route.parent_refs] == [80, 81]


GRPC_REFUSED = [
    ("matches: [{method: {}}]", "spec.rules[0].matches[0].method", "One or both of 'service' or 'method'"),
    ("matches: [{method: {service: 'pkg/Svc'}}]", "spec.rules[0].matches[0].method.service",
     "service must only contain valid characters"),
    ("matches: [{method: {method: 'Get.Thing'}}]", "spec.rules[0].matches[0].method.method",
     "method must only contain valid characters"),
    ("matches: [{method: {type: RegularExpression, service: '(?=a)'}}]", "spec.rules[0].matches[0].method.service",
     "lookahead"),
    ("matches: [{method: {type: Prefix, service: a}}]", "spec.rules[0].matches[0].method.type", "Unsupported value"),
    ("filters: [{type: RequestRedirect, requestRedirect: {}}]", "spec.rules[0].filters[0].requestRedirect",
     "unknown field"),
    ("filters: [{type: URLRewrite}]", "spec.rules[0].filters[0].type", "Unsupported value"),
    ("backendRefs: [{name: a}]", "spec.rules[0].backendRefs[0].port", "Must have port"),
]


@pytest.mark.parametrize("text,path,reason", GRPC_REFUSED, ids=[p + ": " + r for _, p, r in GRPC_REFUSED])
def test_grpc_refusals(text, path, reason):
    body = f"parentRefs: [{PARENT}]\nrules:\n- " + textwrap.indent(text, "  ")[2:]
    with pytest.raises(ConfigError) as caught:
        grpc_route(doc(body, kind="GRPCRoute"))
    assert caught.value.path == path
    assert reason in caught.value.reason


DOCUMENT_REFUSED = [
    (dict(version="v1alpha2"), "apiVersion", "is not gateway.networking.k8s.io/v1 or"),
    (dict(meta="{name: r, namespace: Shop}"), "metadata.namespace", "namespace name"),
    (dict(meta="{namespace: shop}"), "metadata.name", "required field is missing"),
    (dict(meta="{name: r, creationTimestamp: yesterday}"), "metadata.creationTimestamp", "RFC 3339"),
]


@pytest.mark.parametrize("kwargs,path,reason", DOCUMENT_REFUSED, ids=[p for _, p, _ in DOCUMENT_REFUSED])
def test_document_refusals(kwargs, path, reason):
    with pytest.raises(ConfigError) as caught:
        http_route(doc("{}", **kwargs))
    assert caught.value.path == path and reason in caught.value.reason


def test_reference_grant_refusals():
    with pytest.raises(ConfigError) as caught:
        reference_grant(doc("from: []\nto: [{group: '', kind: Service}]", kind="ReferenceGrant"))
    assert caught.value.path == "spec.from"
    with pytest.raises(ConfigError) as caught:
        reference_grant(doc("from: [{group: gateway.networking.k8s.io, kind: HTTPRoute}]\nto: [{group: '', "
                            "kind: Service}]", kind="ReferenceGrant"))
    assert caught.value.path == "spec.from[0].namespace"


# -- through the configuration loader -----------------------------------------------------------

def test_a_refusal_names_file_document_and_field(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ok, namespace: a}\n"
                    "spec: {}\n---\n" + yaml.safe_dump(rule("matches: [{path: {type: RegularExpression, "
                                                            "value: '(?!x)'}}]")))
    with pytest.raises(ConfigError) as caught:
        parse([str(path)])
    assert str(caught.value).startswith(f"{path}, document 2, at spec.rules[0].matches[0].path.value: ")


def test_a_route_defined_twice_is_refused():
    text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: a}\nspec: {}\n"
    with pytest.raises(ConfigError, match="HTTPRoute a/r is defined twice"):
        parse(inline=text + "---\n" + text)
    # a GRPCRoute of the same name is another resource
    assert len(parse(inline=text + "---\n" + text.replace("kind: HTTPRoute", "kind: GRPCRoute")).resources) == 2


def test_the_unknown_kind_message_names_the_route_kinds():
    with pytest.raises(ConfigError, match="HTTPRoute, GRPCRoute, ReferenceGrant"):
        parse(inline="apiVersion: v1\nkind: TCPRoute\nmetadata: {name: r}\n")


@pytest.mark.parametrize("text,deadlines", [
    ("backendRefs: []", (None, None)),
    ("timeouts: {request: 10s}", (10.0, None)),
    ("timeouts: {request: 0s}", (None, None)),
    ("timeouts: {request: 10s, backendRequest: 2s}", (2.0, None)),      # istiod: it replaces the request's
    ("timeouts: {request: 10s, backendRequest: 2s}\nretry: {attempts: 3}", (10.0, 2.0)),
    ("timeouts: {backendRequest: 0s}\nretry: {}", (None, None)),
])
def test_deadlines_as_istiod_converts_timeouts(text, deadlines):
    assert only_rule(text).deadlines == deadlines


def test_retry_conditions_as_istiod_sets_them():
    retry = only_rule("retry: {attempts: 3, codes: [503]}").retry
    assert retry.effective_attempts == 3
    assert retry.retry_on == ("connect-failure", "refused-stream", "unavailable", "cancelled", "503")
