"""`meshcore waypoint`: run the L7 proxy of the mesh until SIGTERM (drain, exit 0); SIGHUP reloads."""
from __future__ import annotations

import argparse
import logging

from meshcore.config.listen import listen_type
from meshcore.errors import ConfigError
from meshcore.node.admin import run_event_loop, serve_until_stopped
from meshcore.policy.istio import ROOT_NAMESPACE
from meshcore.waypoint.proxy import DEFAULT_LISTEN, WaypointOptions

log = logging.getLogger("meshcore.waypoint")

EPILOG = """listeners (--listen NAME=HOST:PORT, or NAME=off):
  inbound    15008  HBONE from node proxies; host "waypoint" = the waypoint workload's address
  admin      15000  /config_dump, POST /logging?level=, POST /quitquitquit
  metrics    15020  /metrics and /stats/prometheus
  readiness  15021  /healthz/ready
A listener without a host binds --address.

configuration: what the node proxy reads (ztunnel's local config, Istio resources), in
any number of files or inline in $LOCAL_XDS. The waypoint's own workload (named NAME,
or with service account NAME, in NAMESPACE) gives its address and identity; services
and workloads whose `waypoint` names that address are served here. Files are reloaded
when they change and on SIGHUP."""


def add_parser(sub) -> None:
    p = sub.add_parser("waypoint", help="run a waypoint: the mesh's L7 proxy (HTTP/1.1 requests, L7 policy)",
                       description="Run meshcore's waypoint: node proxies send traffic for the services and "
                                   "workloads that use it here over HBONE; it applies the waypoint's policies "
                                   "and sends each request to an endpoint over HBONE with its own identity.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the waypoint's name (its Gateway's, in Istio)")
    p.add_argument("--namespace", required=True, help="the waypoint's namespace")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="configuration file (repeatable); without one, $LOCAL_XDS_PATH or $LOCAL_XDS")
    p.add_argument("--address", default="127.0.0.1",
                   help="address for listeners given without a host (default: 127.0.0.1)")
    p.add_argument("--listen", action="append", type=listen_type(DEFAULT_LISTEN), default=[],
                   metavar="NAME=HOST:PORT", help="move or turn off one listener (repeatable; see below)")
    p.add_argument("--ca-dir", help="CA directory to issue the waypoint's certificate from")
    p.add_argument("--cert-dir", help="ready certificates, one directory per identity (as `meshcore node`)")
    p.add_argument("--state-dir", help="where the built-in CA is created when neither --ca-dir nor --cert-dir "
                                       "is given (as `meshcore node`)")
    p.add_argument("--trust-domain", default="cluster.local", help="trust domain of a new built-in CA")
    p.add_argument("--root-namespace", default=ROOT_NAMESPACE, metavar="NAMESPACE",
                   help=f"the mesh's root namespace (default: {ROOT_NAMESPACE})")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="upstream connect timeout (default: 10)")
    p.add_argument("--drain-deadline", type=float, default=5.0, metavar="SECONDS",
                   help="how long requests and tunnels may finish after SIGTERM (default: 5)")
    p.add_argument("--log-level", default="info", help="info, debug, warn, error, off (default: info)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    p.set_defaults(func=run)


def options_from(args: argparse.Namespace) -> WaypointOptions:
    import os
    from meshcore.sources.config import inline_from_environment
    if args.ca_dir and args.cert_dir:
        raise ConfigError("give --ca-dir or --cert-dir, not both", source="command line")
    paths = tuple(args.config) or tuple(p for p in (os.environ.get("LOCAL_XDS_PATH"),) if p)
    inline = None if paths else inline_from_environment()
    if not paths and inline is None:
        raise ConfigError("no configuration: give --config FILE (or LOCAL_XDS_PATH, or LOCAL_XDS)",
                          source="command line")
    return WaypointOptions(name=args.name, namespace=args.namespace, config_paths=paths, inline_config=inline,
                           address=args.address, listen=dict(args.listen), ca_dir=args.ca_dir,
                           cert_dir=args.cert_dir, state_dir=args.state_dir, trust_domain=args.trust_domain,
                           connect_timeout=args.connect_timeout, drain_deadline=args.drain_deadline,
                           root_namespace=args.root_namespace, ca_helper_process=True,
                           freeze_startup=True)


def run(args: argparse.Namespace) -> int:
    from meshcore.node import logs
    from meshcore.sources.config import load
    logs.configure(args.log_level, args.log_format)
    logs.lean_records()
    options = options_from(args)
    load(options.config_paths, inline=options.inline_config, root_namespace=options.root_namespace)
    return run_event_loop(serve(options))


async def serve(options: WaypointOptions) -> int:
    from meshcore.waypoint.proxy import WaypointProxy
    proxy = WaypointProxy(options)
    await serve_until_stopped(proxy)
    log.info("waypoint %s/%s stopped", options.namespace, options.name)
    return 0
