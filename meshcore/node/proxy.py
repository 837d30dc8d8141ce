"""`NodeProxy`: the per-node data plane, composed of the shell's pieces.

    config files ─► FileSource ─┐
                   (reload: file change, SIGHUP)
    istiod ───────► XdsClient ──┴─► MeshStore (views + compiled policies) ─► subscribers:
                   (delta ADS)                          listeners, certificates, revocation
    certificates ◄─ built-in CA, --ca-dir, --cert-dir, or the Istio CA (IstioCaClient)
    15001 capture ─┐                                     ┌─ 15008 HBONE (per local workload address)
    15080 SOCKS5 ──┴─ Outbound ─ route() ─ HbonePool ──► │  Inbound ─ policy ─ local workload
                                   └─ plain TCP          └─ 15006 plaintext (PERMISSIVE peers)
    15000 admin · 15020 metrics · 15021 readiness (HttpEndpoints)

Each component takes the shared context (node/context.py), owns its listeners and
follows the store by subscription; the proxy only wires them, and drain() ends them all.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field

from meshcore.config.listen import listeners
from meshcore.errors import ConfigError, ListenerError
from meshcore.identity.spiffe import SpiffeId
from meshcore.identity.issuers import choose_issuer
from meshcore.identity.store import CertificateStore
from meshcore.node import debug
from meshcore.node.admin import (HttpEndpoints, ProxyProcess, logging_route, metrics_route, quit_route, ready_route,
                                 start_endpoints, text)
from meshcore.node.certificates import LocalCertificates
from meshcore.node.context import ProxyContext, ProxySettings, hbone_pool
from meshcore.node.dump import config_dump
from meshcore.node.inbound import Inbound
from meshcore.node.metrics import NodeMetrics
from meshcore.node.netaddr import SourceBinder
from meshcore.node.outbound import Outbound
from meshcore.node.telemetry import Telemetry
from meshcore.sources.files import FileSource
from meshcore.state.store import MeshStore

log = logging.getLogger("meshcore.node")

# listener name -> (host, port); "workloads" as the inbound host means one listener on
# each local workload's address (as in a pod's own network namespace)
DEFAULT_LISTEN = {"outbound": ("", 15001), "inbound-plaintext": ("", 15006), "inbound": ("workloads", 15008),
                  "socks5": ("127.0.0.1", 15080), "admin": ("127.0.0.1", 15000), "metrics": ("", 15020),
                  "readiness": ("", 15021)}


@dataclass
class NodeOptions:
    node_name: str = ""                         # "": every workload is this node's (ztunnel without NODE_NAME)
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
    # a process of its own (meshcore node): the configuration loaded at start-up is kept
    # out of the cyclic GC's scans; not for a proxy sharing a process with other work
    freeze_startup: bool = False
    # a CA directory (--ca-dir, or the built-in CA) signs in a helper process that exits
    # when idle (identity/helper.py): the proxy never loads cryptography for it (~10 MB)
    ca_helper_process: bool = False
    # (namespace, service account) of the proxy's own identity (ztunnel's, from POD_NAMESPACE
    # and SERVICE_ACCOUNT): its certificate is held beside the local workloads'
    own_identity: tuple[str, str] | None = None
    # istiod and its CA (meshcore.xds.settings.ControlPlane), or None: files and local certificates only
    control_plane: object = None

    def listeners(self) -> dict:
        return listeners(DEFAULT_LISTEN, self.listen, self.address)

    def settings(self, trust_domain: str) -> ProxySettings:
        """What the components share, from these options."""
        listen = self.listeners()
        listener_ips = set()
        for address in listen.values():
            try:
                ip = ipaddress.ip_address(address[0]) if address else None
            except ValueError:
                continue                       # "workloads": the local workloads' addresses
            if ip is not None and not ip.is_unspecified:
                listener_ips.add(ip)
        traffic = ("outbound", "inbound-plaintext", "inbound", "socks5")
        own = SpiffeId(trust_domain, *self.own_identity) if self.own_identity else None
        return ProxySettings(node_name=self.node_name, network=self.network, trust_domain=trust_domain,
                             connect_timeout=self.connect_timeout, drain_deadline=self.drain_deadline,
                             proxy_ports=frozenset(a[1] for n, a in listen.items() if a is not None and n in traffic),
                             listener_ips=frozenset(listener_ips), own_identity=own)


class NodeProxy(ProxyProcess):
    """Wiring: the mesh store and its file source, the shared context, the components
    (certificates, inbound, outbound, HTTP endpoints), signals and admin routes."""
    log = log

    def __init__(self, options: NodeOptions):
        from meshcore import __version__
        self.options = options
        self.version = __version__
        self.node_name = options.node_name
        self.listen = options.listeners()
        self.store = MeshStore(root_namespace=options.root_namespace)
        self.files = FileSource(self.store, options.config_paths, options.inline_config)
        self.loaded_at = 0.0
        self.metrics = NodeMetrics(self.version)
        plane = options.control_plane
        self.xds = None
        if plane is not None and plane.xds_address:
            from meshcore.xds.client import XdsClient
            self.xds = XdsClient(plane, self.store, telemetry=self.metrics)
        self.issuer, self.trust_domain = self._issuer()
        self.certs = CertificateStore(self.issuer)
        self.pool = hbone_pool(self.certs)
        settings = options.settings(self.trust_domain)
        self.ctx = ProxyContext(settings, self.store, self.certs, Telemetry(self.metrics),
                                SourceBinder(options.preserve_source), self.pool,
                                lookup=self.xds.lookup if self.xds is not None and plane.on_demand else None)
        self.certificates = LocalCertificates(self.ctx)
        self.inbound = Inbound(self.ctx, hbone=self.listen["inbound"], plaintext=self.listen["inbound-plaintext"])
        self.outbound = Outbound(self.ctx, capture=self.listen["outbound"], socks5=self.listen["socks5"])
        self.endpoints: list[HttpEndpoints] = []
        self.stopped = asyncio.Event()
        self._watcher: asyncio.Task | None = None
        self._draining: asyncio.Future | None = None
        self._background: set[asyncio.Task] = set()    # reloads and drains that signals started

    # -- identity ---------------------------------------------------------------------
    def _issuer(self):
        o = self.options
        return choose_issuer(ca_dir=o.ca_dir, cert_dir=o.cert_dir, state_dir=o.state_dir,
                             trust_domain=o.trust_domain, control_plane=o.control_plane,
                             own_identity=SpiffeId(o.trust_domain, *o.own_identity) if o.own_identity else None,
                             helper_process=o.ca_helper_process)

    # -- configuration ------------------------------------------------------------------
    def applied(self, reason: str, applied) -> None:
        view = self.store.view
        log.info("configuration %s applied (%s): %d workloads, %d services, %d policies; %s", view.version, reason,
                 len(view.by_uid), len(view.by_service_key), len(view.policy_by_key),
                 ", ".join(f"{len(keys)} {kind} changed" for kind, keys in applied.changed.items()) or "no change")

    def pending(self) -> list[str]:
        """What keeps the node from being ready."""
        out = []
        if not self.loaded_at:
            out.append("config")
        if self.xds is not None:
            out.extend(self.xds.pending())
        if self.certificates.missing:
            out.append("certificates")
        if self.inbound.unbound:
            out.append("listeners")
        return out

    # -- life -----------------------------------------------------------------------------
    async def start(self) -> "NodeProxy":
        """Load the configuration and open every listener; ConfigError or ListenerError
        (with what and where) if that cannot be done."""
        await self.files.reload()
        self.loaded_at = time.time()
        if self.xds is not None:
            await self.xds.start()
        if self.options.freeze_startup:
            self.freeze_startup_heap()
        listen = self.listen
        metrics = metrics_route(self.metrics)
        routes = {"admin": {"/config_dump": self._config_dump, "/logging": logging_route,
                            "/quitquitquit": quit_route(self.spawn, self.drain), "/debug/pprof/profile": self._profile,
                            "/debug/tasks": self._tasks_dump, "/debug/holdings": self._holdings, "/": self._index},
                  "metrics": {"/metrics": metrics, "/stats/prometheus": metrics},
                  "readiness": {"/healthz/ready": ready_route(self.pending)}}
        try:
            await self.certificates.start()
            await self.inbound.start()
            await self.outbound.start()
            await start_endpoints(routes, listen, self.endpoints)
        except (ListenerError, ConfigError):
            await self.drain(quiet=True)           # nothing was served: no "draining" before the error
            raise
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        log.info("node %s ready: %s", self.node_name or "(unnamed: every workload is local)", ", ".join(
            f"{n} {a[0]}:{a[1]}" for n, a in listen.items() if a is not None))
        return self

    async def drain(self, quiet: bool = False) -> None:
        """Stop accepting, GOAWAY every HBONE connection, let tunnels and connections
        finish until the drain deadline, then end what is left. Once: a second call (a
        signal and /quitquitquit together) waits for the first."""
        if self._draining is not None:
            await asyncio.shield(self._draining)
            return
        self._draining = asyncio.get_running_loop().create_future()
        try:
            await self._drain(quiet)
        finally:
            self._draining.set_result(None)

    async def _drain(self, quiet: bool) -> None:
        deadline = self.options.drain_deadline
        if not quiet:
            log.info("draining (deadline %g s)", deadline)
        if self._watcher is not None:
            self._watcher.cancel()
        if self.xds is not None:
            await self.xds.close()
        await self.store.settled()                 # a reload under way finishes first
        await self.certificates.close()
        await self.certs.close()                   # its requests use the issuer's channel
        close_issuer = getattr(self.issuer, "close", None)
        if close_issuer is not None:
            await close_issuer()
        for e in self.endpoints:
            await e.close()
        await asyncio.gather(self.inbound.drain(deadline), self.outbound.drain(deadline),
                             *(conn.drain(deadline) for conn in self.pool.connections), return_exceptions=True)
        await self.outbound.close()
        await self.pool.close()
        await self.inbound.close()
        self.stopped.set()

    def describe_config(self) -> dict:
        o = self.options
        return {"nodeName": self.node_name, "network": o.network, "trustDomain": self.trust_domain,
                "configPaths": list(o.config_paths), "inlineConfig": bool(o.inline_config),
                "listeners": {n: (f"{a[0]}:{a[1]}" if a else None) for n, a in self.listen.items()},
                "connectTimeout": o.connect_timeout, "drainDeadline": o.drain_deadline,
                "preserveSourceAddress": o.preserve_source, "configVersion": self.store.view.version,
                "xdsAddress": o.control_plane.xds_address if o.control_plane else None,
                "caAddress": o.control_plane.ca_address if o.control_plane else None,
                "configGeneration": self.store.view.generation,
                "configLoaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}

    # -- HTTP endpoints ----------------------------------------------------------------
    def _config_dump(self, method, query):
        return 200, "application/json", json.dumps(config_dump(self), indent=2).encode()

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
