"""Any sequence of deltas leaves the store's incrementally kept indexes equal to the
ones built from scratch out of what is in force, and a change is rejected exactly when
it conflicts with what is in force (hypothesis)."""
from __future__ import annotations

import ipaddress

from hypothesis import given, settings, strategies as st

from meshcore.state import Kind, MeshStore, Remove, Service, Upsert, Workload

UIDS = [f"w{i}" for i in range(6)]
SERVICE_KEYS = [f"shop/s{i}.shop" for i in range(3)] + ["bank/s0.shop"]
ADDRESSES = [ipaddress.ip_address(f"10.0.0.{i}") for i in range(1, 6)]
VIPS = [("", ipaddress.ip_address(f"10.96.0.{i}")) for i in range(1, 4)]

workloads = st.builds(
    lambda uid, ips, services, node, sa: Workload(uid=uid, name=uid, namespace="shop", ips=tuple(ips),
                                                  service_account=sa, node=node,
                                                  services=tuple((k, ((80, 8080),)) for k in services)),
    st.sampled_from(UIDS), st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=2, unique=True),
    st.lists(st.sampled_from(SERVICE_KEYS), max_size=2, unique=True), st.sampled_from(["n1", "n2"]),
    st.sampled_from(["a", "b"]))
services = st.builds(
    lambda key, vips: Service(name=key.split("/")[1].split(".")[0], namespace=key.split("/")[0],
                              hostname=key.split("/")[1], vips=tuple(vips), ports=((80, 8080),)),
    st.sampled_from(SERVICE_KEYS), st.lists(st.sampled_from(VIPS), min_size=1, max_size=2, unique=True))
changes = st.one_of(
    workloads.map(Upsert), services.map(Upsert),
    st.sampled_from(UIDS).map(lambda k: Remove(Kind.WORKLOAD, k)),
    st.sampled_from(SERVICE_KEYS).map(lambda k: Remove(Kind.SERVICE, k)))


def expected_rejection(view, change) -> bool:
    if isinstance(change, Remove):
        return False
    r = change.resource
    if isinstance(r, Workload):
        return any((h := view.by_address.get((r.network, ip))) is not None and h.uid != r.uid for ip in r.ips)
    return any((h := view.by_vip.get(v)) is not None and h.key != r.key for v in r.vips)


def check_indexes(view) -> None:
    ws, ss = list(view.by_uid.values()), list(view.by_service_key.values())
    assert view.by_address == {(w.network, ip): w for w in ws for ip in w.ips}
    assert view.by_vip == {v: s for s in ss for v in s.vips}
    hostnames: dict = {}
    for s in ss:
        hostnames.setdefault(s.hostname, {})[s.namespace] = s
    assert view.by_hostname == hostnames
    by_identity: dict = {}
    by_node: dict = {}
    for w in ws:
        by_identity.setdefault(w.identity, set()).add(w.uid)
        by_node.setdefault(w.node, set()).add(w.uid)
    assert view.by_identity == {k: frozenset(v) for k, v in by_identity.items()}
    assert view.by_node == {k: frozenset(v) for k, v in by_node.items()}
    members: dict = {}
    for w in ws:
        for key, _ in w.services:
            members.setdefault(key, set()).add(w.uid)
    for index, known in ((view.endpoints, True), (view.staged, False)):
        assert {k: sorted(w.uid for w in v) for k, v in index.items()} == {
            k: sorted(v) for k, v in members.items() if (k in view.by_service_key) == known}
        for key, endpoint_list in index.items():
            # the workloads listed are the ones in force, each once
            assert all(view.by_uid[w.uid] is w for w in endpoint_list)
            assert len({w.uid for w in endpoint_list}) == len(endpoint_list)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(changes, min_size=1, max_size=3), min_size=1, max_size=25))
def test_deltas_keep_the_indexes_of_a_fresh_build(batches):
    store = MeshStore()
    for batch in batches:
        before = store.view
        kept = dict(before.by_uid), dict(before.by_address), {k: tuple(v) for k, v in before.endpoints.items()}
        applied = store.apply("s", batch)
        if len(batch) == 1:
            assert bool(applied.rejected) == expected_rejection(before, batch[0])
        check_indexes(store.view)
        check_indexes(before)                     # the previous view is as it was
        assert kept == (before.by_uid, before.by_address, before.endpoints)
