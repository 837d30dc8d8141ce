"""`WaypointProxy`: the waypoint mode, wired from the same pieces as the node proxy.

    config files ─► FileSource ─► MeshStore (layer l7: policies keep their L7 rules)
    peer node ─mTLS─► 15008 WaypointTunnels (the waypoint workload's address, its identity)
                        ├ HTTP/1.1 ─► Http1Handler: policies, an endpoint ─► HbonePool (waypoint identity) ─► endpoint :15008
                        ├ HTTP/2   ─► Http2Handler: the same per request
                        │             (the backend in the HTTP version its port declares, else the client's;
                        │              Http2Upstreams: one HTTP/2 connection per endpoint)
                        └ other, or a port declared tcp/tls ─► one tunnel to an endpoint, spliced
    15000 admin · 15020 metrics · 15021 readiness (HttpEndpoints)

The waypoint's own workload (by --name and --namespace: the workload of that name, or
the one whose service account is the name, as Istio names a waypoint's pods and service
account after its Gateway) gives its address and identity.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from meshcore.config.listen import listeners
from meshcore.errors import ConfigError, ListenerError
from meshcore.identity.issuers import choose_issuer
from meshcore.identity.store import CertificateStore
from meshcore.node.admin import (HttpEndpoints, ProxyProcess, logging_route, metrics_route, quit_route, ready_route,
                                 start_endpoints)
from meshcore.node.certificates import LocalCertificates
from meshcore.node.context import ProxyContext, ProxySettings, hbone_pool
from meshcore.node.metrics import NodeMetrics
from meshcore.node.netaddr import SourceBinder
from meshcore.node.telemetry import Telemetry
from meshcore.sources.files import FileSource
from meshcore.state.model import Workload
from meshcore.state.store import MeshStore
from meshcore.state.view import MeshView
from meshcore.waypoint.http import Http1Handler
from meshcore.waypoint.http2 import Http2Handler
from meshcore.waypoint.ratelimits import RequestLimits
from meshcore.waypoint.telemetry import RequestMetrics
from meshcore.waypoint.tunnels import WaypointTunnels
from meshcore.waypoint.endpoints import EndpointPicker
from meshcore.waypoint.mirrors import Mirrors
from meshcore.waypoint.upstreams import Http1Upstreams, Http2Upstreams

log = logging.getLogger("meshcore.waypoint")

DEFAULT_LISTEN = {"inbound": ("waypoint", 15008), "admin": ("127.0.0.1", 15000), "metrics": ("", 15020),
                  "readiness": ("", 15021)}


@dataclass
class WaypointOptions:
    name: str
    namespace: str
    config_paths: tuple[str, ...] = ()
    inline_config: str | None = None
    address: str = "127.0.0.1"
    listen: dict = field(default_factory=dict)
    ca_dir: str | None = None
    cert_dir: str | None = None
    state_dir: str | None = None
    trust_domain: str = "cluster.local"
    connect_timeout: float = 10.0
    drain_deadline: float = 5.0
    reload_interval: float = 1.0
    root_namespace: str = "istio-system"
    # a CA directory or the built-in CA signs in a helper process: cryptography and the
    # CA key stay out of the waypoint (the command sets it; in-process users need not)
    ca_helper_process: bool = False
    # the start-up heap frozen for the cyclic collector (ProxyProcess.freeze_startup_heap):
    # the command sets it; an in-process user's heap is the user's
    freeze_startup: bool = False

    def listeners(self) -> dict:
        return listeners(DEFAULT_LISTEN, self.listen, self.address)


def own_workload(state: MeshView, namespace: str, name: str) -> Workload | None:
    """The waypoint's workload: named `name` in `namespace`, else (Istio's naming) one whose
    service account is `name`."""
    candidates = [w for w in state.workloads if w.namespace == namespace]
    return (next((w for w in candidates if w.name == name), None)
            or next((w for w in candidates if w.service_account == name), None))


class WaypointProxy(ProxyProcess):
    log = log

    def __init__(self, options: WaypointOptions):
        from meshcore import __version__
        self.options, self.version = options, __version__
        self.listen = options.listeners()
        self.store = MeshStore(root_namespace=options.root_namespace, layer="l7")
        self.files = FileSource(self.store, options.config_paths, options.inline_config)
        self.metrics = NodeMetrics(self.version)
        self.issuer, self.trust_domain = choose_issuer(ca_dir=options.ca_dir, cert_dir=options.cert_dir,
                                                       state_dir=options.state_dir, trust_domain=options.trust_domain,
                                                       helper_process=options.ca_helper_process)
        self.certs = CertificateStore(self.issuer)
        self.pool = hbone_pool(self.certs)
        settings = ProxySettings(node_name=f"waypoint {options.namespace}/{options.name}",
                                 trust_domain=self.trust_domain, connect_timeout=options.connect_timeout,
                                 drain_deadline=options.drain_deadline,
                                 proxy_ports=frozenset({self.listen["inbound"][1]} if self.listen["inbound"] else ()))
        self.ctx = ProxyContext(settings, self.store, self.certs, Telemetry(self.metrics), SourceBinder(False),
                                self.pool)
        self.certificates = LocalCertificates(self.ctx, identities=self._identities)
        self.requests = RequestMetrics(self.metrics.registry)
        # the local rate limits the request handlers check once a route is decided
        self.rate_limits = RequestLimits()
        self.rate_limits.subscribe(self.store)
        self.tunnels = WaypointTunnels(self.ctx, self.workload, listen=self.listen["inbound"],
                                       name=(options.namespace, options.name))
        # one HTTP/2 connection per endpoint, whichever version the clients speak
        http2_upstreams = Http2Upstreams(self.tunnels)
        http1_upstreams = Http1Upstreams(self.tunnels, response_timeout=Http2Handler.RESPONSE_TIMEOUT,
                                         body_timeout=Http2Handler.BODY_IDLE_TIMEOUT)
        self.mirrors = Mirrors(self.tunnels, http1_upstreams, http2_upstreams, registry=self.metrics.registry)
        # one balancing state per backend (load balancer, outlier ejection), whichever HTTP the clients speak
        endpoints = EndpointPicker()
        self.tunnels.http1 = Http1Handler(self.ctx, self.tunnels, self.requests, (options.namespace, options.name),
                                          http2_upstreams=http2_upstreams, endpoints=endpoints,
                                          rate_limits=self.rate_limits, mirrors=self.mirrors)
        self.tunnels.http2 = Http2Handler(self.ctx, self.tunnels, self.requests, (options.namespace, options.name),
                                          http2_upstreams=http2_upstreams, http1_upstreams=http1_upstreams,
                                          endpoints=endpoints, rate_limits=self.rate_limits, mirrors=self.mirrors)
        self.endpoints: list[HttpEndpoints] = []
        self.loaded_at = 0.0
        self.stopped = asyncio.Event()
        self._watcher: asyncio.Task | None = None
        self._draining: asyncio.Future | None = None
        self._background: set[asyncio.Task] = set()

    def workload(self, state: MeshView) -> Workload | None:
        return own_workload(state, self.options.namespace, self.options.name)

    def _identities(self, state: MeshView) -> set:
        me = self.workload(state)
        return {me.identity} if me is not None else set()

    # -- life -------------------------------------------------------------------------
    async def start(self) -> "WaypointProxy":
        await self.files.reload()
        self.loaded_at = time.time()
        o = self.options
        if self.workload(self.store.view) is None:
            raise ConfigError(f"no workload for waypoint {o.namespace}/{o.name}: the configuration needs the "
                              f"waypoint's own workload (name {o.name!r}, or service account {o.name!r}, in "
                              f"namespace {o.namespace!r}) for its address and identity", source="meshcore waypoint")
        if o.freeze_startup:
            self.freeze_startup_heap()
        metrics = metrics_route(self.metrics)
        routes = {"admin": {"/config_dump": self._config_dump, "/logging": logging_route,
                            "/quitquitquit": quit_route(self.spawn, self.drain)},
                  "metrics": {"/metrics": metrics, "/stats/prometheus": metrics},
                  "readiness": {"/healthz/ready": ready_route(self.pending)}}
        try:
            await self.certificates.start()
            await self.tunnels.start()
            await start_endpoints(routes, self.listen, self.endpoints)
        except ListenerError:
            await self.drain(quiet=True)
            raise
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        me = self.workload(self.store.view)
        log.info("waypoint %s/%s ready (identity %s): %s", o.namespace, o.name, me.identity, ", ".join(
            f"{n} {a[0]}:{a[1]}" for n, a in ((n, self.tunnels.address(self.store.view) if n == "inbound" else a)
                                             for n, a in self.listen.items()) if a is not None))
        return self

    def applied(self, reason: str, applied) -> None:
        log.info("configuration %s applied (%s)", self.store.view.version, reason)

    def pending(self) -> list[str]:
        out = []
        if self.workload(self.store.view) is None:
            out.append("waypoint workload")
        if self.certificates.missing:
            out.append("certificates")
        if self.listen["inbound"] is not None and self.tunnels.server is None:
            out.append("listeners")
        return out

    async def drain(self, quiet: bool = False) -> None:
        """Stop accepting, GOAWAY every HBONE connection, let requests and tunnels finish
        until the drain deadline. Once: a second call waits for the first."""
        if self._draining is not None:
            await asyncio.shield(self._draining)
            return
        self._draining = asyncio.get_running_loop().create_future()
        try:
            if not quiet:
                log.info("draining (deadline %g s)", self.options.drain_deadline)
            if self._watcher is not None:
                self._watcher.cancel()
            await self.store.settled()
            await self.certificates.close()
            await self.certs.close()
            for e in self.endpoints:
                await e.close()
            await asyncio.gather(self.tunnels.drain(self.options.drain_deadline),
                                 self.mirrors.drain(self.options.drain_deadline),
                                 *(c.drain(self.options.drain_deadline) for c in self.pool.connections),
                                 return_exceptions=True)
            await self.pool.close()
            self.stopped.set()
        finally:
            self._draining.set_result(None)

    # -- HTTP endpoints ------------------------------------------------------------------
    def _config_dump(self, method, query):
        from meshcore.node.dump import policy, service, waypoint_rate_limits, waypoint_traffic, workload
        state, me = self.store.view, self.workload(self.store.view)
        from meshcore.waypoint.tunnels import uses_waypoint
        served = [s for s in state.services if me is not None and uses_waypoint(s.waypoint, me, state)]
        dump = {"waypoint": {"name": self.options.name, "namespace": self.options.namespace,
                             "workload": workload(me) if me else None,
                             "identity": me.identity.uri if me else None},
                "services": [service(s, state) for s in served],
                "policies": [policy(p, state.root_namespace) for p in state.policies],
                **waypoint_traffic(state, served, self.options.namespace),
                "rateLimits": waypoint_rate_limits(state, (self.options.namespace, self.options.name), served),
                "version": self.version, "configVersion": state.version}
        return 200, "application/json", json.dumps(dump, indent=2).encode()
