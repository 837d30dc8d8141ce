"""`meshcore node`: run the node proxy until SIGTERM (drain, exit 0); SIGHUP reloads."""
from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING
from dataclasses import replace

from meshcore.config.listen import listen_type
from meshcore.errors import ConfigError
from meshcore.node.admin import run_event_loop, serve_until_stopped
from meshcore.node.proxy import DEFAULT_LISTEN, NodeOptions
from meshcore.policy.istio import ROOT_NAMESPACE

if TYPE_CHECKING:
    from meshcore.xds.settings import ControlPlane

log = logging.getLogger("meshcore.node")

EPILOG = """listeners (--listen NAME=HOST:PORT, or NAME=off):
  outbound           15001  captured outbound connections (original destination from SO_ORIGINAL_DST)
  inbound-plaintext  15006  plaintext inbound from PERMISSIVE peers
  inbound            15008  HBONE; host "workloads" = one listener on each local workload's address
  socks5             15080  SOCKS5 for applications and tools (keep it on loopback)
  admin              15000  /config_dump, POST /logging?level=, POST /quitquitquit
  metrics            15020  /metrics and /stats/prometheus
  readiness          15021  /healthz/ready
A listener without a host binds --address.

configuration: ztunnel's local config (workloads, services, policies) and Istio
AuthorizationPolicy / PeerAuthentication documents, in any number of files, or inline
in $LOCAL_XDS. Files are reloaded when they change and on SIGHUP; a bad new config is
refused with its file, document and field, and the running one is kept.

Istio's control plane: with XDS_ADDRESS set (or inside Kubernetes, where it defaults
to istiod.istio-system.svc:15012) the node also takes workloads, services and policies
from istiod's delta xDS, beside any files, and workload certificates from the Istio CA
(CA_ADDRESS, default the xDS address; FAKE_CA=true: certificates as without istiod).
It is ready once istiod's first answer of each type is applied and every local workload
has its certificate; with istiod lost it keeps serving what it has and reconnects.

environment (ztunnel's names; a flag given wins): NODE_NAME (--node-name),
LOCAL_XDS_PATH (--config), LOCAL_XDS (inline configuration), TRUST_DOMAIN
(--trust-domain), NETWORK (--network), XDS_ADDRESS (--xds-address), CA_ADDRESS
(--ca-address), FAKE_CA, XDS_ROOT_CA / CA_ROOT_CA (a file, SYSTEM, or the PEM; default
./var/run/secrets/istio/root-cert.pem), AUTH_TOKEN (a file or the token; default
./var/run/secrets/tokens/istio-token), ISTIO_META_CLUSTER_ID / CLUSTER_ID, CLUSTER_DOMAIN,
XDS_ON_DEMAND, INSTANCE_IP, POD_NAME, POD_NAMESPACE, SERVICE_ACCOUNT, ISTIO_META_* (node
metadata); with POD_NAME, POD_NAMESPACE and SERVICE_ACCOUNT set, the proxy also holds
its own identity's certificate."""


def add_parser(sub) -> None:
    p = sub.add_parser("node", help="run the per-node proxy (HBONE in and out, SOCKS5, L4 policy, metrics)",
                       description="Run meshcore's node proxy: mTLS HBONE tunnels for the workloads of one "
                                   "node, L4 authorization, SOCKS5, admin and metrics.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="configuration file (repeatable); without one, the file $LOCAL_XDS_PATH names, or "
                        "the configuration itself in $LOCAL_XDS")
    p.add_argument("--node-name", default=env.get("NODE_NAME", ""),
                   help="this node's name ($NODE_NAME): workloads whose `node` field equals it are served "
                        "here; without one, every workload is (as ztunnel without NODE_NAME)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address for listeners given without a host (default: 127.0.0.1)")
    p.add_argument("--listen", action="append", type=listen_type(DEFAULT_LISTEN), default=[], metavar="NAME=HOST:PORT",
                   help="move or turn off one listener (repeatable; see below)")
    p.add_argument("--ca-dir", help="CA directory (meshcore ca init, or Istio's ca-cert.pem/ca-key.pem "
                   "layout) to issue this node's workload certificates from")
    p.add_argument("--cert-dir", help="certificates written by cert-manager, a SPIRE agent or `meshcore ca "
                   "issue`: one directory per workload identity under this one (tls.crt/tls.key/ca.crt, "
                   "svid.pem/svid_key.pem/svid_bundle.pem, or cert-chain.pem/key.pem/root-cert.pem); "
                   "reloaded when they change")
    p.add_argument("--state-dir", help="where the built-in CA is created on first start when neither --ca-dir "
                   "nor --cert-dir is given (default: $MESHCORE_STATE_DIR, else $XDG_STATE_HOME/meshcore, else "
                   "~/.local/state/meshcore)")
    p.add_argument("--trust-domain", default=env.get("TRUST_DOMAIN") or "cluster.local",
                   help="trust domain of a newly created built-in CA ($TRUST_DOMAIN; default: cluster.local)")
    p.add_argument("--root-namespace", default=ROOT_NAMESPACE, metavar="NAMESPACE",
                   help="the mesh's root namespace (Istio's meshConfig.rootNamespace): an AuthorizationPolicy "
                        "without a selector there applies to the whole mesh, and a PeerAuthentication there "
                        f"is the mesh-wide default (default: {ROOT_NAMESPACE})")
    p.add_argument("--network", default=env.get("NETWORK", ""),
                   help="this node's network name ($NETWORK; default: the unnamed network)")
    p.add_argument("--xds-address", metavar="HOST:PORT",
                   help="istiod's xDS address ($XDS_ADDRESS; inside Kubernetes istiod.istio-system.svc:15012; "
                        "otherwise none: configuration from files only)")
    p.add_argument("--ca-address", metavar="HOST:PORT",
                   help="the Istio CA's address ($CA_ADDRESS; default: the xDS address)")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="upstream and tunnel connect timeout (default: 10)")
    p.add_argument("--drain-deadline", type=float, default=5.0, metavar="SECONDS",
                   help="how long tunnels may finish after SIGTERM (default: 5)")
    p.add_argument("--no-preserve-source", action="store_true",
                   help="never bind a workload's address as the source of connections made for it")
    p.add_argument("--log-level", default="info", help="info, debug, warn, error, off, or target=level,... "
                   "(default: info)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format (default: text)")
    p.set_defaults(func=run)


def options_from(args: argparse.Namespace) -> NodeOptions:
    from meshcore.sources.config import inline_from_environment
    if args.ca_dir and args.cert_dir:
        raise ConfigError("give --ca-dir (a CA to issue from) or --cert-dir (ready certificates), not both",
                          source="command line")
    env = os.environ
    paths = tuple(args.config) or tuple(p for p in (env.get("LOCAL_XDS_PATH"),) if p)
    # ztunnel in its pod: it holds its own identity too
    own = ((env["POD_NAMESPACE"], env["SERVICE_ACCOUNT"])
           if all(env.get(v) for v in ("POD_NAME", "POD_NAMESPACE", "SERVICE_ACCOUNT")) else None)
    inline = None if paths else inline_from_environment()
    plane = control_plane(args, env)
    if not paths and inline is None and plane.xds_address is None:
        raise ConfigError("no configuration: give --config FILE (or set LOCAL_XDS_PATH to a file, or LOCAL_XDS "
                          "to the YAML text, or XDS_ADDRESS to istiod's address)", source="command line")
    if plane.xds_address is not None or plane.ca_address is not None:
        _require_grpc(plane, env)
    if plane.ca_address is not None and (args.ca_dir or args.cert_dir):
        log.info("certificates from %s, not from the Istio CA at %s", args.ca_dir or args.cert_dir, plane.ca_address)
        plane = replace(plane, ca_address=None)
    return NodeOptions(node_name=args.node_name, config_paths=paths, inline_config=inline,
                       address=args.address, listen=dict(args.listen), ca_dir=args.ca_dir, cert_dir=args.cert_dir,
                       state_dir=args.state_dir, trust_domain=args.trust_domain, network=args.network,
                       connect_timeout=args.connect_timeout, drain_deadline=args.drain_deadline,
                       preserve_source=not args.no_preserve_source, root_namespace=args.root_namespace,
                       freeze_startup=True, ca_helper_process=True, own_identity=own,
                       control_plane=plane if plane.xds_address or plane.ca_address else None)


def _require_grpc(plane, env) -> None:
    import importlib
    try:
        for module in ("meshcore.xds", "grpc", "google.protobuf"):
            importlib.import_module(module)
    except ImportError as exc:
        why = "XDS_ADDRESS is set" if env.get("XDS_ADDRESS") else "it runs inside Kubernetes (KUBERNETES_SERVICE_HOST)"
        raise ConfigError(f"istiod at {plane.xds_address or plane.ca_address} is to be dialed because {why}, but "
                          f"{exc.name or 'grpcio'} is not installed: pip install 'meshcore[istio]', or set "
                          "XDS_ADDRESS='' for a node configured by files only", source="environment") from None
    if not env.get("XDS_ADDRESS") and plane.xds_address:
        log.info("inside Kubernetes: joining istiod at %s (XDS_ADDRESS='' keeps this node on files only)",
                 plane.xds_address)


def control_plane(args: argparse.Namespace, env) -> "ControlPlane":
    """istiod and its CA from ztunnel's environment, the flags given winning."""
    from meshcore.xds.settings import ControlPlane
    overrides = {name: value for name, value in (("XDS_ADDRESS", args.xds_address), ("CA_ADDRESS", args.ca_address))
                 if value}
    return ControlPlane.from_environment({**env, **overrides})


def _raise_fd_limit() -> None:
    """Every tunnel holds two sockets: take the hard limit, as ztunnel does."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(args: argparse.Namespace) -> int:
    from meshcore.node import logs
    logs.configure(args.log_level, args.log_format)
    logs.lean_records()
    _raise_fd_limit()
    options = options_from(args)
    # a typo in a file is refused before anything is created (the built-in CA, listeners)
    from meshcore.sources.config import load
    if options.config_paths or options.inline_config:
        load(options.config_paths, inline=options.inline_config, root_namespace=options.root_namespace)
    return run_event_loop(serve(options))


async def serve(options: NodeOptions) -> int:
    from meshcore.node.proxy import NodeProxy
    proxy = NodeProxy(options)
    await serve_until_stopped(proxy)
    log.info("node %s stopped", options.node_name or "(unnamed)")
    return 0
