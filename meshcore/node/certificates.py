"""The local workloads' certificates: fetched when a workload appears on this node
(before its first connection needs one), rotated at half-life, dropped when the last
local workload of an identity goes. Readiness asks `missing`.

A change of the mesh only starts fetches (the store's writer, and with it the next
change and the ACK of an xDS push, never waits for a CA); they run in tasks of their
own, a few at a time, and `missing` follows them as they end.

With a remote CA (an issuer with `issue_async`), a certificate that could not be fetched
or renewed is retried on the store's backoff (0.5 s up to 150 s), and renewals happen at
the rotation point itself: the loop wakes for whichever comes first, a retry, a rotation
or the 30 s check."""
from __future__ import annotations

import asyncio
import logging

from meshcore.errors import IdentityError
from meshcore.node.context import ProxyContext
from meshcore.state.changes import Kind
from meshcore.state.view import MeshView

log = logging.getLogger("meshcore.node")

ROTATION_CHECK = 30.0        # seconds between checks for certificates past half-life or changed files
CONCURRENT_FETCHES = 16      # requests to a remote CA at once: a node full of new workloads does not flood it
INITIALIZING = "Initializing"


class LocalCertificates:
    def __init__(self, ctx: ProxyContext, *, concurrency: int = CONCURRENT_FETCHES, identities=None):
        self.ctx = ctx
        # which identities to hold, from a view: the node's local workloads' (and its own) by
        # default; a waypoint holds its own only
        self._identities = identities
        self.missing: dict = {}            # SpiffeId -> why it has no certificate
        self._wanted: set = set()
        self._errors: dict = {}            # SpiffeId -> why its last fetch failed
        self._fetches: dict = {}           # SpiffeId -> the task fetching it
        self._slots = asyncio.Semaphore(concurrency)
        self._rotation: asyncio.Task | None = None
        self._unsubscribe = None
        self._wake = asyncio.Event()       # a fetch ended: the loop computes again when to run

    @property
    def remote(self) -> bool:
        return getattr(self.ctx.certs, "remote", False)

    @property
    def prompt(self) -> bool:
        """Whether the issuer answers at once (an in-process CA, files, or a CA in a helper
        process of ours, asynchronous but local): start and refresh wait for it."""
        return not self.remote or getattr(getattr(self.ctx.certs, "issuer", None), "local", False)

    async def start(self) -> "LocalCertificates":
        """Ask for every local identity's certificate. A local issuer (the built-in CA,
        in this process or its helper process, files) has answered when this returns; a
        remote CA's answers arrive later, and until they do `missing` (readiness) says so."""
        # bookkeeping only: a change must not wait for a CA, nor hold up the store's writer
        self._unsubscribe = self.ctx.store.subscribe(lambda change: self._update(change.new), (Kind.WORKLOAD,))
        self._update(self.ctx.store.view)
        if self.prompt:
            await self.settled()
        self._rotation = asyncio.get_running_loop().create_task(self._rotate())
        return self

    def wanted(self, view: MeshView) -> set:
        if self._identities is not None:
            return set(self._identities(view))
        settings = self.ctx.settings
        wanted = {w.identity for w in view.local_workloads(settings.node_name) if w.meshed}
        if settings.own_identity is not None:
            wanted.add(settings.own_identity)
        return wanted

    async def refresh(self) -> None:
        """Every local identity of the view in force is asked for (a local issuer has
        answered when this returns); identities no longer local are forgotten (their
        connections keep the contexts they made)."""
        self._update(self.ctx.store.view)
        if self.prompt:
            await self.settled()

    def _update(self, view: MeshView) -> None:
        certs, wanted = self.ctx.certs, self.wanted(view)
        self._wanted = wanted
        known = getattr(certs, "known", None)
        for identity in (set(certs.identities) if known is None else set(known)) - wanted:
            certs.forget(identity)
        for identity in set(self._fetches) - wanted:
            self._fetches.pop(identity).cancel()
        for identity in set(self._errors) - wanted:
            del self._errors[identity]
        for identity in sorted(wanted):
            if identity not in self._fetches and certs.current(identity) is None:
                self._fetches[identity] = asyncio.get_running_loop().create_task(
                    self._fetch(identity), name=f"certificate {identity}")
        self._recompute()

    async def _fetch(self, identity) -> None:
        error = None
        try:
            async with self._slots:
                await self.ctx.certs.get(identity)
        except IdentityError as exc:
            error = str(exc)
        except Exception as exc:         # noqa: BLE001  (a store of another kind: still only this identity's)
            log.error("fetching the certificate of %s failed unexpectedly", identity, exc_info=exc)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._fetches.get(identity) is asyncio.current_task():
                del self._fetches[identity]
        if identity not in self._wanted:
            return
        if error is None:
            self._errors.pop(identity, None)
        else:
            if self._errors.get(identity) != error:
                log.error("no certificate for %s: %s", identity, error)
            self._errors[identity] = error
        # a new rotation point or retry: the loop computes its wait again
        self._wake.set()
        self._recompute()

    def _recompute(self) -> None:
        certs, missing = self.ctx.certs, {}
        for identity in sorted(self._wanted):
            if certs.current(identity) is None:
                missing[identity] = self._errors.get(identity, INITIALIZING)
            else:
                self._errors.pop(identity, None)    # renewed by the loop: a new failure is news again
        self.missing = missing

    async def settled(self) -> None:
        """Until the fetches under way have ended."""
        while self._fetches:
            await asyncio.gather(*list(self._fetches.values()), return_exceptions=True)

    async def rotate(self) -> None:
        """Rotate what is due (and pick up certificate files written meanwhile), then
        ask for what is missing. A remote CA's rotations are the loop's, on their time:
        a reload does not wait for istiod."""
        certs = self.ctx.certs
        if not self.remote:
            try:
                rotated = certs.rotate_due()
            except IdentityError as exc:
                log.error("certificates: %s (the previous ones stay in use)", exc)
            else:
                if rotated:
                    log.info("rotated certificates of %s", ", ".join(map(str, rotated)))
        await self.refresh()

    async def _turn(self) -> None:
        certs = self.ctx.certs
        if self.remote:
            rotated = await certs.rotate_due_async()
            if rotated:
                log.info("rotated certificates of %s", ", ".join(map(str, rotated)))
        await self.rotate()

    def _delay(self, check_at: float) -> float:
        """Seconds until the next thing to do: the 30 s check, or for a remote CA the
        earliest retry or rotation point."""
        loop = asyncio.get_running_loop()
        delay = check_at - loop.time()
        certs = self.ctx.certs
        if self.remote:
            when = certs.next_attempt()
            if when is not None:
                delay = min(delay, (when - certs.clock()).total_seconds())
        return max(delay, 0.0)

    async def _rotate(self) -> None:
        loop = asyncio.get_running_loop()
        check_at = loop.time() + ROTATION_CHECK
        while True:
            self._wake.clear()
            try:
                # not wait_for: on Python 3.11 it drops a cancellation that arrives as the
                # event is set, and close() would then wait for the next rotation check
                async with asyncio.timeout(self._delay(check_at)):
                    await self._wake.wait()
                continue                   # something new to wait for: compute again
            except TimeoutError:
                pass
            if loop.time() >= check_at:
                check_at = loop.time() + ROTATION_CHECK
            try:
                await self._turn()
            except Exception:
                # the loop is what renews certificates: it outlives any one failure
                log.exception("certificate rotation failed; trying again at the next check")

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._rotation is not None:
            self._rotation.cancel()
            await asyncio.gather(self._rotation, return_exceptions=True)
            self._rotation = None
        fetches, self._fetches = list(self._fetches.values()), {}
        for task in fetches:
            task.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
