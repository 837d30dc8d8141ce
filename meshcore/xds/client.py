"""istiod's delta ADS stream as one source of the mesh store, the way ztunnel follows it
(docs: CONTROL_PLANE.md §1 and §4).

    client = await XdsClient(ControlPlane.from_environment(), store).start()
    client.synced            # every type ACKed at least once (on demand: Authorization only)
    client.pending()         # what it still waits for, and why
    await client.lookup("network/10.0.0.7", timeout=5)   # on-demand (XDS_ON_DEMAND=true)
    await client.close()

One stream carries both types (Address, Authorization). Each response is decoded
resource by resource: what meshcore refuses is NACKed with its reason while the rest
applies, and the configuration in force stays when the stream breaks; the client
reconnects (10 ms doubling to 15 s, jittered) and claims what it holds in
`initial_resource_versions`, so istiod re-sends only what changed and names what was
deleted meanwhile. A new roots file (a CA rotation) ends the stream and the next one
runs on a channel built with the new roots.

A full push of a large cluster is parsed and decoded on a worker thread, and the store
builds its view on one too, so tunnels keep moving while it applies.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from typing import Protocol

import grpc
import grpc.aio

from meshcore.aio.memory import gc_paused
from meshcore.errors import ConfigError
from meshcore.state.changes import Kind, Remove, Upsert, kind_of
from meshcore.state.store import MeshStore
from meshcore.xds.channel import ChannelSource
from meshcore.xds.convert import ADDRESS_TYPE, AUTHORIZATION_TYPE, ResourceError, decode
from meshcore.xds.proto import discovery_pb2 as dpb
from meshcore.xds.settings import ControlPlane

__all__ = ["XdsClient", "ADS_METHOD", "ADDRESS_TYPE", "AUTHORIZATION_TYPE"]

log = logging.getLogger("meshcore.xds")

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
TYPES = (ADDRESS_TYPE, AUTHORIZATION_TYPE)
INITIAL_BACKOFF = 0.01
MAX_BACKOFF = 15.0
ROOTS_CHECK = 2.0                 # seconds between looks at the roots file
# a response this large (serialized bytes) is parsed and decoded on a worker thread; a
# small one costs less than the hop (a push of one changed workload is ~300 bytes)
OFF_LOOP_BYTES = 64 * 1024
RECORD_OFF_LOOP = 2048            # resources whose bookkeeping is done on a worker thread
INVALID_ARGUMENT = 3              # google.rpc.Code, what Envoy and istiod expect in a NACK
WILDCARD = "*"
LOOKUP_TIMEOUT = 10.0             # a node proxy's default connect timeout
BROKEN_NAMES = 5                  # undecodable resources named in the one line logged for them


def _short(type_url: str) -> str:
    return type_url.rpartition(".")[2]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ResourceError):
        return f"{exc.path}: {exc.reason}" if exc.path else exc.reason
    return str(exc)


# why a stream ended: ztunnel's istio_xds_connection_terminations_total{reason}
TERMINATION_CONNECTION_ERROR = "ConnectionError"     # istiod could not be reached
TERMINATION_ERROR = "Error"
TERMINATION_RECONNECT = "Reconnect"                  # a routine end (connection age, GOAWAY) or new roots
TERMINATION_COMPLETE = "Complete"                    # istiod ended the stream cleanly


class XdsTelemetry(Protocol):
    """What the client reports, for ztunnel's xDS metrics."""
    def xds_message(self, type_url: str, nbytes: int) -> None: ...
    def xds_terminated(self, reason: str) -> None: ...


def _termination(exc: "grpc.aio.AioRpcError", delivered: bool) -> str:
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE and not delivered:
        return TERMINATION_CONNECTION_ERROR
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED) or (
            code is grpc.StatusCode.UNAVAILABLE and ("transport is closing" in details or "GOAWAY" in details.upper())):
        return TERMINATION_RECONNECT
    return TERMINATION_ERROR


class _TypeState:
    """What the client knows of one resource type."""
    __slots__ = ("type_url", "expected", "acked", "nonce", "held", "rejected", "error", "responses", "fresh")

    def __init__(self, type_url: str, expected: bool = True):
        self.type_url = type_url
        # readiness waits for it; istiod need not answer an on-demand Address request that
        # subscribes to nothing, so ztunnel does not wait for one (types_to_expect)
        self.expected = expected
        self.acked = False                         # a response of this type was ACKed once
        self.nonce = ""
        self.held: dict[str, tuple[Kind, str]] = {}   # name -> (kind, version) in force from us
        self.rejected: dict[str, str] = {}         # name -> why its last version was refused
        self.error: str | None = None              # the last NACK's message, until an ACK
        self.responses = 0
        self.fresh = True                          # no response of this type on this stream yet


class _Prepared:
    """One response made ready on a worker thread (or on the loop when small)."""
    __slots__ = ("type_url", "nonce", "version", "changes", "accepted", "refused", "removed", "named", "size")

    def __init__(self, response):
        self.type_url = response.type_url
        self.nonce = response.nonce
        self.version = response.system_version_info or response.nonce
        self.size = 0                   # bytes of the resources, as ztunnel counts a message
        self.changes: list = []
        self.accepted: list = []        # (name, kind, version)
        self.refused: dict[str, str] = {}
        self.removed: list[str] = []    # names istiod removed that the client held
        self.named: list = []           # (name, aliases, resource or None): for on-demand waits


class XdsClient:
    def __init__(self, plane: ControlPlane, store: MeshStore, *, source: str = "xds",
                 channels: ChannelSource | None = None, roots_check: float = ROOTS_CHECK,
                 max_backoff: float = MAX_BACKOFF, telemetry: XdsTelemetry | None = None):
        if plane.xds_address is None:
            raise ConfigError("no xDS address (XDS_ADDRESS)", source="environment")
        self.plane, self.store, self.source = plane, store, source
        self.address = plane.xds_address
        self.channels = channels or ChannelSource(plane.xds_address, plane.xds_roots)
        self.roots_check, self.max_backoff = roots_check, max_backoff
        self.telemetry = telemetry
        self._types = {t: _TypeState(t, expected=not (t == ADDRESS_TYPE and plane.on_demand)) for t in TYPES}
        self._task: asyncio.Task | None = None
        self._call = None
        self._write_lock: asyncio.Lock | None = None
        self._connected = False
        self._error: str | None = None           # why the last stream or attempt failed
        self._restart: str | None = None         # why the client itself ended the stream
        self._synced: asyncio.Event | None = None
        self._lookups: dict[str, list] = {}      # key -> [future, waiters]
        self._sending: set[asyncio.Task] = set()
        self._asked: set[str] = set()            # lookup keys subscribed on the current stream
        self._watcher: asyncio.Task | None = None
        self._delivered = False                  # the current stream delivered a response
        self.streams = 0                         # streams opened (for /config_dump and tests)

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> "XdsClient":
        if self._task is None:
            self._synced = asyncio.Event()
            self._write_lock = asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"xds {self.address}")
        return self

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        owned = [t for t in (*self._sending, self._watcher) if t is not None]
        for t in owned:
            t.cancel()
        await asyncio.gather(*owned, return_exceptions=True)
        self._watcher = None
        for future, _ in self._lookups.values():
            if not future.done():
                future.set_result(False)
        self._lookups.clear()
        self._connected = False
        await self.channels.close()

    # -- state -------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return all(t.acked or not t.expected for t in self._types.values())

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """Until every type readiness waits for has been ACKed once (True), or `timeout`
        seconds (False)."""
        if self.synced:
            return True
        if self._synced is None:
            raise RuntimeError("the xDS client is not started")
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def pending(self) -> list[str]:
        out = []
        for t in self._types.values():
            if t.acked or not t.expected:
                continue
            why = t.error or self._error
            out.append(f"xds: no {_short(t.type_url)} yet" + (f": {why}" if why else
                                                               f": waiting for istiod at {self.address}"))
        return out

    def describe(self) -> dict:
        return {
            "address": self.address,
            "connected": self._connected,
            "onDemand": self.plane.on_demand,
            "synced": self.synced,
            "streams": self.streams,
            "lastError": self._error,
            "types": {t.type_url: {
                "synced": t.acked or not t.expected,
                "lastNonce": t.nonce,
                "responses": t.responses,
                "resources": len(t.held),
                "rejected": dict(sorted(t.rejected.items())),
                "lastError": t.error,
            } for t in self._types.values()},
            "lookups": sorted(self._lookups),
        }

    # -- on demand ---------------------------------------------------------------------------
    async def lookup(self, key: str, timeout: float = LOOKUP_TIMEOUT) -> bool:
        """Ask istiod for the address `key` ("network/ip") and wait until it is in force
        (True), removed or refused (False), or `timeout` seconds pass (False). Lookups of
        one key share one subscription."""
        if self._known(key):
            return True
        if not self.plane.on_demand or self._task is None:
            return False
        entry = self._lookups.get(key)
        if entry is None:
            entry = self._lookups[key] = [asyncio.get_running_loop().create_future(), 0]
            # on a stream that is down, the reconnect claims the key (initial_resource_versions)
            sending = asyncio.get_running_loop().create_task(self._subscribe([key]))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)
        entry[1] += 1
        try:
            return await asyncio.wait_for(asyncio.shield(entry[0]), timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._lookups.get(key) is entry:
                del self._lookups[key]
                # a later lookup of the key asks again (istiod may not have answered this one)
                self._asked.discard(key)

    def _known(self, key: str) -> bool:
        network, sep, ip = key.rpartition("/")
        if not sep:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        view = self.store.view
        return view.workload_at(network, addr) is not None or view.service_at(network, addr) is not None

    def _settle_lookups(self, prepared: _Prepared, refused: dict) -> None:
        if not self._lookups:
            return
        for name, aliases, resource in prepared.named:
            keys = {name, *aliases}
            if resource is not None:
                keys.update(f"{n}/{ip}" for n, ip in _addresses(resource))
            found = resource is not None and name not in refused
            for key in keys & self._lookups.keys():
                future = self._lookups[key][0]
                if not future.done():
                    future.set_result(found)
        for name in prepared.removed:
            entry = self._lookups.get(name)
            if entry is not None and not entry[0].done():
                entry[0].set_result(False)

    # -- the stream --------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF
        while True:
            self.streams += 1
            self._delivered = False
            reason = TERMINATION_ERROR
            try:
                _, why = await self._stream()
                reason = TERMINATION_RECONNECT if self._restart is not None else TERMINATION_COMPLETE
            except asyncio.CancelledError as exc:
                if self._cancelled():
                    raise
                # not this task's cancellation: something under the stream (a store
                # subscriber, a call cancelled by a channel closing) ended it; only close()
                # or a cancel of the task itself may end the client
                why = f"failed: cancelled {exc}" if str(exc) else "failed: cancelled"
            except grpc.aio.AioRpcError as exc:
                why = self._rpc_error(exc)
                reason = _termination(exc, self._delivered)
            except ConfigError as exc:         # the roots or the token cannot be read
                why = str(exc)
            except Exception as exc:           # a bug must not end the proxy's configuration
                log.exception("xds: the stream from istiod at %s failed", self.address)
                why = f"failed: {type(exc).__name__}: {exc}"
            # a stream that delivered, even one that then failed, starts the backoff over
            delivered = self._delivered
            self._connected = False
            self._error = f"istiod at {self.address} {why}"
            if self.telemetry is not None:
                self.telemetry.xds_terminated(reason)
            if delivered or self._restart is not None:
                backoff = INITIAL_BACKOFF
            delay = min(self.max_backoff, backoff) * random.uniform(0.5, 1.0)
            # istiod ends every stream after its maximum connection age (30 min): routine
            routine = delivered and reason in (TERMINATION_RECONNECT, TERMINATION_COMPLETE)
            log.log(logging.INFO if routine else logging.WARNING, "xds: %s; reconnecting in %.2f s", self._error, delay)
            self._restart = None
            await asyncio.sleep(delay)
            backoff = min(self.max_backoff, backoff * 2)

    def _cancelled(self) -> bool:
        """Whether the stream task itself is being cancelled (close(), or its owner)."""
        task = asyncio.current_task()
        return self._task is None or (task is not None and task.cancelling() > 0)

    @staticmethod
    def _rpc_error(exc: grpc.aio.AioRpcError) -> str:
        code, details = exc.code(), exc.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE:
            return f"unreachable: {details}" if details else "unreachable"
        return f"answered {code.name}" + (f": {details}" if details else "")

    def _initial_requests(self) -> list:
        node = dpb.Node(id=self.plane.node_id())
        node.metadata.update(self.plane.node_metadata())
        out = []
        for t in self._types.values():
            req = dpb.DeltaDiscoveryRequest(type_url=t.type_url, node=node)
            # what is in force from us (a refused newer version keeps the older one
            # claimed, so istiod re-sends it, or names it removed if it is gone)
            versions = {name: version for name, (_, version) in t.held.items()}
            if t.type_url == ADDRESS_TYPE and self.plane.on_demand:
                req.resource_names_subscribe.append(WILDCARD)
                req.resource_names_unsubscribe.append(WILDCARD)
                for key in self._lookups:          # asked for, not received: claimed with no version
                    versions.setdefault(key, "")
            req.initial_resource_versions.update(versions)
            out.append(req)
        return out

    async def _subscribe(self, keys) -> None:
        """Subscribe on-demand keys on the stream in force. With none, the next stream's
        initial request claims them; keys the stream has already asked for are skipped."""
        async with self._write_lock:
            call = self._call                # read under the lock: the initial writes set it
            if call is None:
                return
            keys = [k for k in keys if k not in self._asked]
            if not keys:
                return
            self._asked.update(keys)
            try:
                await call.write(dpb.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE, resource_names_subscribe=keys))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                log.debug("xds: a request was not sent (%s); the stream is ending", exc)

    async def _stream(self) -> tuple[bool, str]:
        """One stream, until it ends: (whether it delivered a response, why it ended)."""
        channel = await self.channels.channel()
        multicallable = channel.stream_stream(ADS_METHOD,
                                              request_serializer=dpb.DeltaDiscoveryRequest.SerializeToString,
                                              response_deserializer=None)     # bytes: parsed where it is cheap
        call = multicallable(metadata=self.plane.call_metadata())
        watcher = self._watcher = asyncio.get_running_loop().create_task(self._watch_roots(call))
        delivered = False
        for t in self._types.values():
            t.fresh = True
        try:
            async with self._write_lock:
                # set before the writes, so a lookup made meanwhile waits for the lock and
                # then subscribes on this stream rather than finding no stream at all
                self._call = call
                self._asked = set(self._lookups)
                for request in self._initial_requests():
                    await call.write(request)
            missed = [key for key in self._lookups if key not in self._asked]
            if missed:
                await self._subscribe(missed)
            self._connected = True
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    code = await call.code()
                    if code is not grpc.StatusCode.OK:
                        raise grpc.aio.AioRpcError(code, await call.initial_metadata(),
                                                   await call.trailing_metadata(), await call.details())
                    return delivered, "ended the stream"
                delivered = self._delivered = True
                self._error = None
                await self._respond(call, raw)
        except (asyncio.CancelledError, Exception) as exc:
            # the call cancelled by the roots watcher fails whatever it was doing (a read,
            # an ACK): that is the restart, not a failure; close() or a cancel of the task
            # ends it for good, even when it lands during a restart
            if isinstance(exc, asyncio.CancelledError) and self._cancelled():
                raise
            if self._restart is not None:
                return delivered, self._restart
            raise
        finally:
            self._call = None
            watcher.cancel()
            call.cancel()

    async def _watch_roots(self, call) -> None:
        while True:
            await asyncio.sleep(self.roots_check)
            if self.channels.stale():
                self._restart = f"has new root certificates ({self.plane.xds_roots.describe()})"
                call.cancel()
                return

    # -- one response --------------------------------------------------------------------------
    async def _respond(self, call, raw: bytes) -> None:
        if len(raw) >= OFF_LOOP_BYTES:
            prepared = await asyncio.to_thread(self._prepare, raw)
        else:
            prepared = self._prepare(raw)
        if self.telemetry is not None:
            self.telemetry.xds_message(prepared.type_url, prepared.size)
        t = self._types.get(prepared.type_url)
        if t is None:
            # ACKed as ztunnel does: a NACK would have istiod retry what no handler reads
            log.error("xds: istiod at %s sent %r, a type meshcore did not ask for (nonce %s); ignored",
                      self.address, prepared.type_url, prepared.nonce)
            await self._ack(call, prepared, None)
            return
        t.responses += 1
        if t.fresh:
            # istiod re-sends on a new stream whatever the client does not claim at its
            # version, so earlier refusals it no longer sends (deleted meanwhile) are gone
            t.fresh = False
            t.rejected.clear()
        refused = prepared.refused
        if prepared.changes:
            applied = await self.store.apply_async(self.source, prepared.changes, version=prepared.version)
            if applied.rejected:
                refused = dict(refused)
                for r in applied.rejected:
                    refused[r.key] = r.reason
        if len(prepared.accepted) + len(prepared.removed) >= RECORD_OFF_LOOP:
            await asyncio.to_thread(_gc_paused_call, self._record_held, t, prepared, refused)
        else:
            self._record_held(t, prepared, refused)
        self._record_rejected(t, prepared, refused)
        self._settle_lookups(prepared, refused)
        message = "; ".join(f"{name}: {why}" for name, why in refused.items()) if refused else None
        await self._ack(call, prepared, message)
        t.nonce = prepared.nonce
        if message is None:
            t.acked, t.error = True, None
            if self.synced and not self._synced.is_set():
                self._synced.set()
                log.info("xds: in sync with istiod at %s (%s)", self.address, self._counts())
        else:
            t.error = f"{_short(t.type_url)} NACKed: {message}"
            log.error("xds: refused from istiod at %s (%s, nonce %s): %s", self.address,
                      _short(t.type_url), prepared.nonce, message)

    def _counts(self) -> str:
        return ", ".join(f"{len(t.held)} {_short(t.type_url)}" for t in self._types.values())

    async def _ack(self, call, prepared: _Prepared, message: str | None) -> None:
        request = dpb.DeltaDiscoveryRequest(type_url=prepared.type_url, response_nonce=prepared.nonce)
        if message is not None:
            request.error_detail.code = INVALID_ARGUMENT
            request.error_detail.message = message
        async with self._write_lock:
            await call.write(request)

    def _prepare(self, raw: bytes) -> _Prepared:
        """Parse, decode and turn into store changes. Reads the client's bookkeeping and
        writes none of it: on a worker thread the stream task is waiting for it."""
        with gc_paused():
            response = dpb.DeltaDiscoveryResponse.FromString(raw)
            del raw
            prepared = _Prepared(response)
            prepared.size = sum(len(r.resource.value) for r in response.resources)
            t = self._types.get(response.type_url)
            if t is None:
                return prepared
            held, type_url, source = t.held, t.type_url, self.source
            changes, accepted, refused = prepared.changes, prepared.accepted, prepared.refused
            named = prepared.named if self.plane.on_demand else None
            broken: list = []               # (name, exception): a bug, logged once per response
            for resource in response.resources:
                name = resource.name
                obj = None
                try:
                    obj = decode(type_url, resource, source=source)
                except ResourceError as exc:
                    refused[name] = _reason(exc)
                except Exception as exc:          # refused, not a stream that breaks on every push
                    broken.append((name, exc))
                    refused[name] = f"cannot be decoded: {type(exc).__name__}: {exc}"
                if obj is None:
                    if named is not None:
                        named.append((name, tuple(resource.aliases), None))
                    continue
                kind = kind_of(obj)
                before = held.get(name)
                if before is not None and before[0] is not kind:
                    changes.append(Remove(before[0], name))     # a name that changed kind
                changes.append(Upsert(obj))
                accepted.append((name, kind, resource.version))
                if named is not None:
                    named.append((name, tuple(resource.aliases), obj))
            for name in response.removed_resources:
                before = held.get(name)
                if before is not None:
                    changes.append(Remove(before[0], name))
                prepared.removed.append(name)
            if broken:
                _log_broken(type_url, response.nonce, broken)
            del response
            return prepared

    @staticmethod
    def _record_held(t: _TypeState, prepared: _Prepared, refused: dict) -> None:
        """What is in force from us now, with its version (claimed on reconnect). Only the
        stream task touches `held`, so a large response's runs on a worker thread."""
        held = t.held
        for name, kind, version in prepared.accepted:
            if name not in refused:
                held[name] = (kind, version)
        for name in prepared.removed:
            held.pop(name, None)

    @staticmethod
    def _record_rejected(t: _TypeState, prepared: _Prepared, refused: dict) -> None:
        rejected = t.rejected
        if rejected:
            for name, _, _ in prepared.accepted:
                if name not in refused:
                    rejected.pop(name, None)
            for name in prepared.removed:
                rejected.pop(name, None)
        rejected.update(refused)


def _log_broken(type_url: str, nonce: str, broken: list) -> None:
    """One line for a response's undecodable resources (a push of thousands must not log
    thousands of tracebacks); the first one's traceback for whoever debugs it."""
    shown = ", ".join(repr(name) for name, _ in broken[:BROKEN_NAMES])
    more = f" and {len(broken) - BROKEN_NAMES} more" if len(broken) > BROKEN_NAMES else ""
    name, first = broken[0]
    log.error("xds: %d %s resource(s) of nonce %s could not be decoded: %s%s (first: %s: %s)",
              len(broken), _short(type_url), nonce, shown, more, type(first).__name__, first)
    log.debug("xds: %s %r could not be decoded", _short(type_url), name, exc_info=first)


def _gc_paused_call(fn, *args):
    with gc_paused():
        return fn(*args)


def _addresses(resource):
    """(network, ip) pairs an on-demand key can name: a workload's IPs, a service's VIPs."""
    ips = getattr(resource, "ips", None)
    if ips is not None:
        return [(resource.network, ip) for ip in ips]
    return list(getattr(resource, "vips", ()))
