"""Which endpoint of a backend service a request through the waypoint goes to when a
DestinationRule speaks for the service: its subset's endpoints, locality load balancing
(priority levels by locality, or locality weights, relative to the waypoint's own
workload: traffic/locality.py), its load balancer (ROUND_ROBIN, RANDOM, LEAST_REQUEST
— Istio's default —, a consistent hash on a header, cookie, query parameter or the
source address, on a ring or a Maglev table) and its outlier detection (endpoints
ejected after consecutive errors, back after their ejection time, Envoy's panic when
too few are left). Without a DestinationRule the node's routing picks (round robin).

A pick, as Envoy makes it: the level by the levels' shares of traffic (ejected
endpoints count as unhealthy there, so a level losing endpoints spills traffic to the
next), with the request's hash when it has one; then, with locality weights, a
locality of that level by its effective weight; then the balancer over that level's
(or locality's) healthy endpoints, or all of them when the level is in panic.

State is kept per destination (service, subset, port) while the policy for it stays
the same; a new policy (a configuration change) starts it afresh.

    ticket = picker.choose(state, me, service, port, subset, rule, request=, source_ip=, avoid=)
    ticket.route                                  # the endpoint's route (REFUSE: none, and why)
    ticket.record(status=, failure=)              # how it went, once (outlier detection)
    ticket.finish()                               # no longer in flight, once

A destination's connection pool bounds its requests in flight (in_flight_limit): over
it, choose() raises Overflow (Envoy's circuit breaker: 503, flag UO). It also bounds
its retries outstanding at once (retry_limit):

    hold = picker.hold_retry(destination)         # a RetryHold, or None at the limit
    hold.finish()                                 # its outcome is known, once
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from meshcore.node.routing import REFUSE, Route, endpoint_route, service_endpoints
from meshcore.traffic.destinationrule import cluster_policy, subset_endpoints
from meshcore.traffic.istio_model import ClusterPolicy, RequestAttributes, SimpleLB
from meshcore.traffic.loadbalancer import MAGLEV_DEFAULT_TABLE_SIZE, LeastRequest, Maglev, RandomChoice, RingHash, \
    RoundRobin, consistent_hash_key, hash_value
from meshcore.traffic.locality import LocalityPlan, PriorityLoad, choose_level, choose_weighted, \
    effective_setting, locality_plan, locality_weights, priority_load
from meshcore.traffic.outlier import OutlierDetector, panic_threshold

MAX_DESTINATIONS = 4096          # destinations whose balancing state is kept, at most
MAX_HASH_TABLES = 16             # rings or Maglev tables kept per destination (endpoint sets seen lately)
MAGLEV_TABLE_LIMIT = MAGLEV_DEFAULT_TABLE_SIZE     # the largest Maglev table filled


def in_flight_limit(policy: ClusterPolicy) -> tuple[int | None, str]:
    """How many requests a destination's connection pool lets be in flight at once, and
    from what: `http.http2MaxRequests` (Envoy's max_requests), and `tcp.maxConnections`
    plus `http.http1MaxPendingRequests` when both are set (each connection carrying one
    HTTP/1.1 request, and that many more waiting for one: meshcore does not hold
    requests waiting, so what would wait goes at once within the same bound)."""
    pool = policy.connection_pool
    if pool is None:
        return None, ""
    limits = []
    if pool.http is not None and pool.http.http2_max_requests is not None:
        limits.append((pool.http.http2_max_requests, "http2MaxRequests"))
    if pool.tcp is not None and pool.tcp.max_connections is not None and pool.http is not None \
            and pool.http.http1_max_pending_requests is not None:
        limits.append((pool.tcp.max_connections + pool.http.http1_max_pending_requests,
                       "maxConnections + http1MaxPendingRequests"))
    return min(limits) if limits else (None, "")


def retry_limit(policy: ClusterPolicy) -> int | None:
    """How many retries to a destination may be outstanding at once: its connection
    pool's `http.maxRetries` (Envoy's max_retries circuit breaker). None (no bound) when
    unset or 0, as istiod then leaves its own default threshold, 2^32-1, and when a
    retryBudget applies (Envoy's retry_budget overrides the max_retries breaker)."""
    pool = policy.connection_pool
    if pool is None or pool.http is None or policy.retry_budget:
        return None
    return pool.http.max_retries or None


def may_retry(limit: int | None, outstanding: int) -> bool:
    """Whether one more retry may start with `outstanding` already under way."""
    return limit is None or outstanding < limit


class Overflow(Exception):
    """The destination's requests in flight are at its connection pool's limit."""


class Ticket:
    """One attempt: how it went is told once (record(): what outlier detection counts),
    and its place in the destination's count of requests in flight is given back once
    (finish(): when it is given up, or when its request ends, its response streamed).
    The place is given back to the balancing state it was taken in (`counted`): after a
    configuration change replaced that state, the new one's count starts at zero, as
    Envoy's new cluster starts a new resource manager."""
    __slots__ = ("picker", "destination", "route", "counted", "recorded", "done")

    def __init__(self, picker: "EndpointPicker", destination: tuple, route: Route,
                 counted: "_Balancing | None" = None):
        self.picker, self.destination, self.route, self.counted = picker, destination, route, counted
        self.recorded = self.done = False

    def record(self, *, status: int | None = None, failure: str | None = None) -> None:
        if self.recorded or (status is None and failure is None):
            return
        self.recorded = True
        self.picker.outcome(self.route, self.destination, status=status, failure=failure)

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.counted is not None and self.route.workload is not None:
            self.counted.finished(self.route.workload.uid)


class RetryHold:
    """One retry's place in its destination's count of retries outstanding, from the
    moment it is decided until the retried attempt's outcome is known or its request
    ends (Envoy: taken in shouldRetry, given back at the next one or with the retry
    state). finish() gives it back, once, to the balancing state it was taken in (None:
    a destination without one, not counted)."""
    __slots__ = ("counted", "done")

    def __init__(self, counted: "_Balancing | None"):
        self.counted, self.done = counted, False

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.counted is not None:
            self.counted.retries = max(0, self.counted.retries - 1)


@dataclass(slots=True)
class _Balancing:
    policy: ClusterPolicy
    round_robin: RoundRobin = field(default_factory=RoundRobin)
    detector: OutlierDetector | None = None
    members: tuple = ()                       # endpoint uids the detector was built for
    plan: LocalityPlan | None = None
    plan_for: tuple = ()                      # ids of the waypoint's workload and the candidates planned for
    plan_refs: tuple = ()
    load: PriorityLoad | None = None          # the levels' shares, for the plan and the endpoints in load_for
    load_for: frozenset = frozenset()         # ejected
    hash_tables: dict = field(default_factory=dict)   # endpoint uids -> RingHash or Maglev over them
    active: dict = field(default_factory=dict)   # endpoint uid -> requests in flight
    in_flight: int = 0                           # requests in flight to the destination
    retries: int = 0                             # retries to it outstanding (RetryHold)

    def finished(self, uid: str) -> None:
        """An attempt to endpoint `uid` counted here is no longer in flight."""
        self.in_flight = max(0, self.in_flight - 1)
        n = self.active.get(uid, 0)
        if n > 1:
            self.active[uid] = n - 1
        else:
            self.active.pop(uid, None)


class EndpointPicker:
    def __init__(self, *, rand=random.random, clock=time.monotonic):
        self.rand, self.clock = rand, clock
        self._balancing: dict[tuple, _Balancing] = {}

    def choose(self, state, me, service, port: int, subset: str, rule, *, request: RequestAttributes | None = None,
               source_ip: str | None = None, avoid: str | None = None) -> Ticket:
        """The attempt to the endpoint chosen (its route REFUSE, with why, when none can
        be). `avoid`: an endpoint uid a retry should not go back to, if another is left."""
        destination = (service.key, subset, port)
        candidates = subset_endpoints(rule, subset, service_endpoints(state, service, port))
        if candidates is None:
            return Ticket(self, destination, Route(REFUSE, service=service,
                                                   reason=f"no subset {subset!r} of {service.key} (no cluster)"))
        if not candidates:
            return Ticket(self, destination, Route(
                REFUSE, service=service,
                reason=f"service {service.key}{' subset ' + subset if subset else ''} has no healthy endpoint "
                       f"for port {port}"))
        policy = cluster_policy(rule, subset, port)
        b = self._state(destination, policy, candidates, me)
        if not b.plan.levels:
            return Ticket(self, destination, Route(
                REFUSE, service=service,
                reason=f"service {service.key}{' subset ' + subset if subset else ''} has no endpoint for port "
                       f"{port} in a locality the DestinationRule distributes traffic from "
                       f"{_locality_text(me.locality)} to"))
        limit, why = in_flight_limit(policy)
        if limit is not None and b.in_flight >= limit:
            raise Overflow(f"{service.key}{' subset ' + subset if subset else ''}: {b.in_flight} requests in "
                           f"flight, the connection pool allows {limit} ({why})")
        chosen = self._pick(b, policy, request, source_ip, avoid)
        b.active[chosen.uid] = b.active.get(chosen.uid, 0) + 1
        b.in_flight += 1
        return Ticket(self, destination, endpoint_route(state, me, service, port, chosen), b)

    def _state(self, key: tuple, policy: ClusterPolicy, candidates: list, me) -> _Balancing:
        b = self._balancing.get(key)
        if b is None or b.policy != policy:
            if len(self._balancing) >= MAX_DESTINATIONS:
                self._balancing.clear()
            b = self._balancing[key] = _Balancing(policy)
            if policy.outlier_detection is not None:
                b.detector = OutlierDetector(policy.outlier_detection)
        # workloads are frozen and kept across views while unchanged: their identities
        # say whether the plan still holds, without comparing every field per request
        plan_for = (id(me), *map(id, candidates))
        if plan_for != b.plan_for:
            lb = policy.load_balancer
            setting = effective_setting(lb.locality if lb is not None else None)
            b.plan = locality_plan(candidates, me, setting, failover=policy.outlier_detection is not None)
            b.plan_for = plan_for
            b.plan_refs = (me, candidates)     # kept alive, so their ids are not reused
            b.load = None
            members = tuple(w.uid for w in b.plan.endpoints())
            if members != b.members:
                b.members = members
                if b.detector is not None:
                    b.detector.update_endpoints(members)
        return b

    def _pick(self, b: _Balancing, policy: ClusterPolicy, request, source_ip, avoid):
        plan = b.plan
        unhealthy = frozenset()
        if b.detector is not None:
            b.detector.sweep(self.clock())
            unhealthy = b.detector.ejected()
        lb = policy.load_balancer
        hashing = lb is not None and lb.consistent_hash is not None
        key = consistent_hash_key(lb.consistent_hash, request, source_ip) if hashing and request is not None else None
        hashed = hash_value(key) if key is not None else None
        if len(plan.levels) == 1 and not unhealthy:
            level, panic = 0, False          # all of it healthy, in one level: nothing to weigh
        else:
            if b.load is None or b.load_for != unhealthy:
                # the shares change only when the plan or the ejected endpoints do
                b.load = priority_load(plan, unhealthy, panic_threshold(policy.outlier_detection))
                b.load_for = unhealthy
            load = b.load
            if hashed is not None:
                level = choose_level(load, hashed)
            elif sum(1 for share in load.healthy if share) > 1:
                level = choose_level(load, int(self.rand() * 100))
            else:
                level = next((i for i, share in enumerate(load.healthy) if share), 0)
            panic = load.panic[level]
        if panic:
            usable = plan.members[level]
        else:
            hosts = plan.members[level]
            groups = plan.levels[level]
            if plan.weighted and len(groups) > 1 and hashed is None:
                weights = locality_weights(groups, unhealthy)
                if sum(1 for w in weights if w > 0) > 1:
                    chosen = choose_weighted(weights, self.rand())
                else:
                    chosen = next((i for i, w in enumerate(weights) if w > 0), None)
                if chosen is not None:
                    hosts = groups[chosen].endpoints
            usable = [w for w in hosts if w.uid not in unhealthy] if unhealthy else hosts
            if not usable:
                usable = plan.endpoints()     # nothing healthy and no panic: the pick is the answer's to fail
        if avoid is not None and len(usable) > 1:
            usable = [w for w in usable if w.uid != avoid] or usable
        if hashing:
            if hashed is None:
                return RandomChoice(self.rand).choose(usable)
            table = self._hash_table(b, lb.consistent_hash.maglev_table_size, plan.members[level])
            return _hashed_pick(table, hashed, usable)
        algorithm = lb.algorithm if lb is not None else SimpleLB.LEAST_REQUEST
        if algorithm is SimpleLB.ROUND_ROBIN:
            return b.round_robin.choose(usable)
        if algorithm is SimpleLB.RANDOM:
            return RandomChoice(self.rand).choose(usable)
        return LeastRequest(self.rand).choose(usable, lambda w: b.active.get(w.uid, 0))

    @staticmethod
    def _hash_table(b: _Balancing, maglev_table_size: int | None, hosts: list):
        """The ring (ringHash) or Maglev table over the uids of a level's `hosts`, healthy
        or not: built once per set of endpoints, since a Maglev table takes tens of
        milliseconds to fill. Ejections and retries do not change it: a pick skips the
        endpoints it may not take (_hashed_pick)."""
        members = tuple(w.uid for w in hosts)
        table = b.hash_tables.get(members)
        if table is None:
            if len(b.hash_tables) >= MAX_HASH_TABLES:
                del b.hash_tables[next(iter(b.hash_tables))]      # the oldest set
            if maglev_table_size is not None:
                # filled on the request path: a table over 65537 slots (istiod takes up to
                # 5000011) would hold requests for seconds, so it is filled at that size
                table = Maglev(members, table_size=min(maglev_table_size, MAGLEV_TABLE_LIMIT))
            else:
                table = RingHash(members)
            b.hash_tables[members] = table
        return table

    # -- attempts ----------------------------------------------------------------------
    def hold_retry(self, destination: tuple) -> RetryHold | None:
        """A place for one more retry to `destination` (service key, subset, port), or
        None when its connection pool's retries outstanding are at their limit. A
        destination whose state is gone (a configuration change) is not bounded."""
        b = self._balancing.get(destination)
        if b is None:
            return RetryHold(None)
        if not may_retry(retry_limit(b.policy), b.retries):
            return None
        b.retries += 1
        return RetryHold(b)

    def outcome(self, route: Route, destination: tuple, *, status: int | None = None,
                failure: str | None = None) -> None:
        """The attempt to `route` (chosen for `destination`: service key, subset, port)
        got the answer's `status`, or a `failure` without one (connect-failure, reset,
        refused-stream, timeout): counted for outlier detection."""
        b = self._balancing.get(destination)
        if b is not None and route.workload is not None and b.detector is not None:
            b.detector.record(route.workload.uid, self.clock(), status=status, failure=failure)



def _locality_text(locality) -> str:
    return "/".join(p for p in (locality.region, locality.zone, locality.subzone) if p) or "no locality"


HASH_PROBES = 8                  # table lookups a hashed pick tries before it falls back


def _hashed_pick(table, hashed: int, usable: list):
    """The endpoint of `usable` a request hashed to `hashed` takes, from `table` (over a
    level's endpoints, some of which may be ejected or avoided by a retry). An endpoint
    it may not take sends it on to another lookup, its hash stirred by the attempt, as
    Envoy's hashing balancers choose again for a host its retry predicate refuses; after
    HASH_PROBES of them, the usable endpoint ranking first for the key (rendezvous), so
    the pick stays the same for the same key and endpoints."""
    allowed = {w.uid: w for w in usable}
    for attempt in range(HASH_PROBES):
        # the table holds uids: a workload changed in a later view is the one chosen
        found = allowed.get(table.choose(hashed if not attempt else hash_value(f"{hashed}#{attempt}")))
        if found is not None:
            return found
    return max(usable, key=lambda w: hash_value(f"{hashed}:{w.uid}"))
