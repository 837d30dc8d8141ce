"""LocalRateLimit and the waypoint EnvoyFilter with local_ratelimit: what is read, what is refused."""
import copy

import pytest
import yaml

from meshcore.errors import ConfigError
from meshcore.traffic.ratelimit_config import (HeaderToAdd, Origin, RateLimitTarget, TargetKind, TokenBucketSpec,
                                               envoy_filter_rate_limit, load_rate_limits, local_rate_limit,
                                               rate_limit_policy)

LOCAL = yaml.safe_load("""
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {name: reviews, namespace: shop}
spec:
  targetRefs:
  - {group: "", kind: Service, name: reviews}
  tokenBucket: {maxTokens: 100, tokensPerFill: 10, fillInterval: 1s}
""")

# the shape Istio's own waypoint test applies (targetRefs, SIDECAR_INBOUND, before the router),
# carrying the local_ratelimit filter of Istio's rate limiting task
ENVOY_FILTER = yaml.safe_load("""
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: waypoint-ratelimit, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 4, tokens_per_fill: 4, fill_interval: 60s}
            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value: {numerator: 100, denominator: HUNDRED}
            filter_enforced:
              runtime_key: local_rate_limit_enforced
              default_value: {numerator: 100, denominator: HUNDRED}
            response_headers_to_add:
            - append: false
              header: {key: x-local-rate-limit, value: 'true'}
            enable_x_ratelimit_headers: DRAFT_VERSION_03
""")
FILTER_AT = "spec.configPatches[0].patch.value.typed_config.value"


def changed(doc, path, value):
    """A copy of doc with the dotted path set (value DELETE removes it)."""
    out = copy.deepcopy(doc)
    node, keys = out, path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DELETE = object()
EF = "spec.configPatches.0.patch.value.typed_config.value"


# -- LocalRateLimit --------------------------------------------------------------------------------

def test_local_rate_limit():
    p = local_rate_limit(LOCAL, "limits.yaml")
    assert (p.name, p.namespace, p.origin, p.key) == ("reviews", "shop", Origin.LOCAL_RATE_LIMIT,
                                                      "LocalRateLimit/shop/reviews")
    assert p.targets == (RateLimitTarget(TargetKind.SERVICE, "reviews"),)
    assert p.bucket == TokenBucketSpec(100, 10, 1.0) and p.bucket.fill_rate == 10
    assert (p.per_source, p.enabled_percent, p.enforced_percent, p.status, p.x_ratelimit_headers) == \
        (False, 100.0, 100.0, 429, True)


@pytest.mark.parametrize("path, value, expected", [
    ("spec.tokenBucket", {"maxTokens": 5, "fillInterval": "1m"}, TokenBucketSpec(5, 1, 60.0)),
    ("spec.tokenBucket", {"maxTokens": "5", "fillInterval": "250ms"}, TokenBucketSpec(5, 1, 0.25)),
    ("spec.tokenBucket", {"maxTokens": 1, "fillInterval": "1h30m"}, TokenBucketSpec(1, 1, 5400.0)),
    ("spec.tokenBucket", {"maxTokens": 1, "fillInterval": "50ms"}, TokenBucketSpec(1, 1, 0.05)),
])
def test_local_durations_and_defaults(path, value, expected):
    assert local_rate_limit(changed(LOCAL, path, value)).bucket == expected


def test_local_targets_per_source_and_sections():
    doc = changed(LOCAL, "spec.targetRefs", [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"},
        {"group": "core", "kind": "Service", "name": "reviews", "namespace": "shop"},
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "reviews", "sectionName": "v2"},
        {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "name": "ratings"},
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"},     # repeated: once
    ])
    doc["spec"]["perSource"] = True
    p = local_rate_limit(doc)
    assert p.per_source
    assert [str(t) for t in p.targets] == ["Gateway waypoint", "Service reviews", "HTTPRoute reviews rule v2",
                                           "GRPCRoute ratings"]


@pytest.mark.parametrize("path, value, where, why", [
    ("apiVersion", "meshcore.dev/v1", "apiVersion", "meshcore.dev/v1alpha1"),
    ("spec", DELETE, "spec", "required"),
    ("spec.bogus", 1, "spec.bogus", "unknown field"),
    ("spec.targetRefs", [], "spec.targetRefs", "at least one target"),
    ("spec.targetRefs", [{"kind": "Service", "name": f"s{i}"} for i in range(17)], "spec.targetRefs", "at most 16"),
    ("spec.targetRefs.0.kind", "Pod", "spec.targetRefs[0].kind", "cannot be a target"),
    ("spec.targetRefs.0.kind", "Gateway", "spec.targetRefs[0].group", "gateway.networking.k8s.io"),
    ("spec.targetRefs.0.group", "networking.istio.io", "spec.targetRefs[0].group", "not 'networking.istio.io'"),
    ("spec.targetRefs.0.namespace", "other", "spec.targetRefs[0].namespace", "its own namespace shop"),
    ("spec.targetRefs.0.sectionName", "http", "spec.targetRefs[0].sectionName", "takes no sectionName"),
    ("spec.targetRefs.0.name", DELETE, "spec.targetRefs[0].name", "required"),
    ("spec.targetRefs.0", {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"},
     "spec.targetRefs[0]", "root namespace"),
    ("spec.tokenBucket.maxTokens", 0, "spec.tokenBucket.maxTokens", "below 1"),
    ("spec.tokenBucket.maxTokens", 2 ** 32, "spec.tokenBucket.maxTokens", "above"),
    ("spec.tokenBucket.maxTokens", 1.5, "spec.tokenBucket.maxTokens", "whole number"),
    ("spec.tokenBucket.maxTokens", DELETE, "spec.tokenBucket.maxTokens", "required"),
    ("spec.tokenBucket.tokensPerFill", 0, "spec.tokenBucket.tokensPerFill", "below 1"),
    ("spec.tokenBucket.fillInterval", "10ms", "spec.tokenBucket.fillInterval", "at least 50ms"),
    ("spec.tokenBucket.fillInterval", "-1s", "spec.tokenBucket.fillInterval", "at least 50ms"),
    ("spec.tokenBucket.fillInterval", 1, "spec.tokenBucket.fillInterval", "with a unit"),
    ("spec.tokenBucket.fillInterval", "1 second", "spec.tokenBucket.fillInterval", "not a duration"),
    ("spec.tokenBucket.fillInterval", DELETE, "spec.tokenBucket.fillInterval", "required"),
    ("spec.tokenBucket.burst", 3, "spec.tokenBucket.burst", "unknown field"),
    ("spec.perSource", "yes", "spec.perSource", "true or false"),
    ("metadata.name", DELETE, "metadata.name", "required"),
    ("metadata.extra", 1, "metadata.extra", "unknown field"),
])
def test_local_refusals(path, value, where, why):
    with pytest.raises(ConfigError) as err:
        local_rate_limit(changed(LOCAL, path, value))
    assert err.value.path == where and why in err.value.reason


# -- EnvoyFilter ---------------------------------------------------------------------------------

def test_envoy_filter():
    p = envoy_filter_rate_limit(ENVOY_FILTER, "ef.yaml")
    assert (p.origin, p.key, p.stat_prefix) == (Origin.ENVOY_FILTER, "EnvoyFilter/shop/waypoint-ratelimit",
                                                "http_local_rate_limiter")
    assert p.targets == (RateLimitTarget(TargetKind.GATEWAY, "waypoint"),)
    assert p.bucket == TokenBucketSpec(4, 4, 60.0)
    assert (p.enabled_percent, p.enforced_percent, p.status, p.x_ratelimit_headers, p.per_source) == \
        (100.0, 100.0, 429, True, False)
    assert p.response_headers == (HeaderToAdd("x-local-rate-limit", "true", overwrite=True),)


def test_envoy_filter_direct_type_camel_case_and_defaults():
    doc = copy.deepcopy(ENVOY_FILTER)
    patch = doc["spec"]["configPatches"][0]
    del patch["match"]                               # context ANY, every HTTP connection manager
    patch["patch"]["operation"] = "ADD"
    patch["patch"]["value"]["typed_config"] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "statPrefix": "rl",
        "tokenBucket": {"maxTokens": 10, "fillInterval": "0.5s"},
        "filterEnabled": {"defaultValue": {"numerator": 5000, "denominator": "TEN_THOUSAND"}},
        "status": {"code": 503},
        "rateLimitedAsResourceExhausted": True,
        "responseHeadersToAdd": [{"header": {"key": "X-Limited", "value": "1"}, "appendAction": "ADD_IF_ABSENT"}],
    }
    p = envoy_filter_rate_limit(doc)
    assert p.bucket == TokenBucketSpec(10, 1, 0.5)
    # Envoy: filter_enforced absent is 0 %: counted, never refused; no x-ratelimit headers unless asked
    assert (p.enabled_percent, p.enforced_percent, p.x_ratelimit_headers) == (50.0, 0.0, False)
    assert (p.status, p.grpc_resource_exhausted) == (503, True)
    assert p.response_headers == (HeaderToAdd("x-limited", "1", overwrite=False, if_absent=True),)


@pytest.mark.parametrize("code, status", [(429, 429), (503, 503), (400, 400), (200, 429), (302, 429)])
def test_envoy_filter_status_under_400_is_429(code, status):
    assert envoy_filter_rate_limit(changed(ENVOY_FILTER, f"{EF}.status", {"code": code})).status == status


def test_envoy_filter_without_filter_enabled_checks_nothing():
    assert envoy_filter_rate_limit(changed(ENVOY_FILTER, f"{EF}.filter_enabled", DELETE)).enabled_percent == 0.0


def test_envoy_filter_every_waypoint_from_the_root_namespace():
    doc = changed(ENVOY_FILTER, "spec.targetRefs", [
        {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}])
    doc["metadata"]["namespace"] = "istio-system"
    doc["spec"]["priority"] = -5
    assert envoy_filter_rate_limit(doc).targets == (RateLimitTarget(TargetKind.GATEWAY_CLASS, "istio-waypoint"),)
    doc["metadata"]["namespace"] = "shop"
    with pytest.raises(ConfigError) as err:
        envoy_filter_rate_limit(doc)
    assert err.value.path == "spec.targetRefs[0]" and "root namespace istio-system" in err.value.reason


PATCH = "spec.configPatches.0"


@pytest.mark.parametrize("path, value, where, why", [
    ("apiVersion", "networking.istio.io/v1", "apiVersion", "v1alpha3"),
    ("spec.workloadSelector", {"labels": {"app": "reviews"}}, "spec.workloadSelector", "targetRefs"),
    ("spec.targetRefs", DELETE, "spec.targetRefs", "at least one target"),
    ("spec.targetRefs.0.kind", "HTTPRoute", "spec.targetRefs[0].kind", "cannot be a target"),
    ("spec.targetRefs.0", {"kind": "Service", "group": "", "name": "reviews"}, "spec.targetRefs[0].kind",
     "never by a Service"),
    ("spec.targetRefs.0", {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio"},
     "spec.targetRefs[0].name", "istio-waypoint"),
    ("spec.targetRefs.0.namespace", "istio-system", "spec.targetRefs[0].namespace", "own namespace"),
    ("spec.configPatches", [], "spec.configPatches", "exactly one"),
    (f"{PATCH}.applyTo", "CLUSTER", "spec.configPatches[0].applyTo", "only an HTTP_FILTER"),
    (f"{PATCH}.match.context", "GATEWAY", "spec.configPatches[0].match.context", "never reach a waypoint"),
    (f"{PATCH}.match.context", "SIDECAR_OUTBOUND", "spec.configPatches[0].match.context", "SIDECAR_INBOUND"),
    (f"{PATCH}.match.context", "WAYPOINT", "spec.configPatches[0].match.context", "does not apply WAYPOINT"),
    (f"{PATCH}.match.proxy", {"proxyVersion": "^1\\.2.*"}, "spec.configPatches[0].match.proxy", "not read"),
    (f"{PATCH}.match.listener.portNumber", 15008, "spec.configPatches[0].match.listener.portNumber",
     "unknown field"),
    (f"{PATCH}.match.listener.filterChain.filter.name", "envoy.filters.network.tcp_proxy",
     "spec.configPatches[0].match.listener.filterChain.filter.name", "http_connection_manager"),
    (f"{PATCH}.patch.operation", "MERGE", "spec.configPatches[0].patch.operation", "inserts the filter"),
    (f"{PATCH}.patch.operation", "REMOVE", "spec.configPatches[0].patch.operation", "inserts the filter"),
    (f"{PATCH}.patch.operation", "INSERT_AFTER", "spec.configPatches[0].patch.operation", "never runs"),
    (f"{PATCH}.patch.value.name", "envoy.filters.http.lua", "spec.configPatches[0].patch.value.name",
     "only envoy.filters.http.local_ratelimit"),
    (f"{PATCH}.patch.value.typed_config", DELETE, "spec.configPatches[0].patch.value.typed_config", "required"),
    (f"{PATCH}.patch.value.typed_config.@type", "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
     "spec.configPatches[0].patch.value.typed_config.@type", "reads only"),
    (f"{PATCH}.patch.value.typed_config.type_url", "type.googleapis.com/x.Y",
     "spec.configPatches[0].patch.value.typed_config.type_url", "reads only"),
    (f"{EF}.stat_prefix", DELETE, f"{FILTER_AT}.stat_prefix", "required"),
    (f"{EF}.token_bucket", DELETE, f"{FILTER_AT}.token_bucket", "typed_per_filter_config"),
    (f"{EF}.token_bucket.max_tokens", 0, f"{FILTER_AT}.token_bucket.max_tokens", "below 1"),
    (f"{EF}.token_bucket.tokens_per_fill", 0, f"{FILTER_AT}.token_bucket.tokens_per_fill", "below 1"),
    (f"{EF}.token_bucket.fill_interval", "1m", f"{FILTER_AT}.token_bucket.fill_interval", "protobuf duration"),
    (f"{EF}.token_bucket.fill_interval", "0.01s", f"{FILTER_AT}.token_bucket.fill_interval", "under 50ms"),
    (f"{EF}.token_bucket.fill_interval", DELETE, f"{FILTER_AT}.token_bucket.fill_interval", "required"),
    (f"{EF}.filter_enabled.default_value.denominator", "THOUSAND",
     f"{FILTER_AT}.filter_enabled.default_value.denominator", "not one of"),
    (f"{EF}.filter_enforced.default_value", DELETE, f"{FILTER_AT}.filter_enforced.default_value", "required"),
    (f"{EF}.status", {"code": "TooManyRequests"}, f"{FILTER_AT}.status.code", "as a number"),
    (f"{EF}.status", {"code": 700}, f"{FILTER_AT}.status.code", "above 599"),
    (f"{EF}.enable_x_ratelimit_headers", "DRAFT_VERSION_04", f"{FILTER_AT}.enable_x_ratelimit_headers",
     "OFF or DRAFT_VERSION_03"),
    (f"{EF}.descriptors", [{"entries": [{"key": "client_id", "value": "x"}], "token_bucket": {}}],
     f"{FILTER_AT}.descriptors", "perSource"),
    (f"{EF}.local_rate_limit_per_downstream_connection", True,
     f"{FILTER_AT}.local_rate_limit_per_downstream_connection", "per-connection"),
    (f"{EF}.stage", 1, f"{FILTER_AT}.stage", "not read"),
    (f"{EF}.local_cluster_rate_limit", {}, f"{FILTER_AT}.local_cluster_rate_limit", "replicas"),
    (f"{EF}.token_bucket_typo", {}, f"{FILTER_AT}.token_bucket_typo", "not a field"),
    (f"{EF}.response_headers_to_add.0.header.value", "%DOWNSTREAM_REMOTE_ADDRESS%",
     f"{FILTER_AT}.response_headers_to_add[0].header.value", "format specifiers"),
    (f"{EF}.response_headers_to_add.0.header.key", "bad header", f"{FILTER_AT}.response_headers_to_add[0].header.key",
     "not a header name"),
    (f"{EF}.response_headers_to_add.0.append_action", "ADD_IF_ABSENT",
     f"{FILTER_AT}.response_headers_to_add[0].append", "not both"),
    (f"{EF}.response_headers_to_add", [{"header": {"key": f"x-{i}", "value": "1"}} for i in range(11)],
     f"{FILTER_AT}.response_headers_to_add", "at most 10"),
])
def test_envoy_filter_refusals(path, value, where, why):
    with pytest.raises(ConfigError) as err:
        envoy_filter_rate_limit(changed(ENVOY_FILTER, path, value))
    assert err.value.path == where and why in err.value.reason


# -- files ---------------------------------------------------------------------------------------

def test_dispatch_and_files():
    text = "\n---\n".join(yaml.safe_dump(d) for d in (
        LOCAL, ENVOY_FILTER, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
    policies = load_rate_limits(text, "limits.yaml")
    assert [p.origin for p in policies] == [Origin.LOCAL_RATE_LIMIT, Origin.ENVOY_FILTER]
    assert all(p.source == "limits.yaml" for p in policies)
    assert rate_limit_policy(LOCAL).origin is Origin.LOCAL_RATE_LIMIT
    with pytest.raises(ConfigError) as err:
        rate_limit_policy({"kind": "HTTPRoute"})
    assert err.value.path == "kind"


def test_file_refusals_name_the_document():
    bad = changed(LOCAL, "spec.tokenBucket.maxTokens", 0)
    text = yaml.safe_dump(LOCAL) + "---\n" + yaml.safe_dump(bad)
    with pytest.raises(ConfigError) as err:
        load_rate_limits(text, "limits.yaml")
    assert (err.value.source, err.value.document, err.value.path) == ("limits.yaml", 2, "spec.tokenBucket.maxTokens")
    twice = yaml.safe_dump(LOCAL) + "---\n" + yaml.safe_dump(LOCAL)
    with pytest.raises(ConfigError) as err:
        load_rate_limits(twice, "limits.yaml")
    assert "defined twice" in err.value.reason and err.value.document == 2
    # an EnvoyFilter and a LocalRateLimit may share a name
    same_name = changed(ENVOY_FILTER, "metadata.name", "reviews")
    assert len(load_rate_limits(yaml.safe_dump(LOCAL) + "---\n" + yaml.safe_dump(same_name))) == 2
