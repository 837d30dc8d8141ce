"""One loop timer for every HBONE connection's keepalive check on an event loop.

A node proxy keeps a connection to every peer node, idle most of the time, and a timer
handle of its own per connection costs about 0.5 KiB on uvloop. Here a pending check
is an entry in a slot of RESOLUTION seconds, and one loop timer serves the earliest
slot: a check runs up to half a slot early or a slot late, which keepalive (seconds)
does not notice.
"""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("meshcore.hbone")

RESOLUTION = 0.05          # seconds per slot


class KeepaliveClock:
    """Calls `conn._keepalive()` for each connection whose slot has come."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._slots: dict[int, set] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed: int | None = None       # the slot the loop timer is set for
        self._firing = False

    def schedule(self, conn, delay: float) -> int:
        """A check of `conn` in `delay` seconds; returns its slot, for cancel()."""
        slot = round((self.loop.time() + delay) / RESOLUTION + 0.5)
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = set()
        entries.add(conn)
        if self._armed is None or slot < self._armed:
            self._arm(slot)
        return slot

    def cancel(self, conn, slot: int) -> None:
        entries = self._slots.get(slot)
        if entries is None:
            return
        entries.discard(conn)
        if not entries:
            del self._slots[slot]
            if not self._slots and not self._firing:
                self._disarm()

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = self.loop.call_at(slot * RESOLUTION, self._fire)

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed = None
        if _clocks.get(id(self.loop)) is self:
            del _clocks[id(self.loop)]       # nothing pending: the loop may end without us

    def _fire(self) -> None:
        self._handle = self._armed = None
        now = round(self.loop.time() / RESOLUTION)
        self._firing = True
        try:
            for slot in sorted(s for s in self._slots if s <= now):
                for conn in self._slots.pop(slot):
                    try:
                        conn._keepalive()
                    except Exception:                   # one connection's failure is its own
                        log.exception("keepalive check of HBONE peer %s failed", conn.peer_identity)
        finally:
            self._firing = False
        if self._slots:
            self._arm(min(self._slots))
        else:
            self._disarm()


_clocks: dict[int, KeepaliveClock] = {}


def keepalive_clock(loop: asyncio.AbstractEventLoop) -> KeepaliveClock:
    """The loop's clock (made on first use, dropped when nothing is pending)."""
    clock = _clocks.get(id(loop))
    if clock is None or clock.loop is not loop:
        clock = _clocks[id(loop)] = KeepaliveClock(loop)
    return clock
