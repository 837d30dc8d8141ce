"""The local workloads' certificates: fetched when a workload appears on this node
(before its first connection needs one), rotated at half-life, dropped when the last
local workload of an identity goes. Readiness asks `missing`.

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


class LocalCertificates:
    def __init__(self, ctx: ProxyContext):
        self.ctx = ctx
        self.missing: dict = {}            # SpiffeId -> why it has no certificate
        self._rotation: asyncio.Task | None = None
        self._unsubscribe = None
        self._refreshing = asyncio.Lock()  # a change and a rotation check refresh one after the other
        self._wake = asyncio.Event()       # a retry was scheduled: the loop recomputes when to run

    async def start(self) -> "LocalCertificates":
        await self.refresh()
        self._unsubscribe = self.ctx.store.subscribe(lambda change: self.refresh(), (Kind.WORKLOAD,))
        self._rotation = asyncio.get_running_loop().create_task(self._rotate())
        return self

    def wanted(self, view: MeshView) -> set:
        settings = self.ctx.settings
        wanted = {w.identity for w in view.local_workloads(settings.node_name) if w.meshed}
        if settings.own_identity is not None:
            wanted.add(settings.own_identity)
        return wanted

    async def refresh(self) -> None:
        """Every local identity of the view in force gets a certificate now; identities no
        longer local are forgotten (their connections keep the contexts they made)."""
        async with self._refreshing:
            await self._refresh(self.ctx.store.view)

    async def _refresh(self, view: MeshView) -> None:
        certs, wanted = self.ctx.certs, self.wanted(view)
        for identity in set(certs.identities) - wanted:
            certs.forget(identity)
        missing = {}
        for identity in sorted(wanted):
            try:
                await certs.get(identity)
            except IdentityError as exc:
                missing[identity] = str(exc)
        if missing:
            log.error("no certificate for %s", "; ".join(f"{i}: {why}" for i, why in missing.items()))
            self._wake.set()
        self.missing = missing

    async def rotate(self) -> None:
        """Rotate what is due (and pick up certificate files written meanwhile), then
        fetch what is missing."""
        certs = self.ctx.certs
        try:
            rotated = await certs.rotate_due_async() if getattr(certs, "remote", False) else certs.rotate_due()
        except IdentityError as exc:
            log.error("certificates: %s (the previous ones stay in use)", exc)
        else:
            if rotated:
                log.info("rotated certificates of %s", ", ".join(map(str, rotated)))
        await self.refresh()

    def _delay(self, check_at: float) -> float:
        """Seconds until the next thing to do: the 30 s check, or for a remote CA the
        earliest retry or rotation point."""
        loop = asyncio.get_running_loop()
        delay = check_at - loop.time()
        certs = self.ctx.certs
        if getattr(certs, "remote", False):
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
                await asyncio.wait_for(self._wake.wait(), self._delay(check_at))
                continue                   # something new to wait for: compute again
            except asyncio.TimeoutError:
                pass
            if loop.time() >= check_at:
                check_at = loop.time() + ROTATION_CHECK
            await self.rotate()

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._rotation is not None:
            self._rotation.cancel()
            await asyncio.gather(self._rotation, return_exceptions=True)
            self._rotation = None
