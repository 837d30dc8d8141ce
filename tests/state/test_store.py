"""The mesh store as a table of deltas: what each change leaves in the view, what it
rejects and why, and what subscribers hear."""
from __future__ import annotations

import asyncio
import ipaddress
import textwrap
from dataclasses import replace as replace_fields

import pytest

from meshcore.errors import ConfigError, UsageError
from meshcore.policy.istio import load_authorization_policies
from meshcore.state import Kind, MeshStore, MtlsMode, PeerAuthentication, Remove, Service, Upsert, Workload
from meshcore.state import store as store_module

WEB = "shop/web.shop.svc.cluster.local"


def wl(uid: str, ip: str, *, ns="shop", sa="default", services=(), node="n1", labels=()) -> Workload:
    return Workload(uid=uid, name=uid, namespace=ns, ips=(ipaddress.ip_address(ip),), service_account=sa,
                    node=node, services=tuple((key, ((80, 8080),)) for key in services), labels=tuple(labels))


def svc(hostname="web.shop.svc.cluster.local", vip="10.96.0.1", ns="shop") -> Service:
    return Service(name=hostname.split(".")[0], namespace=ns, hostname=hostname,
                   vips=(("", ipaddress.ip_address(vip)),), ports=((80, 8080),))


def policy(name="allow-client", ns="shop", principal="cluster.local/ns/shop/sa/client", **extra):
    text = textwrap.dedent(f"""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: {name}, namespace: {ns}}}
        spec:
          rules: [{{from: [{{source: {{principals: ["{principal}"]}}}}]}}]
        """)
    return load_authorization_policies(text, "test.yaml")[0]


def ip(text):
    return ipaddress.ip_address(text)


def test_upserts_index_every_way_and_the_old_view_is_untouched():
    store = MeshStore()
    before = store.view
    applied = store.apply("a", [Upsert(svc()), Upsert(wl("w1", "10.0.0.1", services=[WEB], sa="web"))])
    view = store.view
    assert applied.changed == {Kind.SERVICE: frozenset({WEB}), Kind.WORKLOAD: frozenset({"w1"})}
    assert not applied.rejected and applied.generation == 1 == view.generation
    w = view.by_uid["w1"]
    assert view.workload_at("", ip("10.0.0.1")) is w
    assert view.service_at("", ip("10.96.0.1")).key == WEB
    assert view.service_by_hostname("web.shop.svc.cluster.local").key == WEB
    assert view.endpoints[WEB] == (w,)
    assert view.workloads_of(w.identity) == (w,)
    assert view.local_workloads("n1") == [w]
    assert before.by_uid == {} and before.by_address == {} and before.endpoints == {}


def test_an_endpoint_waits_in_staging_for_its_service_and_returns_there_when_it_goes():
    store = MeshStore()
    store.apply("a", [Upsert(wl("w1", "10.0.0.1", services=[WEB]))])
    assert store.view.endpoints == {} and [w.uid for w in store.view.staged[WEB]] == ["w1"]
    store.apply("a", [Upsert(svc())])
    assert store.view.staged == {} and [w.uid for w in store.view.endpoints[WEB]] == ["w1"]
    store.apply("a", [Remove(Kind.SERVICE, WEB)])
    assert store.view.endpoints == {} and [w.uid for w in store.view.staged[WEB]] == ["w1"]
    store.apply("a", [Remove(Kind.WORKLOAD, "w1")])
    assert store.view.staged == {}


def test_a_changed_workload_keeps_its_turn_and_moves_between_services():
    other = "shop/api.shop.svc.cluster.local"
    store = MeshStore()
    store.apply("a", [Upsert(svc()), Upsert(svc("api.shop.svc.cluster.local", "10.96.0.2")),
                      *(Upsert(wl(f"w{i}", f"10.0.0.{i}", services=[WEB])) for i in range(1, 4))])
    store.apply("a", [Upsert(wl("w2", "10.0.1.2", services=[WEB, other]))])
    view = store.view
    assert [w.uid for w in view.endpoints[WEB]] == ["w1", "w2", "w3"]
    assert view.endpoints[WEB][1].ips == (ip("10.0.1.2"),)
    assert view.workload_at("", ip("10.0.0.2")) is None and view.workload_at("", ip("10.0.1.2")).uid == "w2"
    assert [w.uid for w in view.endpoints[other]] == ["w2"]
    store.apply("a", [Upsert(wl("w2", "10.0.1.2", services=[other]))])
    assert [w.uid for w in store.view.endpoints[WEB]] == ["w1", "w3"]


@pytest.mark.parametrize("changes, rejected", [
    ([Upsert(wl("w2", "10.0.0.1"))], "workload w2: address /10.0.0.1 is already workload w1's"),
    ([Upsert(svc("other.shop.svc.cluster.local", "10.96.0.1"))],
     f"service shop/other.shop.svc.cluster.local: VIP /10.96.0.1 is already service {WEB}'s"),
])
def test_a_conflicting_resource_is_rejected_and_the_rest_apply(changes, rejected):
    store = MeshStore()
    store.apply("a", [Upsert(svc()), Upsert(wl("w1", "10.0.0.1"))])
    applied = store.apply("a", [*changes, Upsert(wl("w9", "10.0.0.9"))])
    assert [str(r) for r in applied.rejected] == [rejected]
    assert "w9" in store.view.by_uid and applied.keys(Kind.WORKLOAD) == {"w9"}


def test_a_workload_without_a_valid_identity_is_rejected_not_raised():
    store = MeshStore()
    applied = store.apply("xds", [Upsert(wl("w1", "10.0.0.1", sa="fro=tend")), Upsert(wl("w2", "10.0.0.2"))])
    assert [str(r) for r in applied.rejected] == ["workload w1: invalid service account 'fro=tend' in SPIFFE id"]
    assert list(store.view.by_uid) == ["w2"]


def test_a_source_cannot_change_or_remove_what_another_owns():
    store = MeshStore()
    store.apply("files", [Upsert(wl("w1", "10.0.0.1"))])
    applied = store.apply("xds", [Upsert(wl("w1", "10.0.0.2")), Remove(Kind.WORKLOAD, "w1")])
    assert [str(r) for r in applied.rejected] == ["workload w1: owned by source files"] * 2
    assert store.view.by_uid["w1"].ips == (ip("10.0.0.1"),)
    store.replace("files", [])
    applied = store.apply("xds", [Upsert(wl("w1", "10.0.0.2"))])
    assert not applied.rejected and store.view.by_uid["w1"].ips == (ip("10.0.0.2"),)


def test_replace_diffs_against_what_the_source_sent_before():
    store = MeshStore()
    store.replace("files", [svc(), wl("w1", "10.0.0.1"), wl("w2", "10.0.0.2"), policy()])
    applied = store.replace("files", [svc(), wl("w1", "10.0.0.1"), wl("w3", "10.0.0.3"), policy()])
    assert applied.changed == {Kind.WORKLOAD: frozenset({"w2", "w3"})}
    assert sorted(store.view.by_uid) == ["w1", "w3"]
    assert store.replace("files", [svc(), wl("w1", "10.0.0.1"), wl("w3", "10.0.0.3"), policy()]).changed == {}


def test_atomic_replace_refuses_the_whole_set_and_keeps_the_view_in_force():
    store = MeshStore()
    store.replace("files", [wl("w1", "10.0.0.1")], atomic=True)
    view = store.view
    with pytest.raises(ConfigError, match="workload w3: address /10.0.0.2 is already workload w2's"):
        store.replace("files", [wl("w1", "10.0.0.1"), wl("w2", "10.0.0.2"), wl("w3", "10.0.0.2")], atomic=True)
    assert store.view is view and list(store.view.by_uid) == ["w1"]


def test_policies_compile_per_change_and_unrelated_tables_stay_shared():
    store = MeshStore()
    client = "cluster.local/ns/shop/sa/client"
    store.apply("a", [Upsert(wl("w1", "10.0.0.1")), Upsert(wl("b1", "10.0.1.1", ns="bank")),
                      Upsert(policy()), Upsert(policy("bank-only", ns="bank", principal="cluster.local/ns/bank/sa/x"))])
    view = store.view
    shop, bank = view.by_uid["w1"], view.by_uid["b1"]
    shop_table, bank_table = view.policy_set(shop), view.policy_set(bank)
    assert shop_table.evaluate(client, "10.0.0.9", "10.0.0.1", 8080)
    assert not shop_table.evaluate("cluster.local/ns/shop/sa/other", "10.0.0.9", "10.0.0.1", 8080)
    store.apply("a", [Upsert(policy(principal="cluster.local/ns/shop/sa/other"))])
    new = store.view
    assert new.policy_set(bank) is bank_table                    # another namespace: untouched
    assert new.policy_set(shop) is not shop_table
    assert not new.policy_set(shop).evaluate(client, "10.0.0.9", "10.0.0.1", 8080)
    assert view.policy_set(shop).evaluate(client, "10.0.0.9", "10.0.0.1", 8080)     # the old view decides as before
    store.apply("a", [Remove(Kind.AUTHORIZATION_POLICY, "shop/allow-client")])
    assert store.view.policy_set(shop).evaluate(client, "10.0.0.9", "10.0.0.1", 8080)   # no ALLOW left
    assert "shop/allow-client" not in store.view.policy_by_key


def test_a_mesh_wide_policy_change_drops_every_table():
    store = MeshStore()
    store.apply("a", [Upsert(wl("w1", "10.0.0.1")), Upsert(policy())])
    table = store.view.policy_set(store.view.by_uid["w1"])
    store.apply("a", [Upsert(policy("mesh", ns="istio-system"))])
    assert store.view.policy_set(store.view.by_uid["w1"]) is not table


def test_peer_authentication_by_namespace_and_mesh_wide():
    store = MeshStore()
    w = wl("w1", "10.0.0.1", labels=[("app", "web")])
    store.apply("a", [Upsert(w), Upsert(PeerAuthentication("mesh", "istio-system", MtlsMode.STRICT))])
    assert store.view.mtls_mode(w, 8080) is MtlsMode.STRICT
    store.apply("a", [Upsert(PeerAuthentication("ns", "shop", MtlsMode.PERMISSIVE))])
    assert store.view.mtls_mode(w, 8080) is MtlsMode.PERMISSIVE
    store.apply("a", [Upsert(PeerAuthentication("web", "shop", MtlsMode.UNSET, (("app", "web"),),
                                                ((8080, MtlsMode.DISABLE),)))])
    assert store.view.mtls_mode(w, 8080) is MtlsMode.DISABLE and store.view.mtls_mode(w, 9090) is MtlsMode.PERMISSIVE
    store.apply("a", [Remove(Kind.PEER_AUTHENTICATION, "shop/ns"), Remove(Kind.PEER_AUTHENTICATION, "shop/web")])
    assert store.view.mtls_mode(w, 8080) is MtlsMode.STRICT


def test_subscribers_hear_the_kinds_they_asked_for_once_in_force():
    store = MeshStore()
    heard = []
    store.subscribe(lambda c: heard.append(("workloads", dict(c.changed), c.new is store.view)), [Kind.WORKLOAD])
    store.subscribe(lambda c: heard.append(("all", sorted(c.changed), c.old.generation)))
    store.apply("a", [Upsert(svc())])
    store.apply("a", [Upsert(wl("w1", "10.0.0.1"))])
    store.apply("a", [Upsert(wl("w1", "10.0.0.1"))])           # no change: nobody hears of it
    assert heard == [("all", [Kind.SERVICE], 0),
                     ("workloads", {Kind.WORKLOAD: frozenset({"w1"})}, True), ("all", [Kind.WORKLOAD], 1)]


def test_a_subscriber_that_writes_while_hearing_is_refused():
    store = MeshStore()
    errors = []

    def writer(change):
        try:
            store.apply("b", [Upsert(wl("w2", "10.0.0.2"))])
        except UsageError as exc:
            errors.append(str(exc))
    store.subscribe(writer)
    store.apply("a", [Upsert(wl("w1", "10.0.0.1"))])
    assert errors == ["a subscriber changed the mesh store while hearing of a change"]


def test_async_writers_apply_one_at_a_time_in_order_off_the_loop(monkeypatch):
    monkeypatch.setattr(store_module, "THREAD_THRESHOLD", 2)    # every change set here goes to a thread
    store = MeshStore()
    order = []

    async def slow_subscriber(change):
        order.append(("start", change.new.generation))
        await asyncio.sleep(0.01)
        order.append(("end", change.new.generation))

    async def scenario():
        store.subscribe(slow_subscriber)
        first = [wl(f"a{i}", f"10.0.0.{i}") for i in range(1, 5)]
        second = [wl(f"b{i}", f"10.0.1.{i}") for i in range(1, 5)]
        results = await asyncio.gather(store.replace_async("a", first), store.replace_async("b", second))
        return [r.generation for r in results]

    assert asyncio.run(scenario()) == [1, 2]
    assert order == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert len(store.view.by_uid) == 8


def test_a_view_is_a_snapshot_a_connection_can_keep():
    store = MeshStore()
    store.apply("a", [Upsert(wl("w1", "10.0.0.1"))])
    kept = store.view
    for i in range(2, 50):
        store.apply("a", [Upsert(wl(f"w{i}", f"10.0.0.{i}"))])
    store.apply("a", [Remove(Kind.WORKLOAD, "w1")])
    assert list(kept.by_uid) == ["w1"] and kept.workload_at("", ip("10.0.0.1")).uid == "w1"
    assert len(store.view.by_uid) == 48 and store.view.generation == 50


def test_a_synchronous_change_during_an_asynchronous_one_is_refused_not_lost():
    import threading
    store = MeshStore()
    reading, release = threading.Event(), threading.Event()

    def slow_read():                                             # on the store's worker thread
        reading.set()
        release.wait(5)
        return [wl("w1", "10.0.0.1")], ""

    async def scenario():
        writing = asyncio.ensure_future(store.replace_async("a", read=slow_read))
        while not reading.is_set():
            await asyncio.sleep(0.001)                           # it holds the writer now
        with pytest.raises(UsageError, match="use apply_async/replace_async"):
            store.apply("b", [Upsert(wl("w2", "10.0.0.2"))])
        release.set()
        await writing
        store.apply("b", [Upsert(wl("w2", "10.0.0.2"))])          # and once it is done, it applies
    asyncio.run(scenario())
    assert sorted(store.view.by_uid) == ["w1", "w2"]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_addresses_moving_along_apply_in_any_order(order):
    store = MeshStore()
    store.replace("files", [wl("a", "10.0.1.1"), wl("b", "10.0.1.2")], atomic=True)
    moved = [wl("a", "10.0.1.2"), wl("b", "10.0.1.3")]         # a takes the address b leaves
    store.replace("files", [moved[i] for i in order], atomic=True)
    assert store.view.workload_at("", ip("10.0.1.2")).uid == "a"
    assert store.view.workload_at("", ip("10.0.1.3")).uid == "b" and store.view.workload_at("", ip("10.0.1.1")) is None


def test_a_service_key_listed_twice_is_one_endpoint_that_follows_its_workload():
    store = MeshStore()
    twice = Workload(uid="w", name="w", namespace="shop", ips=(ip("10.0.0.1"),), node="n1",
                     services=((WEB, ((80, 8080),)), (WEB, ((81, 8081),))))
    store.apply("a", [Upsert(svc()), Upsert(twice)])
    store.apply("a", [Upsert(replace_fields(twice, ips=(ip("10.0.0.2"),)))])
    assert [w.ips for w in store.view.endpoints[WEB]] == [(ip("10.0.0.2"),)]


def test_a_remove_names_its_kind_as_text_or_member():
    store = MeshStore()
    store.apply("a", [Upsert(wl("w1", "10.0.0.1"))])
    store.apply("a", [Remove("workload", "w1")])
    assert store.view.by_uid == {}


def test_a_write_runs_to_its_end_when_its_caller_is_cancelled(monkeypatch):
    monkeypatch.setattr(store_module, "THREAD_THRESHOLD", 1)     # the write waits for a thread
    store = MeshStore()
    heard = []

    async def subscriber(change):
        await asyncio.sleep(0.01)
        heard.append(change.new.generation)

    async def scenario():
        store.subscribe(subscriber)
        caller = asyncio.ensure_future(store.apply_async("a", [Upsert(wl("w1", "10.0.0.1"))]))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await store.settled()
    asyncio.run(scenario())
    assert list(store.view.by_uid) == ["w1"] and heard == [1]


def test_asynchronous_subscribers_of_synchronous_writes_hear_in_order():
    store = MeshStore()
    heard = []

    async def subscriber(change):
        await asyncio.sleep(0.01 if change.new.generation == 1 else 0)
        heard.append(change.new.generation)

    async def scenario():
        store.subscribe(subscriber)
        store.apply("a", [Upsert(wl("w1", "10.0.0.1"))])
        store.apply("a", [Upsert(wl("w2", "10.0.0.2"))])
        await store.apply_async("a", [Upsert(wl("w3", "10.0.0.3"))])
        await store.settled()
    asyncio.run(scenario())
    assert heard == [1, 2, 3]
