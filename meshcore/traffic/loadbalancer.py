"""Endpoint choosers for a DestinationRule's `loadBalancer`, with Envoy's algorithms and
the randomness handed in (a callable returning floats in [0, 1)), so they can be
table-tested.

    RoundRobin().choose(endpoints)
    RandomChoice(random).choose(endpoints)
    LeastRequest(random).choose(endpoints, active_requests)     # power of two choices
    RingHash(endpoints).choose(hash_value(key))                  # consistent hash
    Maglev(endpoints, table_size=65537).choose(hash_value(key))
    consistent_hash_key(settings, request, source_ip) -> str | None

Istio's default (no `simple`, or the deprecated LEAST_CONN) is LEAST_REQUEST
(LoadBalancerSettings.algorithm). With no hash key in a request (no such header,
cookie or parameter), Envoy's hashing balancers pick at random: so does the caller.
"""
from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from meshcore.traffic.istio_model import ConsistentHash, HashKey, RequestAttributes

T = TypeVar("T")
Random = Callable[[], float]

RING_POINTS_PER_ENDPOINT = 128
MAGLEV_DEFAULT_TABLE_SIZE = 65537          # Envoy's default (a prime)


def _index(r: float, n: int) -> int:
    return min(int(r * n), n - 1)


class RoundRobin:
    """Envoy's unweighted round robin: each pick takes the next endpoint in turn."""

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def choose(self, endpoints: Sequence[T]) -> T | None:
        if not endpoints:
            return None
        chosen = endpoints[self._next % len(endpoints)]
        self._next += 1
        return chosen


class RandomChoice:
    """Envoy's RANDOM: any endpoint, uniformly."""

    def __init__(self, random: Random) -> None:
        self._random = random

    def choose(self, endpoints: Sequence[T]) -> T | None:
        if not endpoints:
            return None
        return endpoints[_index(self._random(), len(endpoints))]


class LeastRequest:
    """Envoy's LEAST_REQUEST for equally weighted endpoints: draw `choice_count` (2)
    endpoints at random, possibly the same one twice, and take the one with the fewest
    active requests (the first drawn on a tie)."""

    def __init__(self, random: Random, choice_count: int = 2) -> None:
        self._random = random
        self._choices = choice_count

    def choose(self, endpoints: Sequence[T], active_requests: Callable[[T], int]) -> T | None:
        if not endpoints:
            return None
        best = None
        for _ in range(self._choices):
            candidate = endpoints[_index(self._random(), len(endpoints))]
            if best is None or active_requests(candidate) < active_requests(best):
                best = candidate
        return best


def hash_value(key: str) -> int:
    """The 64-bit hash both rings place keys and endpoints with."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class RingHash(Generic[T]):
    """A consistent-hash ring. Each endpoint places RING_POINTS_PER_ENDPOINT (128) points,
    hashes of `<endpoint key>_<i>`, however many endpoints there are: a key goes to the
    owner of the first point at or after its hash (wrapping), so the same key finds the
    same endpoint, and an endpoint leaving moves only the keys it held. (Envoy instead
    sizes the whole ring to minimumRingSize, 1024 by default, and re-spreads points when
    the endpoint set changes.)"""

    def __init__(self, endpoints: Sequence[T], *, key: Callable[[T], str] = str,
                 points_per_endpoint: int = RING_POINTS_PER_ENDPOINT) -> None:
        ring = sorted((hash_value(f"{key(e)}_{i}"), key(e), n)
                      for n, e in enumerate(endpoints) for i in range(points_per_endpoint))
        self._hashes = [h for h, _, _ in ring]
        self._owners = [endpoints[n] for _, _, n in ring]

    def __len__(self) -> int:
        return len(self._hashes)

    def choose(self, value: int) -> T | None:
        if not self._hashes:
            return None
        i = bisect.bisect_left(self._hashes, value)
        return self._owners[i if i < len(self._owners) else 0]


class Maglev(Generic[T]):
    """Maglev hashing (Envoy's MAGLEV, the Maglev paper's listing 1): a lookup table of
    `table_size` slots (a prime; 65537 by default) that the endpoints fill in turn, each
    taking the next free slot of its own permutation (an offset and a skip from its
    key's hash), so every endpoint holds ⌊M/N⌋ or ⌈M/N⌉ slots; a key takes the slot its
    hash falls in. An endpoint leaving frees its slots for the others and moves few
    other keys. Endpoints are placed in the order of their keys, so the table depends
    only on the set of endpoints, not on the order they come in."""

    def __init__(self, endpoints: Sequence[T], *, key: Callable[[T], str] = str,
                 table_size: int = MAGLEV_DEFAULT_TABLE_SIZE) -> None:
        self._endpoints = sorted(endpoints, key=key)
        self._table: list[int] = []
        n, m = len(self._endpoints), table_size
        if n == 0:
            return
        offsets, skips = [], []
        for e in self._endpoints:
            digest = hashlib.blake2b(key(e).encode(), digest_size=16).digest()
            offsets.append(int.from_bytes(digest[:8], "big") % m)
            skips.append(int.from_bytes(digest[8:], "big") % (m - 1) + 1 if m > 1 else 1)
        table, nxt, filled = [-1] * m, [0] * n, 0
        while filled < m:
            for i in range(n):
                slot = (offsets[i] + nxt[i] * skips[i]) % m
                while table[slot] >= 0:
                    nxt[i] += 1
                    slot = (offsets[i] + nxt[i] * skips[i]) % m
                table[slot] = i
                nxt[i] += 1
                filled += 1
                if filled == m:
                    break
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def choose(self, value: int) -> T | None:
        if not self._table:
            return None
        return self._endpoints[self._table[value % len(self._table)]]


def _cookie(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for k, v in headers:
        if k.lower() != "cookie":
            continue
        for part in v.split(";"):
            cname, eq, value = part.strip().partition("=")
            if eq and cname == name:
                return value
    return None


def consistent_hash_key(settings: ConsistentHash, request: RequestAttributes, source_ip: str | None = None
                        ) -> str | None:
    """What a request is hashed on, or None when it carries none (Envoy then picks at
    random; with `httpCookie` and a `ttl` Envoy would also set the cookie on the answer,
    which is the data path's to do)."""
    if settings.key is HashKey.SOURCE_IP:
        return source_ip
    if settings.key is HashKey.HEADER:
        values = [v for k, v in request.headers if k.lower() == settings.name.lower()]
        return ",".join(values) if values else None
    if settings.key is HashKey.COOKIE:
        return _cookie(request.headers, settings.name)
    query = request.path.partition("?")[2].partition("#")[0]
    for part in query.split("&"):
        k, eq, v = part.partition("=")
        if k == settings.name:
            return v
    return None
