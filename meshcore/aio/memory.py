"""Giving memory back to the system after a burst of connections or tunnels.

A TLS connection in progress holds tens of KiB (OpenSSL's state, the connection's
objects). When thousands end together (a handshake flood timing out,
a peer dropping its connections), glibc keeps the freed heap for reuse and the process
stays at its peak size indefinitely. A burst of large tunnels leaves the same kind of
holes (record and window buffers between the objects that stay: ~1 KiB per connection
that carried one). After enough connections or tunnels have ended, a garbage collection
frees the connections still held in reference cycles and `malloc_trim(0)` returns the
memory; it is coalesced (at most one call per second) because a trim walks the whole
heap. Without glibc this does nothing.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import sys
import threading

TRIM_AFTER = 512          # ended since the last trim: a connection counts 4, a tunnel 1
CONNECTION_WEIGHT = 4
TRIM_DELAY = 1.0          # seconds: ends arriving together share one trim


BACKGROUND_SWITCH_INTERVAL = 0.0005
_pause_lock = threading.Lock()
_pauses = 0
_was_enabled = True
_switch_interval = 0.005


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


@contextlib.contextmanager
def gc_paused():
    """No cyclic collection while a large configuration is parsed and diffed. Parsing
    allocates about a million objects that live until the diff drops the unchanged
    ones; each full collection they trigger scans the whole heap with the GIL held,
    stalling the event loop for hundreds of milliseconds. What they leave is freed by
    reference counting (the model objects hold no cycles). Nests, and works across
    threads: collection resumes when the last pause ends."""
    global _pauses, _was_enabled, _switch_interval
    with _pause_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
            _switch_interval = sys.getswitchinterval()
            if not _on_event_loop():
                # on a worker thread: the event loop's thread, waiting for the GIL after
                # each poll, gets it back within 0.5 ms instead of the default 5
                sys.setswitchinterval(min(_switch_interval, BACKGROUND_SWITCH_INTERVAL))
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0:
                sys.setswitchinterval(_switch_interval)
                if _was_enabled:
                    gc.enable()


def _malloc_trim():
    try:
        # the symbols already loaded into the process, libc's among them: no library
        # search (ctypes.util's find_library imports tempfile, shutil and more, ~1 MB)
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class MemoryTrimmer:
    """Once `trim_after` has been reached (a connection counts 4, a tunnel 1), trims
    after `delay` seconds in which nothing else ended: once the burst is over, not in
    the middle of it."""

    def __init__(self, trim_after: int = TRIM_AFTER, delay: float = TRIM_DELAY):
        self.trim_after = trim_after
        self.delay = delay
        self._ended = 0
        self._recent = 0          # ended since the timer was last (re)armed
        self._scheduled = False
        self._trim = _malloc_trim()
        self.trims = 0

    def connection_ended(self, loop) -> None:
        """Count one ended connection (or failed handshake)."""
        self._count(loop, CONNECTION_WEIGHT)

    def tunnel_ended(self, loop) -> None:
        """Count one ended tunnel."""
        if self._trim is None:
            return
        # _count(loop, 1) inline: every tunnel's end comes here
        self._ended += 1
        self._recent += 1
        if self._ended >= self.trim_after and not self._scheduled:
            self._scheduled = True
            self._recent = 0
            loop.call_later(self.delay, self._run, loop)

    def _count(self, loop, weight: int) -> None:
        if self._trim is None:
            return
        self._ended += weight
        self._recent += 1
        if self._ended >= self.trim_after and not self._scheduled:
            self._scheduled = True
            self._recent = 0
            loop.call_later(self.delay, self._run, loop)

    def trim_now(self) -> None:
        """Collect and give free memory back to the system at once (after a large
        configuration replaced another, say)."""
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    def _run(self, loop) -> None:
        if self._recent:                  # still ending: wait for a quiet interval
            self._recent = 0
            loop.call_later(self.delay, self._run, loop)
            return
        self._scheduled = False
        self._ended = 0
        self.trims += 1
        # closed connections linger in reference cycles (protocol <-> transport, the
        # TLS layer's own) until the cyclic GC runs, which an idle process may not do
        # for a long time; their TLS state is only freed then
        gc.collect()
        self._trim(0)


trimmer = MemoryTrimmer()
