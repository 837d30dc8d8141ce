"""The mesh store: every resource in force, changed by deltas, read through views.

    store = MeshStore()
    applied = store.apply("xds", [Upsert(workload), Remove(Kind.SERVICE, "shop/web.shop.svc")])
    applied.rejected        # the changes that were not applied, each with its reason
    store.replace("files", resources, atomic=True)   # diff against what "files" sent before
    view = store.view       # immutable; the next change makes a new one

Any number of sources write to one store; each owns the resources it sent, and a
source cannot replace or remove another's. A change set applies resource by resource:
a bad resource is rejected with its reason while the rest apply (what an xDS NACK
needs); `atomic=True` is all or nothing (a configuration file is refused whole).

What a change touches is all it costs: indexes are updated per resource (a copy of
each index it changes, not a rebuild), the policy engine compiles only the policies
that changed and drops only the per-workload tables they touch, and a workload naming
a service that is not known yet waits in `staged` until the service arrives.

One writer at a time: `apply_async`/`replace_async` take the store's writer lock, so
two reloads never interleave, and build a large change's view on a worker thread so
the event loop keeps moving tunnels meanwhile. Subscribers hear of each change after
it is in force (which keys of which kinds changed), in order.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshcore.aio.memory import gc_paused
from meshcore.errors import ConfigError, IdentityError, UsageError
from meshcore.policy.istio import ROOT_NAMESPACE
from meshcore.policy.layers import l4_reductions
from meshcore.state.changes import ISTIO_TRAFFIC_KINDS, ROUTING_KINDS, Applied, Kind, Rejection, Remove, Upsert, kind_of
from meshcore.state.model import Service, Workload
from meshcore.state.view import MeshView
from meshcore.traffic.istio_index import update_istio
from meshcore.traffic.model import RouteKind
from meshcore.traffic.resolve import EMPTY_INDEX, update_routes

log = logging.getLogger("meshcore.state")

# the view's index of each kind kept by namespace/name alone
_KEYED = {Kind.PEER_AUTHENTICATION: "peer_auth_by_key", Kind.HTTP_ROUTE: "http_route_by_key",
          Kind.GRPC_ROUTE: "grpc_route_by_key", Kind.REFERENCE_GRANT: "grant_by_key",
          Kind.VIRTUAL_SERVICE: "virtual_service_by_key", Kind.DESTINATION_RULE: "destination_rule_by_key",
          Kind.RATE_LIMIT: "rate_limit_by_key"}

# a change set at least this large is built on a worker thread by apply_async/replace_async
THREAD_THRESHOLD = 256


@dataclass(frozen=True)
class StateChange:
    """What subscribers receive: the view before and after, and the keys that changed."""
    old: MeshView
    new: MeshView
    changed: dict                      # Kind -> frozenset of keys
    source: str

    def keys(self, kind: Kind) -> frozenset:
        return self.changed.get(kind, frozenset())


class _Draft:
    """The next view, built from the current one by copy-on-write: an index is copied
    the first time this draft changes it, so the view in force is never touched."""

    def __init__(self, base: MeshView):
        self.base = base
        self.view = base.copy()
        self._own: set[str] = set()
        self._members: dict[str, list] = {}         # service key -> endpoint list being edited
        self._sets: dict[tuple[str, object], set] = {}
        self.changed: dict[Kind, set] = {}

    def index(self, name: str) -> dict:
        if name not in self._own:
            setattr(self.view, name, dict(getattr(self.view, name)))
            self._own.add(name)
        return getattr(self.view, name)

    def _set(self, index: str, key) -> set:
        s = self._sets.get((index, key))
        if s is None:
            s = self._sets[(index, key)] = set(getattr(self.view, index).get(key, ()))
        return s

    def _endpoint_list(self, service_key: str) -> list:
        members = self._members.get(service_key)
        if members is None:
            members = self._members[service_key] = list(
                self.view.endpoints.get(service_key) or self.view.staged.get(service_key) or ())
        return members

    def mark(self, kind: Kind, key: str) -> None:
        self.changed.setdefault(kind, set()).add(key)

    def put(self, kind: Kind, resource) -> tuple[str | None, str | None]:
        """Put a resource (not a policy) in the draft: (None, None), or
        (the key of what blocks it, if another resource of its kind, why) and nothing changed."""
        if kind is Kind.WORKLOAD:
            blocker, why = self.workload_conflict(resource)
            if why is None:
                self.put_workload(resource)
            return blocker, why
        if kind is Kind.SERVICE:
            blocker, why = self.service_conflict(resource)
            if why is None:
                self.put_service(resource)
            return blocker, why
        self.put_keyed(kind, resource)
        return None, None

    # -- workloads ----------------------------------------------------------------------
    def workload_conflict(self, w: Workload) -> tuple[str | None, str | None]:
        try:
            w.identity
        except IdentityError as exc:             # a source that does not validate as strictly
            return None, str(exc)
        for ip in w.ips:
            holder = self.view.by_address.get((w.network, ip))
            if holder is not None and holder.uid != w.uid:
                return holder.uid, f"address {w.network}/{ip} is already workload {holder.uid}'s"
        return None, None

    def put_workload(self, w: Workload) -> None:
        old = self.view.by_uid.get(w.uid)
        if old == w:
            return
        self.index("by_uid")[w.uid] = w
        addresses = self.index("by_address")
        if old is not None:
            self._unindex_addresses(old)
            self._set("by_identity", old.identity).discard(old.uid)
            self._set("by_node", old.node).discard(old.uid)
        for ip in w.ips:
            addresses[(w.network, ip)] = w
        self._set("by_identity", w.identity).add(w.uid)
        self._set("by_node", w.node).add(w.uid)
        keys = dict.fromkeys(key for key, _ in w.services)          # a key listed twice is one membership
        old_keys = dict.fromkeys(key for key, _ in old.services) if old is not None else {}
        for key in keys:
            members = self._endpoint_list(key)
            turn = next((i for i, m in enumerate(members) if m.uid == w.uid), None)
            if turn is None:
                members.append(w)
            else:
                members[turn] = w                                   # keeps its turn
        for key in old_keys:
            if key not in keys:
                self._endpoint_list(key)[:] = [m for m in self._endpoint_list(key) if m.uid != w.uid]
        self.mark(Kind.WORKLOAD, w.uid)

    def _unindex_addresses(self, old: Workload) -> None:
        addresses = self.index("by_address")
        for ip in old.ips:
            holder = addresses.get((old.network, ip))
            if holder is not None and holder.uid == old.uid:
                del addresses[(old.network, ip)]

    def remove_workload(self, uid: str) -> None:
        old = self.view.by_uid.get(uid)
        if old is None:
            return
        del self.index("by_uid")[uid]
        self._unindex_addresses(old)
        self._set("by_identity", old.identity).discard(uid)
        self._set("by_node", old.node).discard(uid)
        for key, _ in old.services:
            self._endpoint_list(key)[:] = [m for m in self._endpoint_list(key) if m.uid != uid]
        self.mark(Kind.WORKLOAD, uid)

    # -- services -----------------------------------------------------------------------
    def service_conflict(self, s: Service) -> tuple[str | None, str | None]:
        for vip in s.vips:
            holder = self.view.by_vip.get(vip)
            if holder is not None and holder.key != s.key:
                return holder.key, f"VIP {vip[0]}/{vip[1]} is already service {holder.key}'s"
        return None, None

    def put_service(self, s: Service) -> None:
        old = self.view.by_service_key.get(s.key)
        if old == s:
            return
        if old is not None:
            self._unindex_service(old)
        self.index("by_service_key")[s.key] = s
        vips = self.index("by_vip")
        for vip in s.vips:
            vips[vip] = s
        hostnames = self.index("by_hostname")
        hostnames[s.hostname] = {**hostnames.get(s.hostname, {}), s.namespace: s}
        names = self.index("by_service_name")
        names[(s.namespace, s.name)] = {**names.get((s.namespace, s.name), {}), s.key: s}
        self._endpoint_list(s.key)              # its staged endpoints join it in finish()
        self.mark(Kind.SERVICE, s.key)

    def remove_service(self, key: str) -> None:
        old = self.view.by_service_key.get(key)
        if old is None:
            return
        self._unindex_service(old)
        del self.index("by_service_key")[key]
        self._endpoint_list(key)                # its endpoints go back to staging in finish()
        self.mark(Kind.SERVICE, key)

    def _unindex_service(self, old: Service) -> None:
        vips = self.index("by_vip")
        for vip in old.vips:
            if vips.get(vip) is old:
                del vips[vip]
        hostnames = self.index("by_hostname")
        same = {ns: s for ns, s in hostnames.get(old.hostname, {}).items() if ns != old.namespace}
        if same:
            hostnames[old.hostname] = same
        else:
            hostnames.pop(old.hostname, None)
        names = self.index("by_service_name")
        others = {k: s for k, s in names.get((old.namespace, old.name), {}).items() if k != old.key}
        if others:
            names[(old.namespace, old.name)] = others
        else:
            names.pop((old.namespace, old.name), None)

    # -- PeerAuthentication, routes, grants, VirtualServices, DestinationRules, rate limits:
    # one index each
    def put_keyed(self, kind: Kind, resource) -> None:
        name = _KEYED[kind]
        if getattr(self.view, name).get(resource.key) == resource:
            return
        self.index(name)[resource.key] = resource
        self.mark(kind, resource.key)

    def remove_keyed(self, kind: Kind, key: str) -> None:
        name = _KEYED[kind]
        if key in getattr(self.view, name):
            del self.index(name)[key]
            self.mark(kind, key)

    # -- the view -----------------------------------------------------------------------
    def _routing(self):
        """The route index after this change: the routes it changed, and those naming a
        service it changed, resolved again (a grant resolves every route again), their
        tables sorted here once, never per request."""
        v, changed = self.view, self.changed
        routes = None if Kind.REFERENCE_GRANT in changed else (
            {(RouteKind.HTTP, k) for k in changed.get(Kind.HTTP_ROUTE, ())}
            | {(RouteKind.GRPC, k) for k in changed.get(Kind.GRPC_ROUTE, ())})
        names = set()
        for key in changed.get(Kind.SERVICE, ()):
            for s in (self.base.by_service_key.get(key), v.by_service_key.get(key)):
                if s is not None:
                    names.add((s.namespace, s.name))
        return update_routes(v.routing, v.http_route_by_key, v.grpc_route_by_key, v.grant_by_key.values(),
                             v.service_named, routes, names)

    def finish(self, generation: int, version: str) -> MeshView:
        v = self.view
        for (name, key), members in self._sets.items():
            index = self.index(name)
            if members:
                index[key] = frozenset(members)
            else:
                index.pop(key, None)
        if self._members:
            endpoints, staged = self.index("endpoints"), self.index("staged")
            for key, members in self._members.items():
                endpoints.pop(key, None)
                staged.pop(key, None)
                if members:
                    (endpoints if key in v.by_service_key else staged)[key] = tuple(members)
        if Kind.PEER_AUTHENTICATION in self.changed:
            namespaces = {key.partition("/")[0] for key in self.changed[Kind.PEER_AUTHENTICATION]}
            by_namespace = self.index("peer_auths_by_namespace")
            for ns in namespaces:
                by_namespace.pop(ns, None)
            for pa in v.peer_auth_by_key.values():
                if pa.namespace in namespaces:
                    by_namespace[pa.namespace] = by_namespace.get(pa.namespace, ()) + (pa,)
        if not ROUTING_KINDS.isdisjoint(self.changed) and (
                v.http_route_by_key or v.grpc_route_by_key or v.routing is not EMPTY_INDEX):
            v.routing = self._routing()
        if not ISTIO_TRAFFIC_KINDS.isdisjoint(self.changed):
            v.istio = update_istio(v.istio, v.virtual_service_by_key, v.destination_rule_by_key,
                                   self.changed.get(Kind.VIRTUAL_SERVICE, ()),
                                   self.changed.get(Kind.DESTINATION_RULE, ()))
        v.generation = generation
        if version:
            v.version = version
        return v


def _is_service_change(change) -> bool:
    try:
        return change.kind is Kind.SERVICE
    except TypeError:                  # not a resource the store holds: refused when it applies
        return False


class MeshStore:
    def __init__(self, *, root_namespace: str = ROOT_NAMESPACE, layer: str = "l4"):
        self._view = MeshView(root_namespace=root_namespace, layer=layer)
        self._owner: dict[tuple[Kind, str], str] = {}          # (kind, key) -> source
        self._sent: dict[str, dict[tuple[Kind, str], object]] = {}   # source -> what it put in force
        self._subscribers: list[tuple[frozenset | None, Callable]] = []
        self._writer: asyncio.Lock | None = None
        self._notifying = False
        self._tasks: set[asyncio.Task] = set()          # writes under way, notifications to deliver
        self._told: asyncio.Task | None = None          # the last notification of a synchronous write

    @property
    def view(self) -> MeshView:
        return self._view

    def subscribe(self, callback: Callable[[StateChange], object],
                  kinds: Iterable[Kind] | None = None) -> Callable[[], None]:
        """callback(StateChange) after each change that touches one of `kinds` (every
        kind when None). A coroutine function is awaited when the change came through
        apply_async/replace_async (in order, before the next change applies), so it must
        not await a change of its own (it would wait for itself). Returns the call that
        ends the subscription (a component makes it when it closes)."""
        entry = (frozenset(kinds) if kinds is not None else None, callback)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)
        return unsubscribe

    # -- synchronous writes (start-up, tests, tools) ------------------------------------
    def apply(self, source: str, changes: Iterable, *, version: str = "") -> Applied:
        """Apply upserts and removes from `source`, resource by resource."""
        self._refuse_while_writing()
        pending = self._prepare(source, list(changes), version)
        return self._commit(source, pending)

    def replace(self, source: str, resources: Iterable, *, atomic: bool = False, version: str = "") -> Applied:
        """`source`'s whole set: what it no longer lists is removed, what is new or
        different is upserted. atomic: raise ConfigError, changing nothing, if any
        resource would be rejected."""
        self._refuse_while_writing()
        pending = self._prepare(source, self._diff(source, resources), version, atomic=atomic)
        return self._commit(source, pending)

    def _refuse_while_writing(self) -> None:
        # an asynchronous writer builds on the view in force: a change slipped in
        # meanwhile would be lost when it installs its own
        if self._writer is not None and self._writer.locked():
            raise UsageError("a synchronous change while an asynchronous one is being applied; "
                             "use apply_async/replace_async")

    # -- the writer queue -------------------------------------------------------------------
    async def apply_async(self, source: str, changes: Iterable, *, version: str = "") -> Applied:
        changes = list(changes)
        return await self._write(source, self._weight(changes), lambda: self._prepare(source, changes, version))

    def _weight(self, changes: list) -> int:
        """What building a change costs, in resources: a service's change also resolves
        the routes again (every route naming it), so a view holding routes counts them."""
        routes = len(self._view.routing.routes)
        if routes and any(_is_service_change(c) for c in changes):
            return len(changes) + routes
        return len(changes)

    async def replace_async(self, source: str, resources: Iterable | None = None, *, read: Callable | None = None,
                            atomic: bool = False, version: str = "") -> Applied:
        """replace() through the writer queue. `read()`, instead of `resources`, returns
        (resources, version) and runs on the worker thread with the diff, so that a
        large parsed set is made and dropped there, not on the event loop."""
        resources = list(resources) if read is None else None

        def prepare():
            with gc_paused():
                wanted, v = read() if read is not None else (resources, version)
                changes = self._diff(source, wanted)
                # The parsed set goes while collection is paused (left for later, it would
                # all sit in the youngest generation, and the first collection after the
                # pause would scan it with the GIL held), and a resource at a time (one
                # free of the whole list holds the GIL too: ~14 ms for 30,000)
                if isinstance(wanted, list):
                    while wanted:
                        wanted.pop()
                del wanted
                return self._prepare(source, changes, v, atomic=atomic)
        return await self._write(source, THREAD_THRESHOLD if read is not None else len(resources), prepare)

    async def _write(self, source: str, size: int, prepare) -> Applied:
        """One change through the writer lock, in a task of the store's own: a caller
        cancelled meanwhile does not cancel it, because a view installed with some
        subscribers not yet told (listeners, revocation) would leave them out of step."""
        async def write():
            async with self._lock():
                pending = await self._prepare_off_loop(size, prepare)
                return await self._commit_async(source, pending)
        return await asyncio.shield(self._own(write()))

    def _own(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # its caller may have left: the outcome is then nobody's to raise
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def settled(self) -> None:
        """Until every change under way has applied and its subscribers have heard of it."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _lock(self) -> asyncio.Lock:
        if self._writer is None:
            self._writer = asyncio.Lock()
        return self._writer

    @staticmethod
    async def _prepare_off_loop(size: int, fn, *args):
        if size < THREAD_THRESHOLD:
            return fn(*args)
        # the view in force and the ownership maps only change in _commit, on the loop,
        # and the writer lock keeps every other writer out meanwhile
        return await asyncio.to_thread(fn, *args)

    # -- building a change ------------------------------------------------------------------
    def _diff(self, source: str, resources: Iterable) -> list:
        previous = self._sent.get(source, {})
        wanted: dict[tuple[Kind, str], object] = {}
        for r in resources:
            wanted[(kind_of(r), r.key)] = r
        changes: list = [Remove(kind, key) for (kind, key) in previous if (kind, key) not in wanted]
        changes += [Upsert(r) for ident, r in wanted.items() if previous.get(ident) != r]
        return changes

    def _prepare(self, source: str, changes: list, version: str, atomic: bool = False):
        with gc_paused():
            return self._prepare_draft(source, changes, version, atomic)

    def _prepare_draft(self, source: str, changes: list, version: str, atomic: bool):
        draft = _Draft(self._view)
        rejected: list[Rejection] = []
        owner = self._owner
        policies_up, policies_gone = [], []
        sent: dict[tuple[Kind, str], object] = {}       # (kind, key) -> resource, or None: removed
        # removes first (they free addresses and VIPs), then services (workloads naming
        # them find them in this same change), then the rest
        changes.sort(key=lambda c: (not isinstance(c, Remove), c.kind is not Kind.SERVICE))
        moving = {(c.kind, c.key) for c in changes}
        waiting = []                 # (change, why): blocked by a resource that also changes in this set
        for change in changes:
            kind, key = change.kind, change.key
            holder = owner.get((kind, key))
            if holder is not None and holder != source:
                rejected.append(Rejection(kind, key, f"owned by source {holder}"))
                continue
            if isinstance(change, Remove):
                if holder is None:
                    continue
                if kind is Kind.WORKLOAD:
                    draft.remove_workload(key)
                elif kind is Kind.SERVICE:
                    draft.remove_service(key)
                elif kind is Kind.AUTHORIZATION_POLICY:
                    policies_gone.append(key)
                else:
                    draft.remove_keyed(kind, key)
                sent[(kind, key)] = None
                continue
            r = change.resource
            if kind is Kind.AUTHORIZATION_POLICY:
                policies_up.append(r)
                continue
            blocker, why = draft.put(kind, r)
            if why is None:
                sent[(kind, key)] = r
            elif blocker is not None and (kind, blocker) in moving:
                waiting.append((change, why))    # its holder changes in this set too: try after it
            else:
                rejected.append(Rejection(kind, key, why))
        # an address or VIP taken by a resource that moves on later in the same set: tried
        # again while others make progress, so the order within a set does not matter
        progress = True
        while waiting and progress:
            progress, still = False, []
            for change, _ in waiting:
                blocker, why = draft.put(change.kind, change.resource)
                if why is None:
                    sent[(change.kind, change.key)] = change.resource
                    progress = True
                else:
                    still.append((change, why))
            waiting = still
        rejected += [Rejection(change.kind, change.key, why) for change, why in waiting]
        if policies_up or policies_gone:
            engine, refused = self._view.engine.changed(policies_up, policies_gone)
            by_key = draft.index("policy_by_key")
            for key in policies_gone:
                by_key.pop(key, None)
                draft.mark(Kind.AUTHORIZATION_POLICY, key)
                sent[(Kind.AUTHORIZATION_POLICY, key)] = None
            for p in policies_up:
                if p.key in refused:
                    rejected.append(Rejection(Kind.AUTHORIZATION_POLICY, p.key, refused[p.key]))
                elif by_key.get(p.key) != p:
                    by_key[p.key] = p
                    draft.mark(Kind.AUTHORIZATION_POLICY, p.key)
                    sent[(Kind.AUTHORIZATION_POLICY, p.key)] = p
            draft.view.engine = engine
        if atomic and rejected:
            raise ConfigError("; ".join(map(str, rejected)), source=source)
        view = draft.finish(self._view.generation + 1, version)
        changed = {k: frozenset(v) for k, v in draft.changed.items()}
        # what a node proxy does with rules it cannot see, once per new or changed policy;
        # worded here, on the worker thread for a large change (10,000 policies take tens
        # of milliseconds), and logged when the view is installed
        notes = []
        if view.engine.layer == "l4":
            for key in changed.get(Kind.AUTHORIZATION_POLICY, ()):
                policy = view.policy_by_key.get(key)
                if policy is not None and not policy.target_refs:     # a waypoint's: no node reduces it
                    notes += [(sentence, policy.source or source) for sentence in l4_reductions(policy)]
        return view, sent, rejected, changed, notes

    def _install(self, source: str, pending) -> tuple[MeshView, Applied]:
        view, sent, rejected, changed, notes = pending
        mine = self._sent.setdefault(source, {})
        for ident, r in sent.items():
            if r is None:
                mine.pop(ident, None)
                self._owner.pop(ident, None)
            else:
                mine[ident] = r
                self._owner[ident] = source
        if not mine:
            self._sent.pop(source, None)
        old, self._view = self._view, view
        for sentence, origin in notes:
            log.warning("%s (%s)", sentence, origin)
        return old, Applied(view.generation, changed, tuple(rejected))

    def _commit(self, source: str, pending) -> Applied:
        if self._notifying:
            raise UsageError("a subscriber changed the mesh store while hearing of a change")
        old, applied = self._install(source, pending)
        if applied.changed:
            self._notifying = True
            try:
                awaited = list(self._notify(StateChange(old, self._view, applied.changed, source)))
            finally:
                self._notifying = False
            if awaited:
                self._tell_later(awaited)
        return applied

    def _tell_later(self, awaited: list) -> None:
        """A synchronous write cannot wait for its asynchronous subscribers: they run in a
        task of the store's, after those of the writes before it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            for result in awaited:
                result.close()
            raise UsageError("an asynchronous subscriber cannot hear of a change made outside an event loop; "
                             "use apply_async/replace_async") from None
        before = self._told

        async def tell():
            if before is not None:
                await asyncio.wait([before])
            await self._deliver(awaited)
        self._told = self._own(tell())

    @staticmethod
    async def _deliver(awaitables) -> None:
        """Await what subscribers returned, one after the other; a failure is logged."""
        for result in awaitables:
            try:
                await result
            except Exception:
                log.exception("a subscriber to mesh changes failed")

    def _notify(self, change: StateChange):
        """Call the subscribers that asked for what changed; yields what they return to be awaited."""
        for kinds, callback in self._subscribers:
            if kinds is None or not kinds.isdisjoint(change.changed):
                try:
                    result = callback(change)
                except Exception:
                    log.exception("a subscriber to mesh changes failed")
                    continue
                if inspect.isawaitable(result):
                    yield result

    async def _commit_async(self, source: str, pending) -> Applied:
        if self._told is not None:               # a synchronous write's subscribers hear first
            await asyncio.wait([self._told])
        old, applied = self._install(source, pending)
        if applied.changed:
            # lazily: each subscriber is called once the one before it has finished
            await self._deliver(self._notify(StateChange(old, self._view, applied.changed, source)))
        return applied
