"""A relaying TCP listener: accept connections and splice each one to a connection
that a dial opens for it (an HBONE tunnel; plain TCP for destinations outside the
mesh; a local workload, for plaintext arriving at a node).

Ownership: the listener owns its accepted connections; each accepted connection owns
its dial. If the client goes away while the dial is under way, the dial is cancelled
and whatever it opened is closed; if the dial fails, the client's connection is reset
(never closed as if the destination had answered and ended). A dial through an
HbonePool is a request for a tunnel: cancelling it withdraws that request, and the
HBONE connection being dialed for it stays the pool's while other clients wait for it.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from meshcore.aio.splice import Splice, abort_with_rst

log = logging.getLogger("meshcore.relay")

# dial(protocol_factory, client_transport): opens the far side for one accepted
# connection and connects protocol_factory() to it (TunnelError / OSError if it cannot).
# What it returns is handed to on_end(result, splice) once the relay has ended.
Dial = Callable[[Callable[[], asyncio.BaseProtocol], asyncio.BaseTransport], Awaitable]


_NOT_DIALED = object()


class _Relayed(Splice):
    """A splice of a RelayListener: the dial that opens its far side, and what that
    dial returned (handed to the listener's on_end once the relay has ended)."""
    __slots__ = ("dial", "result")


class RelayListener:
    """A TCP listener whose every connection is relayed to what `dial` opens."""

    def __init__(self, dial: Dial, on_end: Callable[[object, Splice], None] | None = None):
        self._dial = dial
        self._on_end = on_end
        self._server: asyncio.AbstractServer | None = None
        self.splices: set[Splice] = set()
        self.stats = {"accepted": 0, "dial_failed": 0}

    async def start(self, host: str = "127.0.0.1", port: int = 0, **server_options) -> "RelayListener":
        self._server = await asyncio.get_running_loop().create_server(
            self._accepted, host, port, **server_options)
        return self

    @property
    def address(self) -> tuple:
        return self._server.sockets[0].getsockname()[:2]

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def wait_closed(self, timeout: float) -> None:
        """Until every relayed connection has ended by itself, or `timeout` has passed."""
        pending = [s.done for s in self.splices]
        if pending and timeout > 0:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self) -> None:
        """Stop listening and end every relayed connection."""
        self.stop_accepting()
        for splice in list(self.splices):
            splice.abort()
        await asyncio.gather(*(s.done for s in list(self.splices)), return_exceptions=True)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def _accepted(self, dial: Dial | None = None) -> asyncio.BaseProtocol:
        splice = _Relayed(self._connect, self._ended)
        splice.dial = dial or self._dial
        splice.result = _NOT_DIALED
        self.splices.add(splice)
        return splice.a

    def adopt(self, client: asyncio.Transport, dial: Dial | None = None) -> None:
        """Relay a connection accepted elsewhere (after a SOCKS5 handshake, say), with
        its own dial; from here on this listener owns it."""
        protocol = self._accepted(dial)
        client.set_protocol(protocol)
        protocol.connection_made(client)
        client.resume_reading()

    def _connect(self, splice: "_Relayed", client: asyncio.BaseTransport) -> None:
        self.stats["accepted"] += 1
        splice.own(asyncio.get_running_loop().create_task(self._open(splice, client)))

    def _ended(self, splice: "_Relayed") -> None:
        """The splice's hook: it ended; its owner forgets it and reports it."""
        self.splices.discard(splice)
        splice.dial = None
        if splice.result is not _NOT_DIALED and self._on_end is not None:
            self._report(splice)

    def _report(self, splice: "_Relayed") -> None:
        # called from a transport's connection_lost: one report failing must not end
        # the rest of that teardown
        try:
            self._on_end(splice.result, splice)
        except Exception:
            log.exception("reporting the end of a relayed connection failed")

    async def _open(self, splice: "_Relayed", client: asyncio.BaseTransport) -> None:
        try:
            result = await splice.dial(splice.side_b, client)
            if self._on_end is not None:
                splice.result = result
                if splice.done.done():          # it ended as the dial completed
                    self._report(splice)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            client_left = task is not None and task.cancelling() > 0
            splice.abort()
            if client_left:
                raise
            # the dial was cancelled by something other than this connection's end: a
            # failed dial like any other, not a silent end of the task
            self._failed(client, exc)
        except Exception as exc:                 # TunnelError, OSError, timeouts
            splice.abort()
            self._failed(client, exc)

    def _failed(self, client: asyncio.BaseTransport, exc: BaseException) -> None:
        self.stats["dial_failed"] += 1
        log.debug("outbound connection from %s: %r", client.get_extra_info("peername"), exc)
        if not client.is_closing():
            abort_with_rst(client)
