"""`async with deadline(seconds):` - asyncio.timeout() for the steps every tunnel takes
(the upstream connect, the tunnel open).

It behaves as asyncio.timeout does (3.12's rules, on 3.11 too): no task of its own;
when the time is up the task is cancelled, and that cancellation leaves the block as
TimeoutError, unless the task was also cancelled from elsewhere, which then stays a
CancelledError (a cancellation arriving with the result is never dropped).

asyncio.timeout() costs each use five Python calls and about nine attribute reads
on its state Enum class, each of them a slow lookup on 3.11 (EnumType defines
__getattr__): as much as the rest of accepting a tunnel's request. This is one plain
object, one timer handle and two calls.
"""
from __future__ import annotations

import asyncio

# The task running on a loop, asked whenever a connection queues output and on every
# deadline: the C function where the interpreter has one (3.12), else the table that
# asyncio.current_task() reads, without its Python frame (3.11).
try:
    from _asyncio import current_task
except ImportError:
    current_task = getattr(asyncio.tasks, "_current_tasks", None)
    current_task = current_task.get if isinstance(current_task, dict) else asyncio.current_task


class deadline:
    """Cancel the task running the block after `delay` seconds (None: never); the
    block then raises TimeoutError. For one use; reschedule() is not offered."""
    __slots__ = ("_delay", "_task", "_handle", "_cancelling", "_expired")

    def __init__(self, delay: float | None):
        self._delay = delay
        self._handle = None
        self._expired = False

    async def __aenter__(self) -> "deadline":
        loop = asyncio.get_running_loop()
        task = current_task(loop)
        if task is None:
            raise RuntimeError("deadline() must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()       # cancellations that are not ours
        if self._delay is not None:
            if self._delay <= 0:
                # as asyncio.timeout: expired at the block's first step, not before it
                self._handle = loop.call_soon(self._on_timeout)
            else:
                self._handle = loop.call_later(self._delay, self._on_timeout)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None
        if self._expired:
            if self._task.uncancel() <= self._cancelling and exc_type is not None \
                    and issubclass(exc_type, asyncio.CancelledError):
                raise TimeoutError from exc
        return None

    def _on_timeout(self) -> None:
        self._handle = None
        if not self._task.done():
            self._task.cancel()
            self._expired = True

    def expired(self) -> bool:
        """The time was up (the block was cancelled for it)."""
        return self._expired
