"""Load balancer choosers with Envoy's algorithms, randomness injected."""
import itertools
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from meshcore.traffic.istio_model import ConsistentHash, HashKey, RequestAttributes
from meshcore.traffic.loadbalancer import (
    RING_POINTS_PER_ENDPOINT, LeastRequest, Maglev, RandomChoice, RingHash, RoundRobin, consistent_hash_key,
    hash_value,
)


def draws(*values):
    it = iter(values)
    return lambda: next(it)


def test_round_robin_takes_turns():
    rr = RoundRobin()
    assert [rr.choose("abc") for _ in range(7)] == list("abcabca")
    assert RoundRobin(start=1).choose("abc") == "b"
    assert rr.choose([]) is None


def test_random_is_uniform_over_the_draw():
    assert [RandomChoice(draws(r)).choose("abcd") for r in (0.0, 0.26, 0.5, 0.99)] == list("abcd")
    assert RandomChoice(draws(0.5)).choose([]) is None


def test_least_request_power_of_two_choices():
    active = {"a": 5, "b": 1, "c": 3, "d": 0}.__getitem__
    # draws a then b: b has fewer active requests
    assert LeastRequest(draws(0.0, 0.3)).choose("abcd", active) == "b"
    # draws c then a: c
    assert LeastRequest(draws(0.6, 0.1)).choose("abcd", active) == "c"
    # the same endpoint twice: that one
    assert LeastRequest(draws(0.0, 0.1)).choose("abcd", active) == "a"
    # a tie keeps the first drawn
    assert LeastRequest(draws(0.3, 0.6)).choose("abcd", {"b": 2, "c": 2, "a": 0, "d": 0}.__getitem__) == "b"
    # more choices: the least loaded of all drawn
    assert LeastRequest(draws(0.0, 0.3, 0.9), choice_count=3).choose("abcd", active) == "d"


def test_least_request_favours_idle_endpoints():
    import random
    rng = random.Random(7)
    active = {"busy": 10, "idle": 0}
    picks = Counter(LeastRequest(rng.random).choose(["busy", "idle"], active.__getitem__) for _ in range(4000))
    assert 0.70 < picks["idle"] / 4000 < 0.80          # 1 - (1/2)^2 = 75 %


def test_ring_size_is_stated():
    assert len(RingHash([f"10.0.0.{i}:80" for i in range(3)])) == 3 * RING_POINTS_PER_ENDPOINT


def test_ring_spreads_keys():
    ring = RingHash([f"10.0.0.{i}:80" for i in range(4)])
    counts = Counter(ring.choose(hash_value(f"user-{i}")) for i in range(4000))
    assert len(counts) == 4 and min(counts.values()) > 600


endpoint_sets = st.lists(st.integers(0, 200).map(lambda i: f"10.1.{i // 250}.{i % 250}:8080"),
                         min_size=2, max_size=12, unique=True)
keys = st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=50)


@settings(max_examples=60, deadline=None)
@given(endpoint_sets, keys)
def test_ring_same_key_same_endpoint(endpoints, ks):
    a, b = RingHash(endpoints), RingHash(list(reversed(endpoints)))
    for k in ks:
        assert a.choose(hash_value(k)) == a.choose(hash_value(k)) == b.choose(hash_value(k))


@settings(max_examples=60, deadline=None)
@given(endpoint_sets, keys, st.data())
def test_ring_minimal_movement_when_an_endpoint_leaves(endpoints, ks, data):
    gone = data.draw(st.sampled_from(endpoints))
    before = RingHash(endpoints)
    after = RingHash([e for e in endpoints if e != gone])
    for k in ks:
        was = before.choose(hash_value(k))
        now = after.choose(hash_value(k))
        if was != gone:
            assert now == was          # only the keys the leaving endpoint held move
        else:
            assert now != gone


def test_maglev_even_and_mostly_stable():
    endpoints = [f"10.0.0.{i}:80" for i in range(5)]
    table = Maglev(endpoints, table_size=65537)
    counts = Counter(table.choose(hash_value(f"k{i}")) for i in range(5000))
    assert len(counts) == 5 and min(counts.values()) > 800
    smaller = Maglev(endpoints[:-1], table_size=65537)
    moved = sum(1 for i in range(5000)
                if table.choose(hash_value(f"k{i}")) not in (endpoints[-1], smaller.choose(hash_value(f"k{i}"))))
    assert moved < 5000 * 0.05         # Maglev's minimal disruption: few keys beyond the leaver's move
    assert Maglev([], table_size=7).choose(1) is None


def test_hash_keys_from_requests():
    req = RequestAttributes("GET", "/p?user=ann&x=1", headers=(("X-User", "bob"), ("Cookie", "a=1; session=s1")))
    assert consistent_hash_key(ConsistentHash(HashKey.HEADER, "x-user"), req) == "bob"
    assert consistent_hash_key(ConsistentHash(HashKey.COOKIE, "session"), req) == "s1"
    assert consistent_hash_key(ConsistentHash(HashKey.QUERY_PARAMETER, "user"), req) == "ann"
    assert consistent_hash_key(ConsistentHash(HashKey.SOURCE_IP), req, "10.0.0.7") == "10.0.0.7"
    assert consistent_hash_key(ConsistentHash(HashKey.HEADER, "x-none"), req) is None
    assert consistent_hash_key(ConsistentHash(HashKey.COOKIE, "none"), req) is None
    assert consistent_hash_key(ConsistentHash(HashKey.QUERY_PARAMETER, "none"), req) is None


def test_choosers_do_not_consume_randomness_without_endpoints():
    never = itertools.repeat(0.0).__next__
    assert LeastRequest(never).choose([], lambda e: 0) is None
    assert RingHash([]).choose(5) is None


@pytest.mark.parametrize("n, table_size", [(1, 7), (3, 251), (7, 65537), (40, 65537), (250, 65537)])
def test_maglev_table_shares_slots_evenly_and_keeps_keys_when_an_endpoint_leaves(n, table_size):
    endpoints = [f"10.0.{i // 250}.{i % 250}:80" for i in range(n)]
    table = Maglev(endpoints, table_size=table_size)
    assert len(table) == table_size
    # every endpoint holds ⌊M/N⌋ or ⌈M/N⌉ slots: they fill the table in turn
    slots = Counter(table._table)
    assert len(slots) == n and max(slots.values()) - min(slots.values()) <= 1
    keys = [hash_value(f"user-{i}") for i in range(3000)]
    # the same key, the same endpoint, whatever order the endpoints come in
    shuffled = Maglev(list(reversed(endpoints)), table_size=table_size)
    assert all(table.choose(k) == shuffled.choose(k) for k in keys)
    if n == 1:
        return
    gone = endpoints[n // 2]
    after = Maglev([e for e in endpoints if e != gone], table_size=table_size)
    held = [k for k in keys if table.choose(k) == gone]
    assert all(after.choose(k) != gone for k in held)
    moved = sum(1 for k in keys if table.choose(k) != gone and after.choose(k) != table.choose(k))
    # the leaver's keys move; of the others only a few do (Maglev's paper: about as many again at most)
    assert moved <= max(len(held), 0.02 * len(keys))
    # balance of keys: each endpoint within a generous bound of its share
    counts = Counter(table.choose(k) for k in keys)
    share = len(keys) / n
    if share >= 100:
        assert all(0.7 * share <= c <= 1.3 * share for c in counts.values())
