"""`NodeProxy`: the per-node data plane, composed of the shell's pieces.

    config files ─► FileSource ─► MeshStore (views + compiled policies) ─► subscribers:
                   (reload: file change, SIGHUP)        listeners, certificates, revocation
    15001 capture ─┐                                     ┌─ 15008 HBONE (per local workload address)
    15080 SOCKS5 ──┴─ Outbound ─ route() ─ HbonePool ──► │  Inbound ─ policy ─ local workload
                                   └─ plain TCP          └─ 15006 plaintext (PERMISSIVE peers)
    15000 admin · 15020 metrics · 15021 readiness (HttpEndpoints)

Every listener and connection belongs to the proxy; drain() ends them all.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshcore.aio.client import dial
from meshcore.aio.pool import HbonePool, PoolKey
from meshcore.errors import ConfigError, IdentityError, ListenerError
from meshcore.identity.ca import CertificateAuthority
from meshcore.identity.store import CertificateStore, CredentialDirectories
from meshcore.node import debug, logs
from meshcore.node.admin import HttpEndpoints, text
from meshcore.node.dump import config_dump
from meshcore.node.inbound import Inbound
from meshcore.node.metrics import NodeMetrics
from meshcore.node.netaddr import SourceBinder
from meshcore.node.outbound import Outbound
from meshcore.node.record import ConnectionRecord
from meshcore.sources.files import FileSource
from meshcore.state.changes import Kind
from meshcore.state.store import MeshStore, StateChange

log = logging.getLogger("meshcore.node")

# listener name -> (host, port); "workloads" as the inbound host means one listener on
# each local workload's address (as in a pod's own network namespace)
DEFAULT_LISTEN = {"outbound": ("", 15001), "inbound-plaintext": ("", 15006), "inbound": ("workloads", 15008),
                  "socks5": ("127.0.0.1", 15080), "admin": ("127.0.0.1", 15000), "metrics": ("", 15020),
                  "readiness": ("", 15021)}


@dataclass
class NodeOptions:
    node_name: str = "local"
    config_paths: tuple[str, ...] = ()
    inline_config: str | None = None
    address: str = "127.0.0.1"                 # where listeners without an explicit host bind
    listen: dict = field(default_factory=dict)  # name -> (host, port) or None (off)
    ca_dir: str | None = None
    cert_dir: str | None = None                # certificate files per workload (cert-manager, SPIRE)
    state_dir: str | None = None
    trust_domain: str = "cluster.local"
    network: str = ""
    connect_timeout: float = 10.0
    drain_deadline: float = 5.0
    preserve_source: bool = True
    reload_interval: float = 1.0
    root_namespace: str = "istio-system"       # Istio's meshConfig.rootNamespace

    def listeners(self) -> dict:
        out = {}
        for name, (host, port) in DEFAULT_LISTEN.items():
            value = self.listen.get(name, (host or self.address, port))
            if value is not None and value[0] == "":
                value = (self.address, value[1])
            out[name] = value
        return out


def default_state_dir() -> Path:
    """Where the built-in CA lives without --state-dir or $MESHCORE_STATE_DIR: the XDG
    state directory ($XDG_STATE_HOME/meshcore, else ~/.local/state/meshcore), never the
    directory the node happens to start in (a checkout, where a CA key could be committed)."""
    base = os.environ.get("XDG_STATE_HOME")
    return (Path(base) if base else Path.home() / ".local" / "state") / "meshcore"


class NodeProxy:
    def __init__(self, options: NodeOptions):
        from meshcore import __version__
        self.options = options
        self.version = __version__
        self.node_name = options.node_name
        self.network = options.network
        self.networks = (options.network, "") if options.network else ("",)
        self.listen = options.listeners()
        self.listen_ports = frozenset(a[1] for n, a in self.listen.items()
                                      if a is not None and n in ("outbound", "inbound-plaintext", "inbound", "socks5"))
        self.own_addresses = frozenset()          # refused as destinations on the proxy's ports
        self.connect_timeout = options.connect_timeout
        self.drain_deadline = options.drain_deadline
        self.binder = SourceBinder(options.preserve_source)
        self.store = MeshStore(root_namespace=options.root_namespace)
        self.files = FileSource(self.store, options.config_paths, options.inline_config)
        self.loaded_at = 0.0
        self.metrics = NodeMetrics(self.version)
        self.issuer, self.trust_domain = self._issuer()
        self.certs = CertificateStore(self.issuer)
        self.pool = HbonePool(self._connect)
        self.inbound = Inbound(self)
        self.outbound = Outbound(self)
        self.endpoints: list[HttpEndpoints] = []
        self.pending = {"config", "certificates", "listeners"}
        self.stopped = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # -- identity ---------------------------------------------------------------------
    def _issuer(self):
        """Where workload certificates come from, and the trust domain: files written by
        cert-manager or a SPIRE agent (--cert-dir), a CA (--ca-dir), or the built-in CA."""
        o = self.options
        if o.cert_dir:
            files = CredentialDirectories(o.cert_dir)
            if files.bundle is None:
                raise IdentityError(f"{o.cert_dir}: no trust bundle (ca.crt, svid_bundle.pem or root-cert.pem) "
                                    "beside the certificates")
            domains = {i.trust_domain for i in files.identities}
            if len(domains) != 1:
                raise IdentityError(f"{o.cert_dir}: certificates of several trust domains ({', '.join(sorted(domains))})")
            return files, domains.pop()
        ca = self._certificate_authority()
        return ca, ca.trust_domain

    def _certificate_authority(self) -> CertificateAuthority:
        o = self.options
        if o.ca_dir:
            return CertificateAuthority.load(o.ca_dir)
        state = Path(o.state_dir or os.environ.get("MESHCORE_STATE_DIR") or default_state_dir())
        ca_dir = state / "ca"
        if (ca_dir / "ca-cert.pem").exists():
            return CertificateAuthority.load(ca_dir)
        ca = CertificateAuthority.create(o.trust_domain)
        ca.save(ca_dir)
        log.info("created a built-in CA for trust domain %s in %s", o.trust_domain, ca_dir)
        return ca

    def _issue_local(self) -> None:
        """Rotate what is due (and pick up certificate files written meanwhile), then
        make sure every local workload has a certificate; readiness says if one has not."""
        try:
            rotated = self.certs.rotate_due()
        except IdentityError as exc:
            log.error("certificates: %s (the previous ones stay in use)", exc)
        else:
            if rotated:
                log.info("rotated certificates of %s", ", ".join(map(str, rotated)))
        failed = []
        for w in self.store.view.local_workloads(self.node_name):
            if w.meshed:
                try:
                    self.certs.credentials(w.identity)
                except IdentityError as exc:
                    failed.append(f"{w.identity}: {exc}")
        if failed:
            log.error("no certificate for %s", "; ".join(failed))
            self.pending.add("certificates")
        else:
            self.pending.discard("certificates")

    async def _connect(self, key: PoolKey):
        host, port = key.destination
        return await dial(host, port, self.certs.client_context(key.source_identity), key.expected,
                          local_addr=(key.source_ip, 0) if key.source_ip else None)

    # -- configuration ------------------------------------------------------------------
    async def reload(self, reason: str) -> bool:
        """Read the configuration and certificate files again and put what changed in
        force; a refused configuration keeps the one in force (logged and counted)."""
        self._issue_local()
        try:
            applied = await self.files.reload()
        except ConfigError as exc:
            self.metrics.config_reloads.labels("refused").inc()
            log.error("configuration refused (%s), the previous one stays in force: %s", reason, exc)
            return False
        self.metrics.config_reloads.labels("applied").inc()
        view = self.store.view
        log.info("configuration %s applied (%s): %d workloads, %d services, %d policies; %s", view.version, reason,
                 len(view.by_uid), len(view.by_service_key), len(view.policy_by_key),
                 ", ".join(f"{len(keys)} {kind} changed" for kind, keys in applied.changed.items()) or "no change")
        return True

    async def _on_change(self, change: StateChange) -> None:
        """A change is in force: listeners, certificates and own addresses follow the
        local workloads; tunnels the new policies deny end."""
        self.loaded_at = time.time()
        if change.keys(Kind.WORKLOAD):
            await self._reconcile()
        ended = self.inbound.revoke(change.new)
        if ended:
            log.info("%d tunnels no longer allowed were closed", ended)

    async def _reconcile(self) -> None:
        self._issue_local()
        own = set()
        for address in self.listen.values():
            try:
                ip = ipaddress.ip_address(address[0]) if address else None
            except ValueError:
                continue                       # "workloads": the local workloads' addresses, below
            if ip is not None and not ip.is_unspecified:
                own.add(ip)
        own.update(ip for w in self.store.view.local_workloads(self.node_name) for ip in w.ips)
        self.own_addresses = frozenset(own)
        if await self.inbound.sync(self.store.view):
            self.pending.add("listeners")
        else:
            self.pending.discard("listeners")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_interval)
            if self.files.changed_on_disk():
                await self.reload("files changed")

    async def _rotate(self) -> None:
        while True:
            await asyncio.sleep(30)
            self._issue_local()

    # -- life -----------------------------------------------------------------------------
    async def start(self) -> "NodeProxy":
        """Load the configuration and open every listener; ConfigError or ListenerError
        (with what and where) if that cannot be done."""
        await self.files.reload()
        self.loaded_at = time.time()
        self.pending.discard("config")
        listen = self.listen
        await self._reconcile()
        self.store.subscribe(self._on_change, (Kind.WORKLOAD, Kind.AUTHORIZATION_POLICY, Kind.PEER_AUTHENTICATION))
        routes = {"admin": {"/config_dump": self._config_dump, "/logging": self._logging,
                            "/quitquitquit": self._quit, "/debug/pprof/profile": self._profile,
                            "/debug/tasks": self._tasks_dump, "/debug/holdings": self._holdings, "/": self._index},
                  "metrics": {"/metrics": self._metrics, "/stats/prometheus": self._metrics},
                  "readiness": {"/healthz/ready": self._ready}}
        try:
            for name in ("inbound-plaintext", "outbound", "socks5", *routes):
                if listen[name] is None:
                    continue
                if name == "inbound-plaintext":
                    await self.inbound.start_plaintext(listen[name])
                elif name in ("outbound", "socks5"):
                    await self.outbound.start(name, listen[name])
                else:
                    self.endpoints.append(await HttpEndpoints(routes[name]).start(*listen[name]))
        except OSError as exc:
            await self.drain(quiet=True)           # nothing was served: no "draining" before the error
            host, port = listen[name]
            hint = " (is another meshcore node or ztunnel running?)" if exc.errno == errno.EADDRINUSE else ""
            reason = os.strerror(exc.errno) if exc.errno else str(exc)     # uvloop's own text names the address again
            raise ListenerError(f"cannot listen for {name} on {host}:{port}: {reason}{hint}") from None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._rotate())]
        log.info("node %s ready: %s", self.node_name, ", ".join(
            f"{n} {a[0]}:{a[1]}" for n, a in listen.items() if a is not None))
        return self

    async def drain(self, quiet: bool = False) -> None:
        """Stop accepting, GOAWAY every HBONE connection, let tunnels finish until the
        drain deadline, then end what is left."""
        if not quiet:
            log.info("draining (deadline %.0f s)", self.drain_deadline)
        for task in self._tasks:
            task.cancel()
        for e in self.endpoints:
            await e.close()
        for server in (self.outbound.capture, self.outbound.socks):
            if server is not None:
                server.close()
        deadline = time.monotonic() + self.drain_deadline
        inbound = asyncio.ensure_future(self.inbound.close(self.drain_deadline))
        for conn in self.pool.connections:
            asyncio.ensure_future(conn.drain(self.drain_deadline))
        while self.outbound.relay.splices and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.outbound.close()
        await self.pool.close()
        await inbound
        self.stopped.set()

    # -- telemetry ---------------------------------------------------------------------
    def finished(self, record: ConnectionRecord, splice) -> None:
        """A relayed connection ended: its bytes, metrics and access-log line."""
        record.finish_relay(splice)
        self.metrics.closed_connection(record)
        logs.access(record)

    def describe_config(self) -> dict:
        o = self.options
        return {"nodeName": self.node_name, "network": self.network, "trustDomain": self.trust_domain,
                "configPaths": list(o.config_paths), "inlineConfig": bool(o.inline_config),
                "listeners": {n: (f"{a[0]}:{a[1]}" if a else None) for n, a in self.listen.items()},
                "connectTimeout": o.connect_timeout, "drainDeadline": o.drain_deadline,
                "preserveSourceAddress": o.preserve_source, "configVersion": self.store.view.version,
                "configGeneration": self.store.view.generation,
                "configLoaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}

    # -- HTTP endpoints ----------------------------------------------------------------
    def _config_dump(self, method, query):
        return 200, "application/json", json.dumps(config_dump(self), indent=2).encode()

    def _logging(self, method, query):
        if method != "POST":
            return text(405, "POST /logging?level=<level> (trace, debug, info, warn, error, off; "
                             "or target=level,... such as access=warn,info)\n")
        level = (query.get("level") or [""])[0]
        try:
            logs.set_level(level)
        except ValueError as exc:
            return text(400, f"{exc}\n")
        return text(200, f"current log level is {level}\n")

    def _quit(self, method, query):
        if method != "POST":
            return text(405, "POST /quitquitquit to drain and exit\n")
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.drain()))
        return text(200, "shutdown now\n")

    def _index(self, method, query):
        return text(200, "meshcore node admin: /config_dump, POST /logging?level=..., POST /quitquitquit, "
                         "/debug/pprof/profile?seconds=N (collapsed stacks), /debug/tasks, /debug/holdings\n")

    async def _profile(self, method, query):
        try:
            seconds = float((query.get("seconds") or ["5"])[0])
        except ValueError:
            return text(400, "seconds must be a number\n")
        return text(200, await debug.profile(seconds))

    def _tasks_dump(self, method, query):
        return 200, "application/json", json.dumps(debug.tasks(), indent=2).encode()

    def _holdings(self, method, query):
        return 200, "application/json", json.dumps(debug.holdings(self), indent=2).encode()

    def _metrics(self, method, query):
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.exposition()

    def _ready(self, method, query):
        if self.pending:
            return text(500, f"not ready, pending: {', '.join(sorted(self.pending))}\n")
        return text(200, "ready\n")
