"""The HBONE connection pool: PoolCore (compiled, sans-IO) decides; this dials.

    pool = HbonePool(connect)            # connect(key) -> HboneConnection
    transport, protocol = await pool.open_stream(key, "10.0.0.7:8080", protocol_factory)

Dials belong to the pool, not to the caller that needed one first: each runs in a task
of its own, which every caller waiting for it shields. A caller that leaves (cancelled,
timed out) leaves alone; the dial is cancelled only once no caller waits for it, and
what it opened is closed. A dial that fails raises its error in every waiting caller.

What a caller can get instead of a tunnel:

- UsageError: the request can never be sent (a malformed header field, an authority
  that is not host:port); raised before any connection is chosen or dialed;
- StreamRefusedError (a TunnelError, 503): the peer refused this tunnel's stream with
  REFUSED_STREAM outside a GOAWAY; it is not asked again for `refusal_hold` seconds;
- TunnelError(503): the peer refuses new streams (SETTINGS_MAX_CONCURRENT_STREAMS 0, or
  a REFUSED_STREAM less than `refusal_hold` seconds ago), or `max_attempts` connections
  in a row did not process the tunnel (going away, or over a stream limit the peer had
  not sent yet);
- TunnelError(status): the far end answered the CONNECT with that status;
- the dial's own error (OSError, IdentityError, ...).

A caller beyond `max_connections_per_key` full connections waits for a stream of its
key to end; its own timeout (asyncio.wait_for) bounds the wait.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from meshcore._core.headers import validate_outgoing_fields
from meshcore._core.pool import OpenFailure, PoolCore, Step
from meshcore.aio.connection import HboneConnection
from meshcore.aio.server import parse_authority
from meshcore.errors import (StreamClosedError, StreamRefusedError, TooManyStreamsError, TunnelError,
                             UsageError)

IDLE_TIMEOUT = 300.0          # docs/hbone.md, Connection pool: released after 5 min without a checkout
MAX_STREAMS = 100             # per connection, as ztunnel's pool
# ztunnel's pool sets no limit; this one bounds what a peer advertising a tiny stream
# limit (or a very busy key) can make us open: 64 connections of 100 streams
MAX_CONNECTIONS_PER_KEY = 64
REFUSAL_HOLD = 2.0            # a peer that refused streams is not dialed again for this long
MAX_ATTEMPTS = 3              # connections one tunnel is tried on when they are going away

_USE, _DIAL, _WAIT_DIAL, _WAIT_ROOM = Step.USE, Step.DIAL, Step.WAIT_DIAL, Step.WAIT_ROOM


class PoolKey(NamedTuple):
    source_identity: object             # SpiffeId we present
    expected: tuple                     # SpiffeIds the server may have
    destination: tuple                  # (host, port) we dial
    source_ip: str | None = None


class _NotProcessed(Exception):
    """One try failed and the peer did not process the tunnel: `why` (OpenFailure)
    decides whether another connection may be tried; `error` is what the caller gets
    if not. Never leaves the pool."""

    def __init__(self, why: OpenFailure, error):
        super().__init__(why, error)
        self.why = why
        self.error = error if isinstance(error, BaseException) else TunnelError(error, 503)


class _Dial:
    """One dial for a key, shared by the callers waiting for it."""
    __slots__ = ("key", "task", "waiters")

    def __init__(self, key: PoolKey):
        self.key = key
        self.task: asyncio.Task | None = None
        self.waiters = 0


class HbonePool:
    """HBONE connections by PoolKey, dialed with `connect(key)` when a tunnel needs one.

    `max_streams` tunnels per connection (or fewer, if the peer says so), at most
    `max_connections_per_key` connections per key, closed after `idle_timeout` s
    without a checkout; a peer refusing streams is not asked again for `refusal_hold`
    s; a tunnel is tried on at most `max_attempts` connections."""

    def __init__(self, connect: Callable[[PoolKey], Awaitable[HboneConnection]], *,
                 max_streams: int = MAX_STREAMS, max_connections_per_key: int = MAX_CONNECTIONS_PER_KEY,
                 idle_timeout: float = IDLE_TIMEOUT, refusal_hold: float = REFUSAL_HOLD,
                 max_attempts: int = MAX_ATTEMPTS, clock: Callable[[], float] = time.monotonic):
        self.core = PoolCore(max_streams, idle_timeout, max_connections_per_key, refusal_hold, max_attempts)
        self._connect = connect
        self._clock = clock
        self._conns: dict[int, HboneConnection] = {}
        self._key_of: dict[int, PoolKey] = {}
        self._dials: dict[PoolKey, _Dial] = {}
        self._room: dict[PoolKey, asyncio.Event] = {}      # callers waiting for a stream to end
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.dials = 0              # dials started
        self.dial_failures = 0      # dials that ended in an error (raised in each of their callers)
        self.dials_abandoned = 0    # dials cancelled because every caller waiting for them left
        self.retries = 0            # tunnels tried again on another connection (GOAWAY, the peer's limit)
        self.refusals = 0           # callers failed without a dial because the peer refuses streams

    @property
    def connections(self) -> list[HboneConnection]:
        return list(self._conns.values())

    async def open_stream(self, key: PoolKey, authority: str, protocol_factory, headers=()):
        """A tunnel on a pooled connection for `key` (dialing one if none has room)."""
        fields = _checked_request(authority, headers)
        attempt = 1
        while True:
            # one try on one connection, in this frame (no coroutine of its own: this
            # runs for every tunnel); _NotProcessed if the peer never processed it
            try:
                if self._closed:
                    raise TunnelError("the connection pool is closed", 503)
                step, conn_id = self.core.acquire(key, self._clock())
                conn = self._conns[conn_id] if step == _USE else await self._checkout(key, step)
                if not conn.usable:                  # ending or going away before its hooks said so
                    self._release(conn)
                    self._retire(conn)
                    raise _NotProcessed(OpenFailure.GOING_AWAY, f"the connection to {_where(key)} is going away")
                try:
                    return await conn.open_stream(authority, protocol_factory, fields)
                except StreamClosedError as exc:     # nothing sent: GOAWAY either way, or stream ids used up
                    self._release(conn)
                    self._retire(conn)
                    raise _NotProcessed(OpenFailure.GOING_AWAY, exc) from None
                except TooManyStreamsError as exc:   # nothing sent: the peer allows fewer than we counted
                    self.core.set_limit(id(conn), conn.h2.open_local_streams, self._clock())
                    self._release(conn)
                    raise _NotProcessed(OpenFailure.OVER_LIMIT, exc) from None
                except StreamRefusedError as exc:    # sent and refused unprocessed; its slot is already back
                    if exc.going_away:
                        why = OpenFailure.GOING_AWAY
                    elif exc.before_settings:        # over a limit we did not know yet: not a refusal
                        why = OpenFailure.OVER_LIMIT
                    else:
                        why = OpenFailure.PEER_REFUSED
                        self.core.refused(id(conn), self._clock())
                    raise _NotProcessed(why, exc) from None
                except UsageError:                   # nothing sent, and sending it again cannot help
                    self._release(conn)
                    raise
            except _NotProcessed as failure:
                if not self.core.retry(failure.why, attempt):
                    if failure.why == OpenFailure.PEER_REFUSED:
                        raise failure.error from None
                    raise TunnelError(f"no connection to {_where(key)} took the tunnel in {attempt} attempts; "
                                      f"the last: {failure.error}", 503) from failure.error
            attempt += 1
            self.retries += 1

    # ----------------------------------------------------------------- checkout

    async def _checkout(self, key: PoolKey, step) -> HboneConnection:
        """A connection for `key`, after the core's first decision `step` (not USE)."""
        while True:
            if step is None:
                if self._closed:
                    raise TunnelError("the connection pool is closed", 503)
                step, conn_id = self.core.acquire(key, self._clock())
                if step == _USE:
                    return self._conns[conn_id]
            if step == _DIAL or step == _WAIT_DIAL:
                conn = await self._join(self._start_dial(key) if step == _DIAL else self._dials[key])
                if conn is not None and not conn.usable:
                    # a peer that ends connections right after their SETTINGS must cost
                    # this caller an attempt, or it would be dialed again without end
                    raise _NotProcessed(OpenFailure.GOING_AWAY,
                                        f"the connection dialed to {_where(key)} ended before its first tunnel")
            elif step == _WAIT_ROOM:
                event = self._room.get(key)
                if event is None:
                    event = self._room[key] = asyncio.Event()
                await event.wait()
            else:
                self.refusals += 1
                raise TunnelError(
                    f"{_where(key)} refuses new streams (SETTINGS_MAX_CONCURRENT_STREAMS 0 or REFUSED_STREAM); "
                    f"not asked again for {self.core.refusal_hold:g} s", 503)
            step = None                         # waited: the core decides again

    def _start_dial(self, key: PoolKey) -> _Dial:
        dial = self._dials[key] = _Dial(key)
        dial.task = asyncio.get_running_loop().create_task(self._dial(dial))
        self.dials += 1
        return dial

    async def _dial(self, dial: _Dial) -> HboneConnection | None:
        try:
            conn = await self._connect(dial.key)
        except asyncio.CancelledError:
            self._end_dial(dial)
            raise
        except BaseException:
            self.dial_failures += 1
            self._end_dial(dial)
            raise
        if self._dials.get(dial.key) is not dial or self._closed:
            # abandoned (its connection came as it was cancelled), or the pool closed:
            # nobody asked for this connection any more, and another dial may own the key
            conn.close()
            return None
        del self._dials[dial.key]
        self._register(dial.key, conn)          # add() ends the key's dial in the core
        return conn

    def _end_dial(self, dial: _Dial) -> None:
        if self._dials.get(dial.key) is dial:
            del self._dials[dial.key]
            self.core.end_dial(dial.key)

    async def _join(self, dial: _Dial) -> HboneConnection | None:
        """Wait for `dial` to end: its connection, or its error raised here. Leaving
        early leaves alone."""
        dial.waiters += 1
        try:
            return await asyncio.shield(dial.task)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if dial.task.cancelled() and not (task is not None and task.cancelling()):
                # the dial, not this caller, was cancelled: that is a failed dial to the caller
                why = "the pool closed" if self._closed else "its connect was cancelled"
                raise TunnelError(f"the dial to {_where(dial.key)} did not complete: {why}", 503) from None
            raise
        finally:
            dial.waiters -= 1
            if dial.waiters == 0 and not dial.task.done():
                # its last caller left: nobody is waiting for this connection any more
                self.dials_abandoned += 1
                self._end_dial(dial)
                dial.task.cancel()

    # ----------------------------------------------------------------- bookkeeping

    def _register(self, key: PoolKey, conn: HboneConnection) -> None:
        cid = id(conn)
        self._conns[cid] = conn
        self._key_of[cid] = key
        self.core.add(key, cid, conn.h2.remote_max_concurrent_streams, self._clock())
        conn.on_stream_closed = self._stream_closed
        conn.on_unusable = self._retire
        conn.on_settings = self._settings
        conn.closed.add_done_callback(lambda _: self._forget(conn))
        if not conn.usable:                      # a GOAWAY came with its SETTINGS, before the hooks
            self._retire(conn)
        if self._sweeper is None:
            self._schedule_sweep()

    def _stream_closed(self, conn: HboneConnection, stream_id: int) -> None:
        # _release inline: every tunnel's end comes here
        if self.core.release(id(conn), self._clock()):
            conn.close()
        if self._room:
            self._wake(id(conn))

    def _settings(self, conn: HboneConnection) -> None:
        self.core.set_limit(id(conn), conn.h2.remote_max_concurrent_streams, self._clock())
        self._wake(id(conn))

    def _release(self, conn: HboneConnection) -> None:
        if self.core.release(id(conn), self._clock()):
            conn.close()
        if self._room:
            self._wake(id(conn))

    def _retire(self, conn: HboneConnection) -> None:
        if self.core.retire(id(conn)):
            conn.close()
        if self._room:
            self._wake(id(conn))             # a retired connection leaves room for a new one

    def _forget(self, conn: HboneConnection) -> None:
        cid = id(conn)
        self.core.remove(cid)
        self._conns.pop(cid, None)
        if self._room:
            self._wake(cid)
        self._key_of.pop(cid, None)

    def _wake(self, cid: int) -> None:
        event = self._room.pop(self._key_of.get(cid), None)
        if event is not None:
            event.set()

    def _schedule_sweep(self) -> None:
        interval = max(0.05, min(30.0, self.core.idle_timeout / 2, self.core.refusal_hold))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def sweep(self) -> list[HboneConnection]:
        """Close connections idle for idle_timeout (and those whose peer allows no
        stream, once refusal_hold has passed); returns them."""
        closed = [self._conns[cid] for cid in self.core.idle(self._clock()) if cid in self._conns]
        for conn in closed:
            conn.close()
        return closed

    def _sweep(self) -> None:
        self.sweep()
        self._sweeper = None
        if self._conns:
            self._schedule_sweep()

    async def close(self) -> None:
        """Close every connection and cancel every dial; callers still waiting get a TunnelError."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        dials = [d.task for d in self._dials.values()]
        for task in dials:
            task.cancel()
        for event in self._room.values():
            event.set()
        self._room.clear()
        conns = list(self._conns.values())
        for conn in conns:
            conn.close()
        await asyncio.gather(*dials, *(asyncio.shield(c.closed) for c in conns), return_exceptions=True)


# authorities already found good: a proxy tunnels to the same few again and again, and
# parsing one costs more than a third of what the pool adds to opening a tunnel
_GOOD_AUTHORITIES: set = set()
_GOOD_AUTHORITIES_MAX = 4096


def _checked_request(authority, headers) -> list:
    """The CONNECT's fields as they will be sent, or UsageError if it could never be
    sent: checked before a connection is chosen, so a bad request costs none."""
    if isinstance(authority, bytearray):
        authority = bytes(authority)
    if not isinstance(authority, (str, bytes)):
        raise UsageError(f"CONNECT authority {authority!r:.80} is not host:port")
    if authority not in _GOOD_AUTHORITIES:
        text = authority.decode("latin-1") if isinstance(authority, bytes) else authority
        if not text.isascii():
            raise UsageError(f"CONNECT authority {authority!r:.80} is not host:port in ASCII")
        try:
            parse_authority(text)        # what a meshcore server accepts (else it answers 400)
        except ValueError as exc:
            raise UsageError(f"bad CONNECT authority: {exc}") from None
        if len(_GOOD_AUTHORITIES) >= _GOOD_AUTHORITIES_MAX:
            _GOOD_AUTHORITIES.clear()
        _GOOD_AUTHORITIES.add(authority)
    return validate_outgoing_fields(headers)


def _where(key: PoolKey) -> str:
    host, port = key.destination
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
