"""The waypoint's endpoint choice under a DestinationRule: subsets, load balancers,
outlier ejection and its return, panic; with the clock and randomness handed in."""
from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from meshcore.node.routing import HBONE, REFUSE
from meshcore.sources.config import load
from meshcore.traffic.istio_model import RequestAttributes
from meshcore.waypoint.endpoints import EndpointPicker

MESH = """\
workloads:
- {uid: a, name: a, namespace: shop, workloadIps: ["10.0.0.1"], protocol: HBONE, labels: {version: v1},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: b, name: b, namespace: shop, workloadIps: ["10.0.0.2"], protocol: HBONE, labels: {version: v1},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: c, name: c, namespace: shop, workloadIps: ["10.0.0.3"], protocol: HBONE, labels: {version: v2},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: w, name: waypoint, namespace: shop, workloadIps: ["10.0.0.9"], protocol: HBONE}
services:
- {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
"""


def setup(policy: str, mesh: str = MESH):
    view = load(inline=mesh + textwrap.indent(textwrap.dedent(policy), "  "))
    service = view.by_service_key["shop/web.shop.svc.cluster.local"]
    me = view.by_uid["w"]
    rule = view.destination_rule_for(service, "shop")
    return view, service, me, rule


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def picks(picker, view, service, me, rule, n, subset="", **kw):
    return [picker.choose(view, me, service, 80, subset, rule, **kw).route.workload.uid for _ in range(n)]


def test_round_robin_takes_each_endpoint_in_turn_and_subsets_narrow_them():
    view, service, me, rule = setup("""\
        trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
        subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
        """)
    picker = EndpointPicker()
    assert picks(picker, view, service, me, rule, 6) == ["a", "b", "c", "a", "b", "c"]
    assert set(picks(picker, view, service, me, rule, 4, subset="v1")) == {"a", "b"}
    assert picks(picker, view, service, me, rule, 2, subset="v2") == ["c", "c"]
    route = picker.choose(view, me, service, 80, "v3", rule).route
    assert route.kind is REFUSE and "no subset 'v3'" in route.reason


def test_least_request_prefers_the_endpoint_with_fewer_requests_in_flight():
    view, service, me, rule = setup("trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n")
    picker = EndpointPicker(rand=iter([0.0, 0.5] * 100).__next__)     # two choices: a and b
    first = picker.choose(view, me, service, 80, "", rule)             # a (both idle: the first)
    second = picker.choose(view, me, service, 80, "", rule)            # b: a has one in flight
    assert (first.route.workload.uid, second.route.workload.uid) == ("a", "b")
    first.record(status=200)                                           # its answer's head: still in flight
    assert picker._balancing[(service.key, "", 80)].active == {"a": 1, "b": 1}
    first.finish()
    first.finish()                                                     # once only: a stays at none
    assert picker.choose(view, me, service, 80, "", rule).route.workload.uid == "a"


def test_a_consistent_hash_sends_one_key_to_one_endpoint():
    view, service, me, rule = setup("trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n")
    picker = EndpointPicker()

    def request(user):
        return RequestAttributes("GET", "/", headers=(("x-user", user),))
    for user in ("alice", "bob", "carol"):
        assert len(set(picks(picker, view, service, me, rule, 5, request=request(user)))) == 1


def test_an_ejected_endpoint_is_left_out_until_its_time_is_up():
    view, service, me, rule = setup("""\
        trafficPolicy:
          loadBalancer: {simple: ROUND_ROBIN}
          outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
        """)
    clock = Clock()
    picker = EndpointPicker(clock=clock)
    for _ in range(2):
        attempt = picker.choose(view, me, service, 80, "", rule)
        assert attempt.route.kind is HBONE and attempt.route.workload.uid == "a"
        attempt.record(status=503)
        picker.choose(view, me, service, 80, "", rule)                 # b, c: round robin moves on
        picker.choose(view, me, service, 80, "", rule)
    assert Counter(picks(picker, view, service, me, rule, 6)) == {"b": 3, "c": 3}
    # maxEjectionPercent 50: a second ejection (2 of 3) is not allowed
    for _ in range(2):
        picker.choose(view, me, service, 80, "", rule).record(failure="connect-failure")
    assert set(picks(picker, view, service, me, rule, 4)) == {"b", "c"}
    clock.now += 30
    assert set(picks(picker, view, service, me, rule, 6)) == {"a", "b", "c"}


@pytest.mark.parametrize("min_health, panics", [(0, False), (50, True)])
def test_panic_balances_over_every_endpoint_when_too_few_are_healthy(min_health, panics):
    view, service, me, rule = setup(f"""\
        trafficPolicy:
          loadBalancer: {{simple: ROUND_ROBIN}}
          outlierDetection: {{consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100,
                              minHealthPercent: {min_health}}}
        """)
    picker = EndpointPicker(clock=Clock())
    failed = set()
    for _ in range(2):                       # two endpoints fail once each and are ejected
        attempt = picker.choose(view, me, service, 80, "", rule)
        failed.add(attempt.route.workload.uid)
        attempt.record(status=500)
    # one of three healthy (33 %): under a 50 % threshold every endpoint is balanced over
    expected = {"a", "b", "c"} if panics else {"a", "b", "c"} - failed
    assert len(failed) == 2 and set(picks(picker, view, service, me, rule, 6)) == expected


@pytest.mark.parametrize("authority, shadow", [
    ("web.shop", "web.shop-shadow"), ("web.shop:8080", "web.shop-shadow:8080"), ("10.0.0.1:80", "10.0.0.1-shadow:80"),
    ("[fd00::1]:80", "[fd00::1]-shadow:80"), ("[fd00::1]", "[fd00::1]-shadow"),
])
def test_a_mirrors_host_is_envoys_shadow_host(authority, shadow):
    from meshcore.waypoint.mirrors import shadow_authority
    assert shadow_authority(authority) == shadow


def test_the_connection_pools_request_limit_overflows_and_frees_as_requests_end():
    from meshcore.waypoint.endpoints import Overflow
    view, service, me, rule = setup("trafficPolicy: {connectionPool: {http: {http2MaxRequests: 2}}}\n")
    picker = EndpointPicker()
    first = picker.choose(view, me, service, 80, "", rule)
    picker.choose(view, me, service, 80, "", rule)
    with pytest.raises(Overflow, match=r"allows 2 \(http2MaxRequests\)"):
        picker.choose(view, me, service, 80, "", rule)
    first.finish()
    assert picker.choose(view, me, service, 80, "", rule).route.kind is HBONE


def test_a_request_that_ends_gives_back_every_attempts_place():
    from meshcore.waypoint.destination import Balanced, Destination, InFlight
    from meshcore.waypoint.endpoints import Overflow
    view, service, me, rule = setup("trafficPolicy: {connectionPool: {http: {http2MaxRequests: 2}}}\n")
    picker = EndpointPicker()
    balanced = Balanced(picker, service, 80, "", rule, RequestAttributes("GET", "/"), "10.0.0.5")
    ticket = balanced.choose(view, me)
    where = Destination(ticket.route, "/", "web", None, balanced=balanced, ticket=ticket)
    retry = where.next_endpoint(None, view, me)           # a second attempt, the first not told how it went
    assert retry is not None and retry.ticket is not ticket
    with pytest.raises(Overflow):
        picker.choose(view, me, service, 80, "", rule)
    pending = InFlight()
    pending.where = where
    pending.end(client_left=False)
    assert picker.choose(view, me, service, 80, "", rule).route.kind is HBONE
    assert picker.choose(view, me, service, 80, "", rule).route.kind is HBONE


# -- retries outstanding (http.maxRetries) ----------------------------------------------

def _pool(http=None):
    from meshcore.traffic.istio_model import ClusterPolicy, ConnectionPool, HTTPSettings
    return ClusterPolicy(connection_pool=ConnectionPool(http=HTTPSettings(**http) if http is not None else None))


@pytest.mark.parametrize("policy, limit", [
    (_pool(), None),                               # no connectionPool.http: istiod's default, 2^32-1
    (_pool({}), None),
    (_pool({"max_retries": 0}), None),             # 0: istiod cannot tell it from unset
    (_pool({"max_retries": 1}), 1),
    (_pool({"max_retries": 5, "http2_max_requests": 2}), 5),
])
def test_the_retries_outstanding_limit_of_a_connection_pool(policy, limit):
    from meshcore.waypoint.endpoints import retry_limit
    assert retry_limit(policy) == limit


@pytest.mark.parametrize("limit, outstanding, allowed", [
    (None, 10_000, True), (1, 0, True), (1, 1, False), (3, 2, True), (3, 3, False)])
def test_whether_a_retry_may_start(limit, outstanding, allowed):
    from meshcore.waypoint.endpoints import may_retry
    assert may_retry(limit, outstanding) is allowed


@pytest.mark.parametrize("flag, refused, flags", [
    ("UF", "", "UF"), ("UF", "URX", "UF,URX"),     # retries ran out: both, as Envoy logs them
    ("UF", "UO", "UF,UO"), ("UC", "UO", "UC,UO"),  # refused for the retries outstanding: not the retry limit
    ("UT", "UO", "UT,UO"), ("-", "UO", "UO"), ("-", "", "-"),
])
def test_a_failed_requests_flags(flag, refused, flags):
    from meshcore.waypoint.destination import with_flag
    assert with_flag(flag, refused) == flags


def _retrying(policy: str):
    """A request's first attempt to web under `policy`, its route retrying 5xx twice."""
    from meshcore.traffic.retry import RetryOn, RetryPolicy
    from meshcore.waypoint.destination import Balanced, Destination
    view, service, me, rule = setup(policy)
    picker = EndpointPicker()
    retry = RetryPolicy(2, frozenset({RetryOn.FIVE_XX}), backoff_base=0.001)

    def request():
        balanced = Balanced(picker, service, 80, "", rule, RequestAttributes("GET", "/"), "10.0.0.5")
        ticket = balanced.choose(view, me)
        return Destination(ticket.route, "/", "web", None, retry=retry, balanced=balanced, ticket=ticket)
    return view, me, picker, (service.key, "", 80), request


def test_a_retry_counts_against_max_retries_until_its_outcome_is_known():
    import asyncio
    from meshcore.waypoint.destination import retry_destination
    view, me, picker, key, request = _retrying("trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}\n")

    async def scenario():
        first, second, third = request(), request(), request()
        again = await retry_destination(None, first, 0, view, me, status=503)
        assert again is not None and picker._balancing[key].retries == 1
        # another request's retry while the first one's is under way: refused, UO
        assert await retry_destination(None, second, 0, view, me, status=503) is None
        assert second.retry_overflowed and not first.retry_overflowed
        # the retried attempt answered: its place is free for the next retry
        assert await retry_destination(None, again, 1, view, me, status=200) is None
        assert picker._balancing[key].retries == 0
        third_again = await retry_destination(None, third, 0, view, me, status=503)
        assert third_again is not None and not third.retry_overflowed
        return third_again
    third_again = asyncio.run(scenario())
    third_again.release()                   # its request ended before the retry's outcome
    third_again.release()                   # once only
    assert picker._balancing[key].retries == 0


def test_without_max_retries_every_retry_the_policy_allows_goes():
    import asyncio
    from meshcore.waypoint.destination import retry_destination
    view, me, picker, key, request = _retrying("trafficPolicy: {connectionPool: {http: {maxRetries: 0}}}\n")

    async def scenario():
        return [await retry_destination(None, request(), 0, view, me, status=503) for _ in range(20)]
    assert all(again is not None for again in asyncio.run(scenario()))
    assert picker._balancing[key].retries == 20


def test_a_retry_that_cannot_go_gives_its_place_back():
    import asyncio
    from meshcore.waypoint.destination import retry_destination
    view, me, picker, key, request = _retrying("trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}\n")

    async def scenario():
        # the route's time ends before the back-off would: no retry, nothing held
        where = request()
        loop = asyncio.get_running_loop()
        assert await retry_destination(None, where, 0, view, me, status=503, before_deadline=loop.time()) is None
        assert picker._balancing[key].retries == 0 and not where.retry_overflowed
    asyncio.run(scenario())


@pytest.mark.parametrize("policy, limit", [
    ("trafficPolicy: {connectionPool: {http: {maxRetries: 1}}, retryBudget: {percent: 20}}\n", None),
    ("""\
trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}
subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {retryBudget: {minRetryConcurrency: 3}}}]
""", None),
    ("""\
trafficPolicy:
  retryBudget: {percent: 20}
  portLevelSettings: [{port: {number: 80}, connectionPool: {http: {maxRetries: 2}}}]
""", None),                                   # the budget is not port-level: it still applies
    ("trafficPolicy: {connectionPool: {http: {maxRetries: 2}}}\n", 2),
])
def test_a_retry_budget_replaces_the_max_retries_bound(policy, limit):
    # Envoy: a cluster's retry_budget overrides its max_retries circuit breaker;
    # istiod merges a subset's retryBudget over the rule's, whatever the port
    from meshcore.traffic.destinationrule import cluster_policy
    from meshcore.waypoint.endpoints import retry_limit
    _, _, _, rule = setup(policy)
    assert retry_limit(cluster_policy(rule, "v1" if rule.subsets else "", 80)) == limit


def test_what_a_request_holds_is_given_back_to_the_policy_it_was_counted_under():
    # a configuration change gives the destination a new count (Envoy: a new cluster,
    # a new resource manager): requests that began before it must not lower the new one
    import asyncio
    from meshcore.waypoint.destination import retry_destination
    view, me, picker, key, request = _retrying(
        "trafficPolicy: {connectionPool: {http: {maxRetries: 1, http2MaxRequests: 100}}}\n")
    changed, service, _, rule = setup(
        "trafficPolicy: {connectionPool: {http: {maxRetries: 1, http2MaxRequests: 100, idleTimeout: 5s}}}\n")

    async def scenario():
        old = await retry_destination(None, request(), 0, view, me, status=503)
        assert old is not None and picker._balancing[key].retries == 1
        # the new policy's first request and its retry
        from meshcore.waypoint.destination import Balanced, Destination
        balanced = Balanced(picker, service, 80, "", rule, RequestAttributes("GET", "/"), "10.0.0.5")
        ticket = balanced.choose(changed, me)
        new_state = picker._balancing[key]
        assert new_state.in_flight == 1 and new_state.retries == 0
        first = Destination(ticket.route, "/", "web", None, retry=old.retry, balanced=balanced, ticket=ticket)
        retried = await retry_destination(None, first, 0, changed, me, status=503)
        assert retried is not None and new_state.retries == 1 and new_state.in_flight == 1
        old.release()                          # the old request ends: the new counts stay
        assert (new_state.retries, new_state.in_flight) == (1, 1)
        third = Destination(ticket.route, "/", "web", None, retry=old.retry,
                            balanced=Balanced(picker, service, 80, "", rule, RequestAttributes("GET", "/"), "10.0.0.5"))
        assert await retry_destination(None, third, 0, changed, me, status=503) is None
        assert third.retry_overflowed
        retried.release()
        assert (new_state.retries, new_state.in_flight) == (0, 0)
    asyncio.run(scenario())


def test_a_relayed_answer_after_the_last_retry_the_policy_allowed_is_flagged_urx():
    # Envoy's router: a response its retry policy would retry, with no retry left, is
    # relayed with UpstreamRetryLimitExceeded (URX); one it would not retry is not flagged
    import asyncio
    from meshcore.waypoint.destination import retry_destination, with_flag
    view, me, picker, key, request = _retrying("trafficPolicy: {connectionPool: {http: {maxRetries: 0}}}\n")

    async def scenario():
        answered, ran_out = request(), request()
        assert await retry_destination(None, answered, 2, view, me, status=404) is None
        assert await retry_destination(None, ran_out, 2, view, me, status=503) is None
        again = await retry_destination(None, request(), 1, view, me, status=503)
        return answered, ran_out, again
    answered, ran_out, again = asyncio.run(scenario())
    assert (answered.retry_flag, ran_out.retry_flag) == ("", "URX")
    assert again is not None and again.retry_flag == ""
    assert with_flag("-", ran_out.retry_flag) == "URX" and with_flag("-", answered.retry_flag) == "-"
    assert with_flag("DC", "URX") == "DC,URX"


# -- locality load balancing, relative to the waypoint's own workload ---------------------

LOCALITY_MESH = """\
workloads:
- {uid: a, name: a, namespace: shop, workloadIps: ["10.0.0.1"], protocol: HBONE, locality: {region: us-west, zone: z1},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: b, name: b, namespace: shop, workloadIps: ["10.0.0.2"], protocol: HBONE, locality: {region: us-west, zone: z2},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: c, name: c, namespace: shop, workloadIps: ["10.0.0.3"], protocol: HBONE, locality: {region: us-east, zone: z1},
   services: {"shop/web.shop.svc.cluster.local": {80: 8080}}}
- {uid: w, name: waypoint, namespace: shop, workloadIps: ["10.0.0.9"], protocol: HBONE,
   locality: {region: us-west, zone: z1}}
services:
- {name: web, namespace: shop, hostname: web.shop.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
"""


def locality_setup(policy: str):
    return setup(policy, LOCALITY_MESH)


def test_with_outlier_detection_traffic_stays_in_the_waypoints_zone_until_its_endpoints_are_ejected():
    view, service, me, rule = locality_setup("""\
        trafficPolicy:
          loadBalancer: {simple: ROUND_ROBIN}
          outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}
        """)
    clock = Clock()
    picker = EndpointPicker(clock=clock)
    assert set(picks(picker, view, service, me, rule, 6)) == {"a"}
    picker.choose(view, me, service, 80, "", rule).record(status=503)          # a ejected: its zone is empty
    assert set(picks(picker, view, service, me, rule, 6)) == {"b"}             # the region's other zone next
    picker.choose(view, me, service, 80, "", rule).record(failure="connect-failure")
    assert set(picks(picker, view, service, me, rule, 6)) == {"c"}             # then another region
    clock.now += 30
    assert set(picks(picker, view, service, me, rule, 6)) == {"a"}             # back when a returns


@pytest.mark.parametrize("policy", [
    "trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n",                  # no outlier detection: no failover
    """\
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: false}}
      outlierDetection: {consecutive5xxErrors: 1}
    """,
    # zone-aware balancing is not done for a waypoint, and it takes the place of the
    # mesh's locality default
    """    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN, zoneAwareLbSetting: {enabled: true}}
      outlierDetection: {consecutive5xxErrors: 1}
    """,
])
def test_without_failover_every_locality_takes_requests(policy):
    view, service, me, rule = locality_setup(policy)
    assert picks(EndpointPicker(), view, service, me, rule, 6) == ["a", "b", "c", "a", "b", "c"]


def test_failover_names_the_region_to_fail_over_to():
    view, service, me, rule = locality_setup("""\
        trafficPolicy:
          loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {failover: [{from: us-west, to: us-east}]}}
          outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}
        """)
    picker = EndpointPicker(clock=Clock())
    assert set(picks(picker, view, service, me, rule, 4)) == {"a"}
    for _ in range(2):
        picker.choose(view, me, service, 80, "", rule).record(status=500)
    assert set(picks(picker, view, service, me, rule, 4)) == {"c"}


def test_distribute_shares_requests_by_locality_weight():
    import random
    view, service, me, rule = locality_setup("""\
        trafficPolicy:
          loadBalancer:
            simple: ROUND_ROBIN
            localityLbSetting: {distribute: [{from: us-west/z1/*, to: {us-west/z1/*: 80, us-east/*: 20}}]}
        """)
    counts = Counter(picks(EndpointPicker(rand=random.Random(7).random), view, service, me, rule, 2000))
    assert set(counts) == {"a", "c"}                                            # z2 gets no weight: none
    assert 0.75 < counts["a"] / 2000 < 0.85


def test_distribute_to_no_endpoint_refuses():
    view, service, me, rule = locality_setup("""\
        trafficPolicy:
          loadBalancer: {localityLbSetting: {distribute: [{from: "*", to: {ap-south: 100}}]}}
        """)
    route = EndpointPicker().choose(view, me, service, 80, "", rule).route
    assert route.kind is REFUSE and "distributes traffic from us-west/z1" in route.reason


def test_a_consistent_hash_picks_its_level_by_the_requests_hash():
    view, service, me, rule = locality_setup("""\
        trafficPolicy:
          loadBalancer: {consistentHash: {httpHeaderName: x-user}}
          outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}
        """)
    picker = EndpointPicker(clock=Clock())

    def request(user):
        return RequestAttributes("GET", "/", headers=(("x-user", user),))
    assert {picks(picker, view, service, me, rule, 1, request=request(f"u{i}"))[0] for i in range(50)} == {"a"}


def test_maglev_builds_a_maglev_table_of_the_rules_size():
    from meshcore.traffic.loadbalancer import Maglev
    view, service, me, rule = setup("""\
        trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 251}}}}
        """)
    picker = EndpointPicker()

    def request(user):
        return RequestAttributes("GET", "/", headers=(("x-user", user),))
    chosen = {user: picks(picker, view, service, me, rule, 3, request=request(user)) for user in ("al", "bo", "cy")}
    assert all(len(set(v)) == 1 for v in chosen.values())
    tables = list(picker._balancing[(service.key, "", 80)].hash_tables.values())
    assert len(tables) == 1 and isinstance(tables[0], Maglev) and len(tables[0]._table) == 251


@pytest.mark.parametrize("hashing", ["maglev: {tableSize: 65537}", "ringHash: {minimumRingSize: 1024}"])
def test_a_retry_away_from_a_hashed_endpoint_reuses_the_table_and_picks_consistently(hashing):
    # one table per set of endpoints, whatever a retry avoids: a Maglev table takes tens
    # of milliseconds to fill, which no retry may cost the event loop
    view, service, me, rule = setup(f"""\
        trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user, {hashing}}}}}}}
        """)
    picker = EndpointPicker()
    users = [f"user-{i}" for i in range(60)]

    def pick(user, avoid=None):
        return picker.choose(view, me, service, 80, "", rule, avoid=avoid,
                             request=RequestAttributes("GET", "/", headers=(("x-user", user),))).route.workload.uid
    first = {u: pick(u) for u in users}
    assert set(first.values()) == {"a", "b", "c"}
    again = {u: pick(u, avoid=first[u]) for u in users}
    assert all(again[u] != first[u] for u in users), again
    assert again == {u: pick(u, avoid=first[u]) for u in users}          # the same key retries alike
    # a retry avoiding another endpoint leaves the key where it was
    assert all(pick(u, avoid=next(x for x in "abc" if x != first[u])) == first[u] for u in users)
    assert len(picker._balancing[(service.key, "", 80)].hash_tables) == 1
