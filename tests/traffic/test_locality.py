"""Locality load balancing as istiod writes it (priorities, weights) and Envoy balances
over it (shares per level, panic, effective locality weights): table tests of the pure
functions, and the DestinationRule fields istiod's validation refuses."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshcore.errors import ConfigError
from meshcore.state.model import Locality
from meshcore.traffic.destinationrule import destination_rule
from meshcore.traffic.locality import (
    MESH_DEFAULT, Distribute, Failover, LocalityLbSetting, LocalityPlan, choose_level, choose_weighted,
    effective_setting, lb_priority, locality_matches, locality_plan, locality_weights, priority_load,
    topology_labels,
)


@dataclass(frozen=True)
class Ep:
    uid: str
    locality: Locality = Locality()
    labels: tuple = ()
    network: str = ""
    cluster_id: str = "Kubernetes"
    node: str = ""


def loc(text: str) -> Locality:
    return Locality(*(text.split("/") + ["", ""])[:3])


def ep(uid: str, where: str, **kw) -> Ep:
    return Ep(uid, loc(where), **kw)


def uids(plan: LocalityPlan) -> list[list[str]]:
    return [[e.uid for g in level for e in g.endpoints] for level in plan.levels]


PROXY = Ep("waypoint", loc("us-west/zone1/sub1"), labels=(("app", "waypoint"),), network="net1")
SPREAD = [ep("same", "us-west/zone1/sub1"), ep("subzone", "us-west/zone1/sub2"), ep("zone", "us-west/zone2/sub1"),
          ep("region", "us-east/zone1/sub1"), ep("far", "eu-west/zone1/sub1"), ep("nowhere", "")]


@pytest.mark.parametrize("endpoint, priority", [
    ("us-west/zone1/sub1", 0), ("us-west/zone1/sub2", 1), ("us-west/zone1", 1), ("us-west/zone2/sub1", 2),
    ("us-east/zone1/sub1", 3), ("", 3),
])
def test_lb_priority_is_istios(endpoint, priority):
    assert lb_priority(loc("us-west/zone1/sub1"), loc(endpoint)) == priority


@pytest.mark.parametrize("locality, rule, matches", [
    ("us-west/zone1/sub1", "us-west", True), ("us-west/zone1/sub1", "us-west/*", True),
    ("us-west/zone1/sub1", "us-west/zone1/*", True), ("us-west/zone1/sub1", "us-west/zone2/*", False),
    ("us-west/zone1/sub1", "*", True), ("us-west/zone1/sub1", "us-west/zone1/sub1", True),
    ("us-west/zone1/sub1", "us-west/zone1/sub2", False), ("us-east/zone1", "us-west", False),
])
def test_locality_matches_a_rules_locality(locality, rule, matches):
    assert locality_matches(loc(locality), rule) is matches


def test_the_rules_setting_replaces_the_mesh_default_and_enabled_false_turns_it_off():
    assert effective_setting(None) is MESH_DEFAULT
    rule = LocalityLbSetting(failover=(Failover("us-west", "us-east"),))
    assert effective_setting(rule) is rule
    assert effective_setting(LocalityLbSetting(enabled=False, failover=rule.failover)) is None
    assert effective_setting(None, LocalityLbSetting(enabled=False)) is None


def test_failover_by_locality_needs_outlier_detection():
    flat = locality_plan(SPREAD, PROXY, MESH_DEFAULT, failover=False)
    assert len(flat.levels) == 1 and sorted(uids(flat)[0]) == sorted(e.uid for e in SPREAD)
    assert not flat.weighted
    plan = locality_plan(SPREAD, PROXY, MESH_DEFAULT, failover=True)
    # subzone, zone, region, then every other region (no locality at all among them)
    assert uids(plan) == [["same"], ["subzone"], ["zone"], ["nowhere", "far", "region"]]
    assert not plan.weighted                  # plain failover: Envoy balances over a whole level


def test_failover_ranks_the_named_region_before_the_others():
    setting = LocalityLbSetting(failover=(Failover("us-west", "us-east"),))
    plan = locality_plan(SPREAD, PROXY, setting, failover=True)
    assert uids(plan) == [["same"], ["subzone"], ["zone"], ["region"], ["nowhere", "far"]]
    assert plan.weighted
    # a failover entry for another region changes nothing here
    other = LocalityLbSetting(failover=(Failover("eu-west", "us-east"),))
    assert uids(locality_plan(SPREAD, PROXY, other, failover=True))[-1] == ["nowhere", "far", "region"]


def test_distribute_weights_localities_and_drops_the_rest():
    endpoints = [ep("a1", "us-west/zone1/sub1"), ep("b1", "us-west/zone1/sub2"), ep("b2", "us-west/zone1/sub2"),
                 ep("b3", "us-west/zone1/sub2"), ep("c1", "us-west/zone2/sub1"), ep("d1", "us-east/zone1/sub1")]
    setting = LocalityLbSetting(distribute=(
        Distribute("us-east/*", (("us-east/*", 100),)),
        Distribute("us-west/zone1/*", (("us-west/zone1/*", 80), ("us-west/zone2/*", 20))),
    ))
    plan = locality_plan(endpoints, PROXY, setting, failover=False)
    assert plan.weighted and len(plan.levels) == 1
    weights = {(g.locality.zone, g.locality.subzone): g.weight for g in plan.levels[0]}
    # zone1's 80 shared by its subzones in proportion to their endpoints (1 and 3), rounded up
    assert weights == {("zone1", "sub1"): 20, ("zone1", "sub2"): 60, ("zone2", "sub1"): 20}
    # no rule from this proxy's locality: every locality at its own weight (its endpoints)
    east = Ep("w", loc("eu-west/zone9"))
    unchanged = locality_plan(endpoints, east, setting, failover=True)
    assert [g.weight for g in unchanged.levels[0]] == [1, 1, 3, 1]
    # distribute ignores failover
    assert len(unchanged.levels) == 1


def test_distribute_to_localities_without_endpoints_leaves_none():
    setting = LocalityLbSetting(distribute=(Distribute("*", (("ap-south", 100),)),))
    assert locality_plan(SPREAD, PROXY, setting, failover=True).levels == ()


def test_topology_labels_are_istios():
    labels = topology_labels(Ep("x", loc("r/z/s"), labels=(("app", "x"),), network="n", node="node-7"))
    assert labels == {"app": "x", "topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "z",
                      "topology.istio.io/subzone": "s", "topology.istio.io/cluster": "Kubernetes",
                      "kubernetes.io/hostname": "node-7", "topology.istio.io/network": "n"}
    own = topology_labels(Ep("x", network="n", labels=(("topology.istio.io/network", "mine"),)))
    assert own["topology.istio.io/network"] == "mine"


def test_failover_priority_ranks_by_the_first_label_that_differs():
    endpoints = [ep("same", "us-west/zone1", network="net1"), ep("other-region", "us-east/zone1", network="net1"),
                 ep("other-net", "us-west/zone1", network="net2"), ep("neither", "us-east/zone1", network="net2")]
    setting = LocalityLbSetting(failover_priority=("topology.istio.io/network", "topology.kubernetes.io/region"))
    plan = locality_plan(endpoints, PROXY, setting, failover=True)
    assert uids(plan) == [["same"], ["other-region"], ["neither", "other-net"]]
    assert plan.weighted
    # label=value compares with that value, not the proxy's
    pinned = LocalityLbSetting(failover_priority=("topology.istio.io/network=net2",))
    assert uids(locality_plan(endpoints, PROXY, pinned, failover=True)) == [["neither", "other-net"],
                                                                             ["other-region", "same"]]


def test_failover_priority_then_failover_when_both_are_written():
    endpoints = [ep("a", "us-west/zone1/sub1", labels=(("tier", "gold"),)),
                 ep("b", "us-west/zone2/sub1", labels=(("tier", "gold"),)),
                 ep("c", "us-west/zone1/sub1", labels=(("tier", "silver"),))]
    proxy = Ep("w", loc("us-west/zone1/sub1"), labels=(("tier", "gold"),))
    only_labels = LocalityLbSetting(failover_priority=("tier",))
    assert uids(locality_plan(endpoints, proxy, only_labels, failover=True)) == [["a", "b"], ["c"]]
    both = LocalityLbSetting(failover_priority=("tier",), failover=(Failover("us-west", "us-east"),))
    assert uids(locality_plan(endpoints, proxy, both, failover=True)) == [["a"], ["b"], ["c"]]


def test_no_setting_is_one_level():
    plan = locality_plan(SPREAD, PROXY, None, failover=True)
    assert len(plan.levels) == 1 and not plan.weighted
    assert locality_plan([], PROXY, MESH_DEFAULT, failover=True).levels == ()


def _plan(*sizes: int) -> LocalityPlan:
    """Levels of `sizes` endpoints: the proxy's subzone, its zone, its region."""
    where = ("r/z/s", "r/z/t", "r/y/s")
    plan = locality_plan([ep(f"p{level}-{i}", where[level]) for level, n in enumerate(sizes) for i in range(n)],
                         Ep("w", loc("r/z/s")), MESH_DEFAULT, failover=True)
    assert [sum(len(g.endpoints) for g in lv) for lv in plan.levels] == list(sizes)
    return plan


def _down(plan: LocalityPlan, *counts: int) -> set:
    """The first counts[i] endpoints of level i unhealthy."""
    return {e.uid for level, n in zip(plan.levels, counts) for e in [e for g in level for e in g.endpoints][:n]}


@pytest.mark.parametrize("sizes, down, threshold, loads, panic", [
    ((10, 10), (0, 0), 0, (100, 0), (False, False)),
    ((10, 10), (2, 0), 0, (100, 0), (False, False)),          # 80 % × 1.4 is still 100 %
    ((10, 10), (3, 0), 0, (98, 2), (False, False)),           # 70 % × 1.4 = 98: the rest spills over
    ((10, 10), (5, 0), 0, (70, 30), (False, False)),
    ((10, 10), (10, 0), 0, (0, 100), (False, False)),
    ((10, 10), (5, 5), 0, (70, 30), (False, False)),
    ((10, 10), (8, 8), 0, (50, 50), (False, False)),          # 28 + 28 of 100: scaled up
    ((10, 10), (9, 6), 0, (20, 80), (False, False)),
    ((10, 10), (9, 6), 30, (20, 80), (True, False)),          # the level under 30 % healthy in panic
    ((10, 10), (8, 8), 50, (50, 50), (True, True)),           # every level in panic: by endpoints
    ((10, 30), (8, 28), 50, (25, 75), (True, True)),
    ((10, 10), (10, 10), 0, (100, 0), (False, False)),        # nothing healthy, no panic: level 0, to fail
    ((10, 10), (10, 10), 50, (50, 50), (True, True)),
    ((10, 10, 10), (10, 5, 0), 0, (0, 70, 30), (False, False, False)),
    ((4,), (1,), 50, (100,), (False,)),                        # 75 % × 1.4: available, whatever the threshold
    ((4,), (3,), 50, (100,), (True,)),
])
def test_priority_load_is_envoys(sizes, down, threshold, loads, panic):
    plan = _plan(*sizes)
    load = priority_load(plan, _down(plan, *down), threshold)
    assert (load.healthy, load.panic) == (loads, panic)
    assert sum(load.healthy) == 100


@pytest.mark.parametrize("loads, value, level", [
    ((70, 30), 0, 0), ((70, 30), 69, 0), ((70, 30), 70, 1), ((70, 30), 99, 1), ((70, 30), 170, 1),
    ((0, 100), 0, 1), ((100, 0), 99, 0), ((20, 0, 80), 20, 2),
])
def test_choose_level_by_cumulative_share(loads, value, level):
    from meshcore.traffic.locality import PriorityLoad
    assert choose_level(PriorityLoad(loads, (False,) * len(loads)), value) == level


def test_effective_locality_weights_fall_once_under_the_overprovisioned_share():
    setting = LocalityLbSetting(distribute=(Distribute("*", (("x", 80), ("y", 20))),))
    endpoints = [ep(f"x{i}", "x") for i in range(10)] + [ep(f"y{i}", "y") for i in range(10)]
    level = locality_plan(endpoints, PROXY, setting, failover=False).levels[0]
    assert locality_weights(level) == [80.0, 20.0]
    assert locality_weights(level, {f"x{i}" for i in range(2)}) == [80.0, 20.0]          # 80 % × 1.4 ≥ 1
    assert locality_weights(level, {f"x{i}" for i in range(3)}) == pytest.approx([78.4, 20.0])
    assert locality_weights(level, {f"x{i}" for i in range(5)}) == pytest.approx([56.0, 20.0])
    assert locality_weights(level, {f"x{i}" for i in range(10)}) == [0.0, 20.0]
    assert [choose_weighted([56.0, 20.0], r) for r in (0.0, 0.73, 0.74, 0.999)] == [0, 0, 1, 1]
    assert choose_weighted([0.0, 0.0], 0.5) is None


# -- the DestinationRule's fields --------------------------------------------------------

def dr(lb: str):
    import yaml
    return destination_rule(yaml.safe_load(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: shop}\n"
        "spec:\n  host: r\n  trafficPolicy:\n    outlierDetection: {}\n"
        f"    loadBalancer: {{localityLbSetting: {lb}}}\n"))


def test_the_setting_is_read():
    setting = dr("{enabled: true, distribute: [{from: 'us-west/*', to: {'us-west/*': 70, 'us-east/z1': 30}}]}"
                 ).traffic_policy.load_balancer.locality
    assert setting == LocalityLbSetting(True, (Distribute("us-west/*", (("us-west/*", 70), ("us-east/z1", 30))),))
    setting = dr("{failover: [{from: a, to: b}], failoverPriority: [topology.istio.io/network]}"
                 ).traffic_policy.load_balancer.locality
    assert setting == LocalityLbSetting(None, (), (Failover("a", "b"),), ("topology.istio.io/network",))
    assert dr("{enabled: false}").traffic_policy.load_balancer.locality.enabled is False


@pytest.mark.parametrize("lb, reason", [
    ("{distribute: [{from: a, to: {a: 100}}], failover: [{from: a, to: b}]}", "'distribute' and 'failover'"),
    ("{failover: [{from: a, to: b}], failoverPriority: [topology.kubernetes.io/zone]}", "topology label"),
    ("{distribute: [{from: a, to: {a: 60, b: 30}}]}", "total locality weight 90 != 100"),
    ("{distribute: [{from: a, to: {a: 0, b: 100}}]}", "range [1, 100]"),
    ("{distribute: [{from: a, to: {a/*/c: 100}}]}", "wildcard"),
    ("{distribute: [{from: a, to: {'a//c': 100}}]}", "empty region/zone/subzone"),
    ("{distribute: [{from: a, to: {a: 50, a/z: 50}}]}", "overlap"),
    ("{distribute: [{from: a, to: {a/z/*: 50, a/z/s: 50}}]}", "overlap"),
    ("{distribute: [{from: '*', to: {a: 100}}, {from: b, to: {a: 100}}]}", "overlap"),
    ("{failover: [{from: a, to: a}]}", "different regions"),
    ("{failover: [{from: a/z, to: b}]}", "only specify region"),
    ("{failover: [{from: a, to: 'b*'}]}", "wildcard"),
    ("{enabled: true, weights: 1}", "unknown field"),
])
def test_what_istiod_refuses_is_refused(lb, reason):
    with pytest.raises(ConfigError, match="localityLbSetting") as e:
        dr(lb)
    assert reason in str(e.value)
