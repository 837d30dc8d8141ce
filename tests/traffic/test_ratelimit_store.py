"""Rate limits (LocalRateLimit and EnvoyFilter) in the mesh store: put, replaced, diffed and
removed like every kind, by origin/namespace/name, their index copied only when they change."""
from __future__ import annotations

import ipaddress

from meshcore.state import Kind, MeshStore, Remove, Service, Upsert
from meshcore.traffic.ratelimit_config import rate_limit_policy


def lrl(name: str = "a", tokens: int = 1, source: str = ""):
    return rate_limit_policy({"apiVersion": "meshcore.dev/v1alpha1", "kind": "LocalRateLimit",
                              "metadata": {"name": name, "namespace": "shop"},
                              "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                                       "tokenBucket": {"maxTokens": tokens, "fillInterval": "1s"}}}, source)


def ef(name: str = "a"):
    return rate_limit_policy({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                 "configPatches": [{"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_BEFORE", "value": {
                     "name": "envoy.filters.http.local_ratelimit", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                         "stat_prefix": "rl", "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}}}}]}})


def test_upsert_replace_and_remove_like_every_kind():
    store = MeshStore()
    a, f = lrl("a"), ef("a")
    applied = store.apply("files", [Upsert(a), Upsert(f)])
    # a LocalRateLimit and an EnvoyFilter of one name are two resources
    assert applied.keys(Kind.RATE_LIMIT) == {"LocalRateLimit/shop/a", "EnvoyFilter/shop/a"}
    assert store.view.rate_limits == (f, a)

    before = store.view
    assert not store.apply("files", [Upsert(lrl("a", source="elsewhere.yaml"))])   # the same limit: no change
    assert store.view.rate_limit_by_key is before.rate_limit_by_key
    bigger = lrl("a", tokens=5)
    store.apply("files", [Upsert(bigger)])
    assert store.view.rate_limits == (f, bigger)
    assert before.rate_limits == (f, a)                                # a view handed out never changes

    applied = store.apply("files", [Remove(Kind.RATE_LIMIT, "LocalRateLimit/shop/a")])
    assert applied.keys(Kind.RATE_LIMIT) == {"LocalRateLimit/shop/a"}
    assert store.view.rate_limits == (f,)


def test_other_kinds_changing_share_the_index():
    store = MeshStore()
    store.apply("files", [Upsert(lrl())])
    before = store.view
    store.apply("files", [Upsert(lrl())])                         # the same again
    store.apply("xds", [Upsert(Service(name="reviews", namespace="shop", hostname="reviews.shop.svc.cluster.local",
                                       vips=(("", ipaddress.ip_address("10.96.0.1")),), ports=((80, 8080),)))])
    assert store.view.generation > before.generation
    assert store.view.rate_limit_by_key is before.rate_limit_by_key


def test_replace_diffs_them_and_subscribers_hear_of_them():
    store = MeshStore()
    heard = []
    store.subscribe(lambda change: heard.append(dict(change.changed)), (Kind.RATE_LIMIT,))
    store.replace("files", [lrl("a"), ef("b")], atomic=True)
    assert heard == [{Kind.RATE_LIMIT: {"LocalRateLimit/shop/a", "EnvoyFilter/shop/b"}}]
    store.replace("files", [lrl("a", tokens=2), ef("b")], atomic=True)
    assert heard[-1] == {Kind.RATE_LIMIT: {"LocalRateLimit/shop/a"}}
    store.replace("files", [], atomic=True)
    assert heard[-1] == {Kind.RATE_LIMIT: {"LocalRateLimit/shop/a", "EnvoyFilter/shop/b"}}
    assert store.view.rate_limits == ()


def test_another_source_cannot_replace_them():
    store = MeshStore()
    store.apply("files", [Upsert(lrl())])
    applied = store.apply("xds", [Upsert(lrl(tokens=3))])
    assert list(map(str, applied.rejected)) == ["rate limit LocalRateLimit/shop/a: owned by source files"]
