"""Copy bytes between two asyncio transports in both directions, with backpressure,
half-close and abort semantics of docs/hbone.md, A tunnel's life.

Each side is a small BufferedProtocol that forwards to the other side's transport:
- data flows straight through (compiled: meshcore.aio.datapath.SpliceSide): sockets
  read into the thread's shared ReadBuffer, and what was read is written on (copied
  only when small, see meshcore._core.buffers); when one side's write buffer is full
  (pause_writing), the other side stops reading, so nothing accumulates beyond one
  read or one window;
- EOF on one side becomes write_eof() on the other (half-close);
- the splice closes once both directions are done;
- a side lost with an error aborts the other: a TCP socket with RST (SO_LINGER 0),
  an HBONE stream with RST_STREAM — never a clean close that would look complete.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from meshcore.aio.datapath import SpliceSide, StreamTransport
from meshcore.errors import ErrorCode, StreamClosedError


def abort_with_rst(transport: asyncio.BaseTransport) -> None:
    """Abort so that the peer sees a reset, not an orderly end of data."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _abort(transport) -> None:
    if isinstance(transport, StreamTransport):
        transport.abort(ErrorCode.CONNECT_ERROR)
    else:
        abort_with_rst(transport)


class _Side(SpliceSide, asyncio.BufferedProtocol):
    """A splice side: splice, received, transport, peer, eof, lost and the early-data
    list live in SpliceSide, which also reads and forwards."""

    # closed by the splice because the other side ended cleanly first (its peer reset
    # the stream with CANCEL after its end, or closed outright): what this side had
    # not finished sending is not its failure
    closed_after_peer = False

    def connection_made(self, transport) -> None:
        # Nothing may be lost while the other side does not exist yet (an upstream can
        # speak before the tunnel is accepted). Pausing here is not enough: uvloop
        # starts reading after connection_made() returns, so early data is held.
        self.transport = transport
        peer = self.peer
        if peer.transport is not None:
            # most tunnels have nothing early: no call to find that out
            if peer._early or peer._early_eof:
                peer._release_early()
            if self._early or self._early_eof:
                self._release_early()
        elif self is self.splice.a and self.splice.on_connected is not None:
            self.splice.on_connected(self.splice, transport)

    def _release_early(self) -> None:
        early, self._early = self._early, []
        for data in early:
            self.peer.transport.write(data)
        if self._early_eof:
            self._early_eof = False
            self.eof_received()
        if early:
            self.transport.resume_reading()

    def eof_received(self):
        if self.peer.transport is None:
            self._early_eof = True
            return True
        self.eof = True
        if not self.peer.lost and self.peer.transport.can_write_eof():
            try:
                self.peer.transport.write_eof()
            except (OSError, StreamClosedError):
                # the far side is already gone (reset under us): this direction cannot
                # complete, so the far side ends as a failure, not a clean close
                _abort(self.peer.transport)
        if self.peer.eof:
            self.splice._maybe_done()
        return True                 # keep the other direction open

    def pause_writing(self) -> None:
        if self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer.transport is not None and not self.peer.lost:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self.lost = True
        splice, other = self.splice, self.peer
        # an HBONE stream its peer reset with CANCEL or NO_ERROR before END_STREAM ends
        # like one that ended (the other side gets its end of data), yet it was cut short
        cut = exc is None and type(self.transport) is StreamTransport and self.transport.cut_by_peer
        if (exc is not None or cut or not (self.eof or self.closed_after_peer)) and not splice.error \
                and self.transport is not None:
            why = exc or ("reset by its peer before the end of data" if cut else "closed before the end of data")
            splice.error = f"{'a' if self is splice.a else 'b'}: {why}"
        if not other.lost and other.transport is not None:
            if exc is not None or not self.eof:
                # the other side must learn this direction did not complete
                if isinstance(other.transport, StreamTransport):
                    other.transport.abort(ErrorCode.CONNECT_ERROR if exc is not None else ErrorCode.CANCEL)
                else:
                    abort_with_rst(other.transport)
            else:
                other.closed_after_peer = not cut
                other.transport.close()
        work = splice._work
        if work is not None and not work.done():
            work.cancel()                       # a side ended while the other was being dialed
        # the far side was never connected (its dial failed or was cancelled): nothing
        # else will end this splice
        if (other.transport is None or other.lost) and not splice.done.done():
            splice.done.set_result({"a": splice.a.received, "b": splice.b.received})
            on_done, splice.on_done = splice.on_done, None
            if on_done is not None:
                on_done(splice)


class Splice:
    """Two sides, `a` and `b`; connect each to its transport (`a.connection_made(t)`).

    `on_connected(splice, transport)` is called when `a` connects first (a proxy starts
    dialing `b` then); a task given to `own()` (that dial) is cancelled if the splice
    ends before it does. `done` resolves once neither side is open any more, and
    `on_done(splice)`, the owner's hook, is called then (once): an owner told directly
    needs no callback of its own on `done`."""

    def __init__(self, on_connected: Callable | None = None, on_done: Callable | None = None):
        self.a, self.b = a, b = _Side(), _Side()
        a.splice = b.splice = self
        a.peer, b.peer = b, a
        self.on_connected = on_connected
        self.on_done = on_done
        self._work: asyncio.Task | None = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.error: str = ""            # why it did not end cleanly: "a: ..." or "b: ..." (first side to fail)

    def own(self, task: asyncio.Task) -> None:
        self._work = task

    def side_b(self) -> _Side:
        """A protocol factory for the far side's dial (a bound method costs less than a
        closure per connection)."""
        return self.b

    def _maybe_done(self) -> None:
        if self.a.eof and self.b.eof:
            for side in (self.a, self.b):
                if not side.lost:
                    side.transport.close()

    def abort(self) -> None:
        """End what is still open, as a failure (RST / RST_STREAM): the splice's owner
        is gone. Nothing happens to sides that already ended."""
        for side in (self.a, self.b):
            t = side.transport
            if side.lost or t is None or t.is_closing():
                continue
            if isinstance(t, StreamTransport):
                t.abort(ErrorCode.CANCEL)
            else:
                abort_with_rst(t)

    @property
    def bytes(self) -> dict:
        """Bytes read from each side so far: {"a": n, "b": n}."""
        return {"a": self.a.received, "b": self.b.received}
