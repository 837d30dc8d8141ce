"""VirtualService documents: what meshcore reads from them, Istio's defaults, and the
refusals istiod's validation would make (field path and reason)."""
import pytest
import yaml

from meshcore.errors import ConfigError
from meshcore.traffic.istio_model import DerivePort, MatchKind
from meshcore.traffic.virtualservice import virtual_service


def vs(spec: str, *, name="reviews", namespace="prod", api="networking.istio.io/v1"):
    doc = {"apiVersion": api, "kind": "VirtualService", "metadata": {"name": name, "namespace": namespace},
           "spec": yaml.safe_load(spec)}
    return virtual_service(doc)


ROUTE = "route: [{destination: {host: reviews}}]"


@pytest.mark.parametrize("api", ["networking.istio.io/v1", "networking.istio.io/v1beta1",
                                 "networking.istio.io/v1alpha3"])
def test_api_versions(api):
    assert vs(f"hosts: [reviews]\nhttp: [{{{ROUTE}}}]", api=api).hosts == ("reviews.prod.svc.cluster.local",)


def test_istio_docs_reviews_example():
    """The example at the top of Istio's VirtualService reference."""
    v = vs("""
hosts: [reviews.prod.svc.cluster.local]
http:
- name: reviews-v2-routes
  match:
  - uri: {prefix: /wpcatalog}
  - uri: {prefix: /consumercatalog}
  rewrite: {uri: /newcatalog}
  route:
  - destination: {host: reviews.prod.svc.cluster.local, subset: v2}
- name: reviews-v1-route
  route:
  - destination: {host: reviews.prod.svc.cluster.local, subset: v1}
""")
    assert v.applies_to_mesh and v.gateways == ()
    first, second = v.http
    assert [m.uri.value for m in first.matches] == ["/wpcatalog", "/consumercatalog"]
    assert first.matches[0].uri.kind is MatchKind.PREFIX
    assert first.rewrite.uri == "/newcatalog"
    assert first.route[0].destination.subset == "v2"
    assert second.matches == () and second.route[0].destination.subset == "v1"


def test_short_names_resolve_in_the_resource_namespace():
    v = vs("hosts: [reviews, ratings.other, '*.shop.svc.cluster.local', 10.0.0.1]\n"
           "http: [{route: [{destination: {host: ratings}}], mirror: {host: shadow}}]")
    assert v.hosts == ("reviews.prod.svc.cluster.local", "ratings.other", "*.shop.svc.cluster.local", "10.0.0.1")
    assert v.http[0].route[0].destination.host == "ratings.prod.svc.cluster.local"
    assert v.http[0].mirrors[0].destination.host == "shadow.prod.svc.cluster.local"


def test_defaults_istio_applies():
    v = vs("""
hosts: [reviews]
http:
- match: [{uri: {exact: /old}}]
  redirect: {uri: /new}
- fault:
    delay: {fixedDelay: 5s}
    abort: {httpStatus: 503}
  mirror: {host: shadow}
  route: [{destination: {host: reviews}}]
""")
    redirect, routed = v.http
    assert redirect.redirect.code == 301                       # MOVED_PERMANENTLY
    assert routed.fault.delay.fixed_delay == 5 and routed.fault.delay.percentage == 0   # nothing delayed
    assert routed.fault.abort.http_status == 503 and routed.fault.abort.percentage == 0
    assert routed.mirrors[0].percentage == 100                  # everything mirrored
    assert routed.timeout is None and routed.retries is None    # no timeout; the mesh's default retries


def test_every_http_field():
    v = vs("""
hosts: [reviews]
gateways: [mesh, istio-system/ingress]
exportTo: [".", shop]
http:
- name: r
  match:
  - name: m
    uri: {regex: "/api/v[0-9]+/.*"}
    scheme: {exact: https}
    method: {exact: GET}
    authority: {prefix: reviews}
    headers: {X-User: {exact: jason}, x-any: {}}
    withoutHeaders: {x-debug: {regex: "*"}}
    queryParams: {v: {exact: "1"}}
    port: 9080
    sourceNamespace: prod
    gateways: [mesh]
    ignoreUriCase: true
    statPrefix: s
  route:
  - destination: {host: reviews, subset: v1, port: {number: 9080}}
    weight: 90
    headers: {request: {set: {x-a: b}}, response: {remove: [x-internal]}}
  - destination: {host: reviews, subset: v2}
    weight: 10
  timeout: 1.5s
  retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "gateway-error,503", retryRemoteLocalities: true,
            retryIgnorePreviousHosts: false, backoff: 50ms}
  fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.5}}}
  mirrors:
  - destination: {host: shadow}
    percentage: {value: 25}
  - destination: {host: shadow2}
  headers:
    request: {set: {x-set: "1"}, add: {x-add: "%HOSTNAME%"}, remove: [x-remove]}
    response: {set: {x-resp: "1"}}
  corsPolicy: {allowOrigins: [{exact: "https://a.example"}], allowMethods: [GET], maxAge: 24h}
""")
    assert v.gateways == ("mesh", "istio-system/ingress") and v.applies_to_mesh
    assert v.export_to == (".", "shop")
    r = v.http[0]
    m = r.matches[0]
    assert m.uri.kind is MatchKind.REGEX and m.uri.pattern.fullmatch("/api/v2/x")
    assert dict(m.headers)["x-user"].value == "jason"                  # names lowercased
    assert dict(m.headers)["x-any"].kind is MatchKind.PRESENT
    assert dict(m.without_headers)["x-debug"].kind is MatchKind.PRESENT  # istiod's `*`
    assert m.port == 9080 and m.ignore_uri_case and m.source_namespace == "prod"
    assert [d.weight for d in r.route] == [90, 10]
    assert r.route[0].destination.port == 9080
    assert r.route[0].headers.request.set == (("x-a", "b"),)
    assert r.timeout == 1.5
    assert r.retries.attempts == 3 and r.retries.per_try_timeout == 0.5 and r.retries.backoff == 0.05
    assert r.retries.retry_ignore_previous_hosts is False and r.retries.retry_remote_localities is True
    assert r.fault.abort.grpc_code == 14 and r.fault.abort.percentage == 0.5
    assert [(x.destination.host.split(".")[0], x.percentage) for x in r.mirrors] == [("shadow", 25), ("shadow2", 100)]
    assert r.headers.request.add == (("x-add", "%HOSTNAME%"),)
    assert r.cors_policy.allow_methods == ("GET",) and r.cors_policy.max_age == 86400
    assert r.cors_policy.allow_origins[0].value == "https://a.example"


def test_mirror_percentage_zero_mirrors_nothing():
    v = vs(f"hosts: [reviews]\nhttp: [{{{ROUTE}, mirror: {{host: s}}, mirrorPercentage: {{value: 0}}}}]")
    assert v.http[0].mirrors == ()
    v = vs(f"hosts: [reviews]\nhttp: [{{{ROUTE}, mirror: {{host: s}}, mirrorPercent: 30}}]")
    assert v.http[0].mirrors[0].percentage == 30


def test_redirect_fields():
    v = vs("""
hosts: [reviews]
http:
- redirect: {authority: new.example, derivePort: FROM_REQUEST_PORT, scheme: https, redirectCode: 308}
- match: [{uri: {prefix: /a}}]
  redirect: {prefixRewrite: /b, port: 8443}
""")
    a, b = (r.redirect for r in v.http)
    assert (a.authority, a.derive_port, a.scheme, a.code) == ("new.example", DerivePort.FROM_REQUEST_PORT, "https", 308)
    assert (b.prefix_rewrite, b.port, b.code) == ("/b", 8443, 301)


def test_direct_response_and_regex_rewrite():
    v = vs("""
hosts: [reviews]
http:
- match: [{uri: {exact: /x}}]
  directResponse: {status: 503, body: {bytes: "dW5rbm93biBlcnJvcg=="}}
- rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: '\\2/instance/\\1'}, authority: x}
  route: [{destination: {host: reviews}}]
""")
    assert v.http[0].direct_response.body == b"unknown error"
    assert v.http[1].rewrite.uri_regex.rewrite == "\\2/instance/\\1" and v.http[1].rewrite.authority == "x"


def test_names_istiod_accepts():
    v = vs("hosts: ['*-canary.prod.svc.cluster.local', Reviews.Prod]\n"
           "http: [{route: [{destination: {host: reviews, subset: V1}}], match: [{sourceLabels: {example.com/app: x}}]}]")
    assert v.http[0].route[0].destination.subset == "V1"
    assert v.http[0].matches[0].source_labels == (("example.com/app", "x"),)


def test_tcp_and_tls_are_kept_not_applied():
    v = vs("hosts: [db]\ntcp: [{match: [{port: 27017}], route: [{destination: {host: db, port: {number: 5555}}}]}]")
    assert v.http == () and len(v.tcp) == 1
    v = vs("hosts: ['*.example.com']\ntls: [{match: [{sniHosts: [a.example.com], port: 443}], "
           "route: [{destination: {host: a.example.com}}]}]")
    assert len(v.tls) == 1


def test_durations_as_istio_takes_them():
    for text, seconds in (("1h", 3600), ("1m30s", 90), ("100ms", 0.1), ("1.5s", 1.5), ("0.001s", 0.001)):
        assert vs(f"hosts: [r]\nhttp: [{{{ROUTE}, timeout: '{text}'}}]").http[0].timeout == pytest.approx(seconds)


def test_creation_timestamp_recorded():
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "a", "namespace": "n", "creationTimestamp": "2024-01-01T00:00:00Z"},
           "spec": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}]}]}}
    assert virtual_service(doc).creation_timestamp == "2024-01-01T00:00:00Z"
    # as YAML reads an unquoted timestamp: a datetime
    doc["metadata"]["creationTimestamp"] = yaml.safe_load("2024-01-01T01:00:00+01:00")
    assert virtual_service(doc).creation_timestamp == "2024-01-01T00:00:00Z"
    doc["metadata"]["creationTimestamp"] = "yesterday"
    with pytest.raises(ConfigError) as e:
        virtual_service(doc)
    assert e.value.path == "metadata.creationTimestamp"


def test_wildcard_host_when_another_gateway_is_named():
    v = vs("hosts: ['*']\ngateways: [mesh, istio-system/gw]\nhttp: [{route: [{destination: {host: a}}]}]")
    assert v.applies_to_mesh and v.hosts == ("*",)


@pytest.mark.parametrize("spec,path,reason", [
    ("hosts: []\nhttp: [{route: [{destination: {host: a}}]}]", "spec.hosts", "delegate"),
    ("hosts: ['*']\nhttp: [{route: [{destination: {host: a}}]}]", "spec.hosts[0]", "not allowed for virtual services bound to the mesh"),
    ("hosts: [a, a]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.hosts[1]", "duplicate hosts"),
    ("hosts: ['*.prod.svc.cluster.local', a.prod.svc.cluster.local]\nhttp: [{route: [{destination: {host: a}}]}]",
     "spec.hosts[1]", "duplicate hosts"),
    ("hosts: [a_b]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.hosts[0]", "invalid"),
    ("hosts: [a]", "spec", "http, tcp or tls must be provided"),
    ("hosts: [a]\nhttp: [{}]", "spec.http[0]", "HTTP route, redirect or direct_response is required"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], redirect: {uri: /x}}]", "spec.http[0]", "both route and redirect"),
    ("hosts: [a]\nhttp: [{redirect: {uri: /x}, fault: {abort: {httpStatus: 500}}}]", "spec.http[0]", "both fault and redirect"),
    ("hosts: [a]\nhttp: [{redirect: {}}]", "spec.http[0].redirect", "must specify URI, authority, scheme, or port"),
    ("hosts: [a]\nhttp: [{redirect: {uri: /x, redirectCode: 200}}]", "spec.http[0].redirect.redirectCode", "must be 3xx"),
    ("hosts: [a]\nhttp: [{redirect: {uri: /x, redirectCode: 305}}]", "spec.http[0].redirect.redirectCode", "Envoy redirects"),
    ("hosts: [a]\nhttp: [{redirect: {uri: /x, scheme: ftp}}]", "spec.http[0].redirect.scheme", "must be \"http\" or \"https\""),
    ("hosts: [a]\nhttp: [{redirect: {uri: /x, prefixRewrite: /y}}]", "spec.http[0].redirect", "one of uri or prefix_rewrite"),
    ("hosts: [a]\nhttp: [{match: [{uri: {exact: /a}}], redirect: {prefixRewrite: /y}}]",
     "spec.http[0].redirect.prefixRewrite", "prefix match type"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], mirror: {host: b}, mirrors: [{destination: {host: c}}]}]",
     "spec.http[0]", "both mirror and mirrors"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], mirrorPercentage: {value: 101}}]",
     "spec.http[0].mirrorPercentage.value", "max value of 100"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], mirrors: [{percentage: {value: 5}}]}]",
     "spec.http[0].mirrors[0].destination", "destination is required for mirrors"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}, weight: -1}]}]", "spec.http[0].route[0].weight", "weight -1 < 0"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}, {destination: {host: b}}]}]", "spec.http[0].route",
     "total destination weight = 0"),
    ("hosts: [a]\nhttp: [{route: [{weight: 1}]}]", "spec.http[0].route[0].destination", "destination is required"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: '*'}}]}]", "spec.http[0].route[0].destination.host", "invalid destination host"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a, subset: V_1}}]}]", "spec.http[0].route[0].destination.subset", "subset name is invalid"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a, port: {number: 0}}}]}]",
     "spec.http[0].route[0].destination.port.number", "must be in the range 1..65535"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], timeout: 0s}]", "spec.http[0].timeout", "greater than 1ms"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], timeout: 1500us}]", "spec.http[0].timeout", "ms precision"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], timeout: 10}]", "spec.http[0].timeout", "not a duration"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], timeout: 1x}]", "spec.http[0].timeout", "not a duration"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: -1}}]", "spec.http[0].retries.attempts", "cannot be negative"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 0, retryOn: 5xx}}]", "spec.http[0].retries",
     "attempts are set to 0 (disabled)"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 2, retryOn: '5xx,bogus'}}]",
     "spec.http[0].retries.retryOn", "'bogus' is not a valid retryOn policy"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 2, retryOn: '5xx, reset'}}]",
     "spec.http[0].retries.retryOn", "' reset' is not a valid retryOn policy"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 2, retryOn: '999'}}]",
     "spec.http[0].retries.retryOn", "not a valid retryOn policy"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 2, perTryTimeout: 2.000000001s}}]",
     "spec.http[0].retries.perTryTimeout", "ms precision"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 2, backoff: 999ns}}]",
     "spec.http[0].retries.backoff", "greater than 1ms"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 2, retryOn: '600,connect-failure'}}]",
     "spec.http[0].retries.retryOn", "'600' is not a valid retryOn policy"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 0, retryRemoteLocalities: false}}]",
     "spec.http[0].retries", "attempts are set to 0"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], retries: {attempts: 2, perTryTimeout: 0s}}]",
     "spec.http[0].retries.perTryTimeout", "greater than 1ms"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {}}]", "spec.http[0].fault", "abort and/or a delay"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {abort: {httpStatus: 700}}}]",
     "spec.http[0].fault.abort.httpStatus", "not in range 200-599"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {abort: {grpcStatus: NOPE}}}]",
     "spec.http[0].fault.abort.grpcStatus", "is not supported"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {abort: {http2Error: X}}}]",
     "spec.http[0].fault.abort.http2Error", "not supported yet"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {abort: {httpStatus: 500, percentage: {value: 150}}}}]",
     "spec.http[0].fault.abort.percentage.value", "neither 0.0, nor in range"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {delay: {fixedDelay: 1s, percentage: {value: 0.00001}}}}]",
     "spec.http[0].fault.delay.percentage.value", "neither 0.0, nor in range"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], fault: {delay: {exponentialDelay: 1s}}}]",
     "spec.http[0].fault.delay.exponentialDelay", "not supported yet"),
    ("hosts: [a]\nhttp: [{match: [{uri: {regex: '(a)\\1'}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].uri.regex", "backreference"),
    ("hosts: [a]\nhttp: [{match: [{uri: {regex: '/a(?=b)'}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].uri.regex", "lookahead"),
    ("hosts: [a]\nhttp: [{match: [{headers: {x: {regex: '(?<!a)b'}}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].headers.x.regex", "lookbehind"),
    ("hosts: [a]\nhttp: [{match: [{uri: {regex: 'a++'}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].uri.regex", "possessive"),
    ("hosts: [a]\nhttp: [{match: [{uri: {regex: '(unclosed'}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].uri.regex", "RE2 style regex"),
    ("hosts: [a]\nhttp: [{match: [{headers: {x: {regex: '*'}}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].headers.x.regex", "RE2 style regex"),
    ("hosts: [a]\nhttp: [{match: [{uri: {regex: ''}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].uri.regex", "should not be empty"),
    ("hosts: [a]\nhttp: [{match: [{method: {prefix: ''}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].method.prefix", "should not be empty"),
    ("hosts: [a]\nhttp: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].uri", "only one of exact, prefix, regex"),
    ("hosts: [a]\nhttp: [{match: [{headers: {'bad header': {exact: x}}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].headers.bad header", "not a valid header name"),
    ("hosts: [a]\nhttp: [{match: [{headers: {x: null}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].headers.x", "cannot be null"),
    ("hosts: [a]\nhttp: [{match: [{headers: {'@request.auth.claims.group': {exact: x}}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].headers.@request.auth.claims.group", "JWT claim based routing"),
    ("hosts: [a]\nhttp: [{match: [{sourceNamespace: Not_A_Namespace}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].sourceNamespace", "is invalid"),
    ("hosts: [a]\nhttp: [{match: [{port: 70000}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].port", "1..65535"),
    ("hosts: [a]\nhttp: [{match: [{sourceLabels: {'a/b/c': x}}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].sourceLabels.a/b/c", "invalid tag key"),
    ("hosts: [a]\nhttp: [{match: [{uri: {exact: /}, bogus: 1}], route: [{destination: {host: a}}]}]",
     "spec.http[0].match[0].bogus", "unknown field"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], headers: {request: {set: {':path': /x}}}}]",
     "spec.http[0].headers.request.set.:path", "cannot have \":\" prefix"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], headers: {response: {set: {host: x}}}}]",
     "spec.http[0].headers.response.set.host", "cannot set Host header"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], headers: {request: {remove: [host]}}}]",
     "spec.http[0].headers.request.remove[0]", "cannot set Host header"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], headers: {request: {set: {x: \"a\\nb\"}}}}]",
     "spec.http[0].headers.request.set.x", "is invalid"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], headers: {request: {set: {x: '100%'}}}}]",
     "spec.http[0].headers.request.set.x", "unterminated"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], rewrite: {authority: a}, headers: {request: {set: {host: b}}}}]",
     "spec.http[0].headers.request.set.host", "authority header cannot be set multiple times"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], rewrite: {}}]", "spec.http[0].rewrite", "at least one of URI"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}}]",
     "spec.http[0].rewrite", "only contain one of URI or UriRegexRewrite"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], rewrite: {uriRegexRewrite: {match: a}}}]",
     "spec.http[0].rewrite.uriRegexRewrite", "requires both Rewrite and Match"),
    ("hosts: [a]\nhttp: [{directResponse: {status: 100}}]", "spec.http[0].directResponse.status", "not in range 200-599"),
    ("hosts: [a]\nhttp: [{delegate: {name: x}}]", "spec.http[0].delegate", "not supported by meshcore"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {allowMethods: [FETCH]}}]",
     "spec.http[0].corsPolicy.allowMethods[0]", "not a supported HTTP method"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {unmatchedPreflights: DROP}}]",
     "spec.http[0].corsPolicy.unmatchedPreflights", "not one of UNSPECIFIED, FORWARD, IGNORE"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {allowOrigins: [{prefix: ''}]}}]",
     "spec.http[0].corsPolicy.allowOrigins[0].prefix", "prefix string match should not be empty"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {allowOrigins: [{regex: '(a'}]}}]",
     "spec.http[0].corsPolicy.allowOrigins[0].regex", ""),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {maxAge: 1500ms}}]",
     "spec.http[0].corsPolicy.maxAge", "seconds precision"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {allowHeaders: ['x y']}}]",
     "spec.http[0].corsPolicy.allowHeaders[0]", "not a valid header name"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {allowCredentials: maybe}}]",
     "spec.http[0].corsPolicy.allowCredentials", ""),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {allowPrivateNetwork: true}}]",
     "spec.http[0].corsPolicy.allowPrivateNetwork", "unknown field"),
    ("hosts: [a]\ngateways: [a/b/c]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.gateways[0]", "invalid"),
    ("hosts: [a]\nexportTo: [prod, .]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.exportTo[1]",
     "duplicate entries in exportTo: . and current namespace prod"),
    ("hosts: [a]\nexportTo: ['*', b]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.exportTo",
     "both public (*) and non-public"),
    ("hosts: [a]\ntcp: [{route: []}]", "spec.tcp[0].route", "TCP route is required"),
    ("hosts: [a]\ntcp: [{match: [{port: 0, destinationSubnets: [300.0.0.0/8]}], route: [{destination: {host: a}}]}]",
     "spec.tcp[0].match[0].destinationSubnets[0]", "not an IP address or CIDR"),
    ("hosts: [a.example.com]\ntls: [{route: [{destination: {host: a}}]}]", "spec.tls[0].match",
     "at least one match condition"),
    ("hosts: [a.example.com]\ntls: [{match: [{port: 443}], route: [{destination: {host: a}}]}]",
     "spec.tls[0].match[0].sniHosts", "at least one SNI host"),
    ("hosts: [a.example.com]\ntls: [{match: [{sniHosts: [b.example.com]}], route: [{destination: {host: a}}]}]",
     "spec.tls[0].match[0].sniHosts[0]", "not a compatible subset"),
    ("hosts: [a]\nexportTo: ['~']\nhttp: [{route: [{destination: {host: a}}]}]", "spec.exportTo[0]",
     "exportTo ~ (none) is not allowed"),
    ("hosts: [a]\nexportTo: [bad_ns]\nhttp: [{route: [{destination: {host: a}}]}]", "spec.exportTo[0]",
     "valid DNS 1123 label"),
    ("hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]\nbogus: 1", "spec.bogus", "unknown field"),
])
def test_refusals(spec, path, reason):
    with pytest.raises(ConfigError) as e:
        vs(spec)
    assert e.value.path == path, e.value
    assert reason in e.value.reason, e.value.reason


def test_refusal_names_the_document_fields():
    with pytest.raises(ConfigError) as e:
        virtual_service({"apiVersion": "networking.istio.io/v2", "kind": "VirtualService", "metadata": {"name": "a"},
                         "spec": {}})
    assert e.value.path == "apiVersion"


def test_jwt_claims_accepted_on_a_gateway_only_virtual_service():
    v = vs("hosts: [a.example.com]\ngateways: [istio-system/gw]\n"
           "http: [{match: [{headers: {'@request.auth.claims.group': {exact: x}}}], route: [{destination: {host: a}}]}]")
    assert not v.applies_to_mesh
