"""Locality load balancing for a destination of the waypoint: a DestinationRule's
`localityLbSetting` (else the mesh's default, enabled) turned into Envoy's priority
levels and locality weights as istiod writes them for the proxy's own locality, then
balanced over as Envoy does. Pure functions: endpoints, the proxy, the setting and which
endpoints are unhealthy (ejected) go in; levels, loads and weights come out.

    setting = effective_setting(rule_setting)                  # None: locality LB is off
    plan = locality_plan(endpoints, proxy, setting, failover=outlier_detection is not None)
    load = priority_load(plan, unhealthy, panic_threshold)     # percent per level, panic per level
    level = choose_level(load, value)                          # value: a hash, or a draw in [0, 100)
    weights = locality_weights(plan.levels[level], unhealthy)  # when plan.weighted

What istiod writes (pilot/pkg/networking/core/loadbalancer/loadbalancer.go):
- `distribute` (a rule whose `from` matches the proxy's locality; the first one): each
  locality matched by a `to` entry gets that entry's weight, shared among the
  localities it matches in proportion to their endpoints (rounded up); localities no
  entry matches get no traffic. One priority level. `failover` is then not applied.
- otherwise, only when the destination has outlierDetection (without it Envoy would
  never see an endpoint fail, so it would never leave a level) or failover is forced:
  - `failoverPriority` (labels, `label=value` to compare with that value instead of
    the proxy's): an endpoint whose labels match the proxy's for all of them is at
    priority 0; one whose first mismatch is the j-th label (from 0) of n is at n - j.
    Endpoints and proxy carry the topology labels istiod adds (region, zone, subzone,
    cluster, node hostname, network). `failover` is applied on top only when both
    are set.
  - else by locality: 0 for region, zone and subzone all equal to the proxy's, 1 for
    region and zone, 2 for the region, 3 for another region, and 4 for a region that
    is not the `to` of the `failover` entry whose `from` is the proxy's region.
  - priorities are renumbered 0..N without gaps.
- locality-weighted balancing (a locality picked by weight before an endpoint in it)
  is turned on for `distribute`, and for failover with `failover` or
  `failoverPriority` written; plain locality failover balances over every endpoint of
  a level.

What Envoy does with them (load_balancer_impl.cc): a level's health is
min(100, 140 × healthy / endpoints) (the overprovisioning factor 1.4); the traffic goes
to levels in order, each taking its health's share of what is left, scaled up when
their total is under 100; a level is in panic (its ejected endpoints used too) when
that total is under 100 and its healthy share is under the panic threshold; when
every level is in panic, levels share traffic by their number of endpoints. A
locality's effective weight is its weight × min(1, 1.4 × healthy / endpoints).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:                      # state.model imports the traffic parsers, which import this
    from meshcore.state.model import Locality

OVERPROVISIONING_FACTOR = 140          # Envoy's default, in percent

# the labels istiod adds to an endpoint's and a proxy's own (AugmentLabels)
LABEL_REGION = "topology.kubernetes.io/region"
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_SUBZONE = "topology.istio.io/subzone"
LABEL_CLUSTER = "topology.istio.io/cluster"
LABEL_HOSTNAME = "kubernetes.io/hostname"
LABEL_NETWORK = "topology.istio.io/network"
TOPOLOGY_LABELS = (LABEL_REGION, LABEL_ZONE, LABEL_SUBZONE)


@dataclass(frozen=True, slots=True)
class Distribute:
    from_: str
    to: tuple[tuple[str, int], ...]           # locality (trailing `*` allowed) -> weight


@dataclass(frozen=True, slots=True)
class Failover:
    from_: str                                 # regions
    to: str


@dataclass(frozen=True, slots=True)
class LocalityLbSetting:
    enabled: bool | None = None                # None: not written (on)
    distribute: tuple[Distribute, ...] = ()
    failover: tuple[Failover, ...] = ()
    failover_priority: tuple[str, ...] = ()


MESH_DEFAULT = LocalityLbSetting(enabled=True)     # istiod's default mesh config


@dataclass(frozen=True, slots=True)
class LocalityGroup:
    """The endpoints of one locality at one priority, with Envoy's locality weight."""
    locality: Locality
    weight: int
    endpoints: tuple


@dataclass(frozen=True, slots=True)
class LocalityPlan:
    levels: tuple[tuple[LocalityGroup, ...], ...]     # priority 0 first; none: no endpoint left
    weighted: bool = False                             # Envoy's locality-weighted balancing
    # each level's endpoints in the order they were given (what a balancer goes through)
    members: tuple[tuple, ...] = ()

    def endpoints(self) -> list:
        return [e for level in self.members for e in level]


def _plan(levels: tuple[tuple[LocalityGroup, ...], ...], weighted: bool, endpoints: Sequence) -> LocalityPlan:
    order = {id(e): i for i, e in enumerate(endpoints)}
    members = tuple(tuple(sorted((e for g in level for e in g.endpoints), key=lambda e: order[id(e)]))
                    for level in levels)
    return LocalityPlan(levels, weighted, members)


@dataclass(frozen=True, slots=True)
class PriorityLoad:
    healthy: tuple[int, ...]          # percent of the traffic per level (sums to 100 when there is a level)
    panic: tuple[bool, ...]


def effective_setting(rule: LocalityLbSetting | None,
                      mesh: LocalityLbSetting | None = MESH_DEFAULT) -> LocalityLbSetting | None:
    """istiod's GetLocalityLbSetting: the DestinationRule's setting replaces the mesh's
    whole; `enabled: false` turns locality load balancing off."""
    if rule is not None:
        return None if rule.enabled is False else rule
    if mesh is None or mesh.enabled is False:
        return None
    return mesh


# -- what istiod writes -----------------------------------------------------------------

def split_locality(text: str) -> tuple[str, str, str]:
    parts = text.split("/")
    return (parts + ["", ""])[0], (parts + ["", ""])[1], (parts + ["", ""])[2]


def locality_matches(locality: Locality, rule: str) -> bool:
    """Whether `locality` is in a rule's `region[/zone[/subzone]]`, where `*` (and a part
    left out, below the region) matches anything."""
    region, zone, subzone = split_locality(rule)
    return ((region == "*" or locality.region == region)
            and (zone in ("*", "") or locality.zone == zone)
            and (subzone in ("*", "") or locality.subzone == subzone))


def lb_priority(proxy: Locality, endpoint: Locality) -> int:
    if proxy.region != endpoint.region:
        return 3
    if proxy.zone != endpoint.zone:
        return 2
    return 0 if proxy.subzone == endpoint.subzone else 1


def topology_labels(workload) -> dict[str, str]:
    """A workload's labels with those istiod adds from its locality, cluster, node and
    network (a network label of its own is kept)."""
    out = dict(workload.labels)
    loc = workload.locality
    for name, value in ((LABEL_REGION, loc.region), (LABEL_ZONE, loc.zone), (LABEL_SUBZONE, loc.subzone),
                        (LABEL_CLUSTER, getattr(workload, "cluster_id", "")),
                        (LABEL_HOSTNAME, getattr(workload, "node", ""))):
        if value:
            out[name] = value
    network = getattr(workload, "network", "")
    if network and not out.get(LABEL_NETWORK):
        out[LABEL_NETWORK] = network
    return out


def _groups(endpoints: Iterable) -> list[LocalityGroup]:
    by_locality: dict[Locality, list] = {}
    for e in endpoints:
        by_locality.setdefault(e.locality, []).append(e)
    return [LocalityGroup(loc, len(eps), tuple(eps))
            for loc, eps in sorted(by_locality.items(), key=lambda kv: (kv[0].region, kv[0].zone, kv[0].subzone))]


def _levels(prioritized: list[tuple[int, LocalityGroup]]) -> tuple[tuple[LocalityGroup, ...], ...]:
    """Priorities renumbered 0..N without gaps, each level's groups in their order."""
    present = sorted({p for p, _ in prioritized})
    return tuple(tuple(g for p, g in prioritized if p == level) for level in present)


def _distribute(proxy: Locality, groups: list[LocalityGroup], rules: Sequence[Distribute]) -> list[LocalityGroup]:
    for rule in rules:
        if not locality_matches(proxy, rule.from_):
            continue
        unmatched = list(range(len(groups)))
        weights: dict[int, int] = {}
        for target, weight in rule.to:
            matched = [i for i in unmatched if locality_matches(groups[i].locality, target)]
            unmatched = [i for i in unmatched if i not in matched]
            total = sum(groups[i].weight for i in matched)
            for i in matched:
                # a wildcard sharing its weight among several localities, rounded up as istiod does
                weights[i] = -(-groups[i].weight * weight // total)
        return [replace(g, weight=weights[i]) for i, g in enumerate(groups) if i in weights]
    return groups


def _failover(proxy: Locality, prioritized: list[tuple[int, LocalityGroup]],
              failover: Sequence[Failover]) -> list[tuple[int, LocalityGroup]]:
    out = []
    for base, g in prioritized:
        p = lb_priority(proxy, g.locality)
        if p == 3:
            rule = next((f for f in failover if f.from_ == proxy.region), None)
            if rule is not None and g.locality.region != rule.to:
                p = 4
        out.append((base * 5 + p, g))
    return out


def _priority_labels(spec: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    names, overrides = [], {}
    for item in spec:
        parts = item.split("=")
        names.append(parts[0])
        if len(parts) == 2:
            overrides[parts[0]] = parts[1]
    return names, overrides


def _failover_priorities(groups: list[LocalityGroup], proxy_labels: dict[str, str],
                         spec: Sequence[str]) -> list[tuple[int, LocalityGroup]]:
    names, overrides = _priority_labels(spec)
    wanted = [overrides.get(n, proxy_labels.get(n, "")) for n in names]
    out = []
    for g in groups:
        by_priority: dict[int, list] = {}
        for e in g.endpoints:
            labels = topology_labels(e)
            priority = 0
            for j, name in enumerate(names):
                if labels.get(name, "") != wanted[j]:
                    priority = len(names) - j
                    break
            by_priority.setdefault(priority, []).append(e)
        out += [(p, LocalityGroup(g.locality, len(by_priority[p]), tuple(by_priority[p])))
                for p in sorted(by_priority)]
    # renumbered before locality failover multiplies them
    present = sorted({p for p, _ in out})
    return [(present.index(p), g) for p, g in out]


def locality_plan(endpoints: Sequence, proxy, setting: LocalityLbSetting | None, *,
                  failover: bool) -> LocalityPlan:
    """The priority levels and locality weights istiod writes for `proxy` (a workload:
    its locality, and its labels for failoverPriority). `failover`: failover may be
    applied (the destination has outlierDetection)."""
    groups = _groups(endpoints)
    if setting is None:
        return _plan((tuple(groups),) if groups else (), False, endpoints)
    if setting.distribute:
        kept = _distribute(proxy.locality, groups, setting.distribute)
        return _plan((tuple(kept),) if kept else (), True, endpoints)
    if not failover or not groups:
        return _plan((tuple(groups),) if groups else (), False, endpoints)
    if setting.failover_priority:
        proxy_labels = topology_labels(proxy)
        if proxy_labels:
            prioritized = _failover_priorities(groups, proxy_labels, setting.failover_priority)
        else:
            prioritized = [(0, g) for g in groups]
        if setting.failover:
            prioritized = _failover(proxy.locality, prioritized, setting.failover)
    else:
        prioritized = _failover(proxy.locality, [(0, g) for g in groups], setting.failover)
    return _plan(_levels(prioritized), bool(setting.failover or setting.failover_priority), endpoints)


# -- what Envoy does with them --------------------------------------------------------------

def _healthy(endpoints: Iterable, unhealthy: frozenset | set) -> int:
    return sum(1 for e in endpoints if e.uid not in unhealthy)


def priority_load(plan: LocalityPlan, unhealthy: frozenset | set = frozenset(), panic_threshold: float = 50.0,
                  overprovisioning: int = OVERPROVISIONING_FACTOR) -> PriorityLoad:
    """Envoy's share of traffic per level (integer percent, as Envoy computes it) and
    which levels are in panic, with `unhealthy` endpoint uids left out of the healthy
    counts and the panic threshold in percent (0: never)."""
    n = len(plan.levels)
    if n == 0:
        return PriorityLoad((), ())
    counts = [len(level) for level in plan.members]
    healthy = [_healthy(level, unhealthy) for level in plan.members] if unhealthy else counts
    health = [min(100, overprovisioning * h // c) if c else 0 for h, c in zip(healthy, counts)]
    total = min(100, sum(health))
    loads = [0] * n
    if total > 0:
        remaining, first = 100, -1
        for i, value in enumerate(health):
            if first < 0 and value > 0:
                first = i
            loads[i] = min(remaining, value * 100 // total)
            remaining -= loads[i]
        loads[first] += remaining                 # rounding left over
    threshold = min(100.0, panic_threshold)
    if threshold == 0 and total == 0:
        # nothing healthy and panic off: nothing to send to; level 0 takes the (failing) pick
        loads[0] = 100
        return PriorityLoad(tuple(loads), (False,) * n)
    panic = [total != 100 and (100.0 * h / c if c else 0.0) < threshold for h, c in zip(healthy, counts)]
    if all(panic):
        hosts = sum(counts)
        loads = [100 * c // hosts for c in counts]
        loads[next(i for i, c in enumerate(counts) if c)] += 100 - sum(loads)
    return PriorityLoad(tuple(loads), tuple(panic))


def choose_level(load: PriorityLoad, value: int) -> int:
    """The level a pick goes to: `value` (a request's hash, or a draw) mod 100 against
    the levels' cumulative shares, as Envoy's choosePriority."""
    point = value % 100 + 1
    cumulative = 0
    for i, share in enumerate(load.healthy):
        cumulative += share
        if point <= cumulative:
            return i
    return 0


def locality_weights(level: Sequence[LocalityGroup], unhealthy: frozenset | set = frozenset(),
                     overprovisioning: int = OVERPROVISIONING_FACTOR) -> list[float]:
    """Each locality's effective weight in a level: its weight scaled down once fewer
    than 1/1.4 of its endpoints are healthy."""
    out = []
    for g in level:
        count = len(g.endpoints)
        ratio = _healthy(g.endpoints, unhealthy) / count if count else 0.0
        out.append(g.weight * min(1.0, overprovisioning / 100.0 * ratio))
    return out


def choose_weighted(weights: Sequence[float], r: float) -> int | None:
    """An index in proportion to `weights` for `r` in [0, 1); None when all are 0."""
    total = sum(weights)
    if total <= 0:
        return None
    point = r * total
    last = None
    for i, w in enumerate(weights):
        if w <= 0:
            continue
        last = i
        if point < w:
            return i
        point -= w
    return last
