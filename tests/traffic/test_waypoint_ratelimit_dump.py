"""A waypoint's /config_dump lists the rate limits that can apply to it (targeting it,
every waypoint, a service it serves or a route attached to one), and its RequestLimits
follows the configuration it loads."""
from __future__ import annotations

import json

import pytest

from meshcore.waypoint.proxy import WaypointOptions, WaypointProxy
from meshcore.waypoint.ratelimits import Limited

MESH = """\
workloads:
- {uid: c/waypoint, name: waypoint, namespace: shop, serviceAccount: waypoint, workloadIps: ["10.0.0.9"],
   protocol: HBONE}
services:
- {name: reviews, namespace: shop, hostname: reviews.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080},
   waypoint: {destination: "/10.0.0.9"}}
- {name: ratings, namespace: shop, hostname: ratings.shop.svc.cluster.local, vips: ["/10.96.0.2"], ports: {80: 8080}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{name: api, backendRefs: [{name: reviews, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings}]
  rules: [{backendRefs: [{name: ratings, port: 80}]}]
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {name: reviews, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  tokenBucket: {maxTokens: 1, tokensPerFill: 1, fillInterval: 1s}
  perSource: true
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {name: api, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews, sectionName: api}]
  tokenBucket: {maxTokens: 10, fillInterval: 500ms}
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {name: ratings, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: ratings}, {group: gateway.networking.k8s.io, kind: HTTPRoute,
                                                          name: ratings}]
  tokenBucket: {maxTokens: 1, fillInterval: 1s}
---
apiVersion: meshcore.dev/v1alpha1
kind: LocalRateLimit
metadata: {name: other, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: other-waypoint}]
  tokenBucket: {maxTokens: 1, fillInterval: 1s}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: waypoint-ratelimit, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: http_local_rate_limiter
          token_bucket: {max_tokens: 4, tokens_per_fill: 4, fill_interval: 60s}
          filter_enabled: {default_value: {numerator: 100, denominator: HUNDRED}}
          filter_enforced: {default_value: {numerator: 50, denominator: HUNDRED}}
          response_headers_to_add: [{append: false, header: {key: x-local-rate-limit, value: "true"}}]
          enable_x_ratelimit_headers: DRAFT_VERSION_03
"""


@pytest.fixture
def proxy(tmp_path):
    (tmp_path / "mesh.yaml").write_text(MESH)
    options = WaypointOptions(name="waypoint", namespace="shop", config_paths=(str(tmp_path / "mesh.yaml"),),
                              state_dir=str(tmp_path / "state"))
    proxy = WaypointProxy(options)
    proxy.files.load()
    return proxy


def dump_of(proxy) -> dict:
    status, content_type, body = proxy._config_dump("GET", {})
    assert status == 200 and content_type == "application/json"
    return json.loads(body)


def test_the_rate_limits_that_can_apply_to_the_waypoint(proxy):
    # ratings is not served by this waypoint, and other-waypoint is another one
    shown = {(r["kind"], r["name"]): r for r in dump_of(proxy)["rateLimits"]}
    assert list(shown) == [("EnvoyFilter", "waypoint-ratelimit"), ("LocalRateLimit", "api"),
                           ("LocalRateLimit", "reviews")]
    assert shown["LocalRateLimit", "reviews"] == {
        "kind": "LocalRateLimit", "name": "reviews", "namespace": "shop",
        "targetRefs": [{"kind": "Service", "name": "reviews"}],
        "tokenBucket": {"maxTokens": 1, "tokensPerFill": 1, "fillInterval": "1s"}, "perSource": True,
        "source": proxy.options.config_paths[0]}
    assert shown["LocalRateLimit", "api"]["targetRefs"] == [{"kind": "HTTPRoute", "name": "reviews",
                                                             "sectionName": "api"}]
    assert shown["LocalRateLimit", "api"]["tokenBucket"]["fillInterval"] == "0.5s"
    envoy = shown["EnvoyFilter", "waypoint-ratelimit"]
    assert envoy["tokenBucket"] == {"maxTokens": 4, "tokensPerFill": 4, "fillInterval": "60s"}
    assert (envoy["statPrefix"], envoy["filterEnabled"], envoy["filterEnforced"], envoy["status"]) == (
        "http_local_rate_limiter", 100.0, 50.0, 429)
    assert envoy["enableXRatelimitHeaders"] == "DRAFT_VERSION_03"
    assert envoy["responseHeadersToAdd"] == [{"header": {"key": "x-local-rate-limit", "value": "true"},
                                              "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}]


def test_no_rate_limit_is_an_empty_list(tmp_path):
    (tmp_path / "mesh.yaml").write_text(MESH.split("---\napiVersion: meshcore.dev")[0])
    proxy = WaypointProxy(WaypointOptions(name="waypoint", namespace="shop",
                                          config_paths=(str(tmp_path / "mesh.yaml"),),
                                          state_dir=str(tmp_path / "state")))
    proxy.files.load()
    dump = dump_of(proxy)
    assert dump["rateLimits"] == [] and [r["name"] for r in dump["routes"]] == ["ratings", "reviews"]


def test_the_proxy_request_limits_follow_what_it_loads(proxy):
    view = proxy.store.view
    reviews = view.service_by_hostname("reviews.shop.svc.cluster.local")
    assert proxy.rate_limits.policies(view) == view.rate_limits
    check = lambda: proxy.rate_limits.check(view, waypoint=("shop", "waypoint"), service=reviews, port=80,  # noqa
                                            route="shop.reviews.0", source=None, grpc=False, now=0)
    assert not isinstance(check(), Limited)
    assert check().policy == "LocalRateLimit/shop/reviews"
