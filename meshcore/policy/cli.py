"""`meshcore policy check | explain`: what operators reach for when a request is denied.

    meshcore policy check examples/node-proxy/policy.yaml examples/node-proxy/mesh.yaml
    meshcore policy explain --from cluster.local/ns/shop/sa/frontend --to shop/checkout-0 examples/node-proxy/*.yaml
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
from dataclasses import fields

from meshcore.errors import ConfigError, IdentityError
from meshcore.identity.spiffe import SpiffeId
from meshcore.policy.istio import ROOT_NAMESPACE
from meshcore.policy.layers import l4_reductions
from meshcore.policy.model import (L7_FIELDS, Action, Match, Policy, PolicyTarget, Scope, applies_to,
                                   resolved_scope, waypoint_policies)
from meshcore.policy.paths import NORMALIZATIONS

_FIELD_NAMES = {"namespaces": "namespaces", "not_namespaces": "notNamespaces", "principals": "principals",
                "not_principals": "notPrincipals", "service_accounts": "serviceAccounts",
                "not_service_accounts": "notServiceAccounts", "source_ips": "ipBlocks",
                "not_source_ips": "notIpBlocks", "destination_ips": "destination.ip",
                "not_destination_ips": "not destination.ip", "destination_ports": "ports",
                "not_destination_ports": "notPorts", "remote_ips": "remoteIpBlocks",
                "not_remote_ips": "notRemoteIpBlocks", "request_principals": "requestPrincipals",
                "not_request_principals": "notRequestPrincipals", "methods": "methods",
                "not_methods": "notMethods", "paths": "paths", "not_paths": "notPaths", "hosts": "hosts",
                "not_hosts": "notHosts", "headers": "headers", "not_headers": "notHeaders", "sni": "sni",
                "not_sni": "notSni"}


def _value(v) -> str:
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], tuple):          # a header and its values
        return f"{v[0]}: {', '.join(map(str, v[1]))}"
    if isinstance(v, tuple):
        return "/".join(v)                                                       # namespace/service account
    return str(v)


def describe_match(m: Match) -> str:
    parts = [f"{_FIELD_NAMES[f.name]} [{', '.join(_value(v) for v in getattr(m, f.name))}]"
             for f in fields(m) if getattr(m, f.name)]
    return " and ".join(parts) or "(nothing: never matches)"


def describe_rule(rule) -> str:
    if not rule:
        return "any request"
    return "; ".join(" or ".join(describe_match(m) for m in clause) if clause else "(anything)" for clause in rule)


def _selection(p: Policy, root_namespace: str) -> str:
    if p.target_refs:
        return "waypoints by targetRefs " + ", ".join(map(str, p.target_refs))
    if p.selector is not None:
        return "selector " + ", ".join(f"{k}={v}" for k, v in p.selector)
    return {Scope.GLOBAL: "mesh-wide", Scope.NAMESPACE: f"namespace {p.namespace}",
            Scope.WORKLOAD_SELECTOR: "where attached by name"}[resolved_scope(p, root_namespace)]


def _load(args):
    from meshcore.sources.config import load
    # the store logs each policy's L4 reductions for a running node; check and explain
    # print them in their own output, once
    state_log = logging.getLogger("meshcore.state")
    level = state_log.level
    state_log.setLevel(logging.ERROR)
    try:
        return load(args.files, root_namespace=args.root_namespace)
    finally:
        state_log.setLevel(level)


def check(args: argparse.Namespace, out=print) -> int:
    state = _load(args)
    out(f"valid: {len(state.policies)} authorization policies, {len(state.peer_authentications)} "
        f"PeerAuthentications, {len(state.workloads)} workloads, {len(state.services)} services "
        f"({', '.join(args.files)})")
    for p in state.policies:
        flags = " (dry run)" if p.dry_run else ""
        out(f"\n{p.key}  {p.action.value}{flags}  {_selection(p, state.root_namespace)}  [{p.source}]")
        if not p.rules:
            out("  no rules: never matches" + (" (an ALLOW without rules denies everything it selects)"
                                               if p.action is Action.ALLOW else ""))
        for i, rule in enumerate(p.rules):
            out(f"  rule {i}: {describe_rule(rule)}")
        if p.target_refs:
            out("  enforced by waypoints only: no node proxy applies it")
        for sentence in ([] if p.target_refs else l4_reductions(p)):
            out(f"  at L4 (node proxy): {sentence.split(' ', 1)[1]}")
    for pa in state.peer_authentications:
        ports = "".join(f", port {port}: {mode}" for port, mode in pa.port_modes)
        sel = f"selector {', '.join(f'{k}={v}' for k, v in pa.selector)}" if pa.selector else "no selector"
        out(f"\nPeerAuthentication {pa.key}  mtls {pa.mode}{ports}  {sel}")
    return 0


def _needs_l7(clause) -> bool:
    return any(getattr(m, f) for m in clause for f in L7_FIELDS)


def _where(args) -> str:
    return ", ".join(args.files)


def _destination(state, args):
    """The workload named by --to (NAMESPACE/NAME, its name or uid), as the files list it."""
    namespace, sep, name = args.to.partition("/")
    if not sep or not namespace or not name:
        raise ConfigError("expected NAMESPACE/NAME, a workload of the files", source=f"--to {args.to}")
    known = next((w for w in state.workloads if w.namespace == namespace and name in (w.name, w.uid)), None)
    if known is None:
        listed = ", ".join(sorted(f"{w.namespace}/{w.name}" for w in state.workloads)) or "none"
        raise ConfigError(f"no such workload in {_where(args)} (workloads there: {listed})",
                          source=f"--to {args.to}")
    return known


def _source(state, args):
    """(principal without spiffe://, the first workload of that identity or None), or
    (None, None) for a plaintext caller."""
    if not args.principal:
        return None, None
    text = args.principal if args.principal.startswith("spiffe://") else "spiffe://" + args.principal
    try:
        identity = SpiffeId.parse(text)
    except IdentityError as exc:
        raise ConfigError(f"not an identity: {exc} (write TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT, "
                          "or the same after spiffe://)", source=f"--from {args.principal}") from None
    return identity.principal, next((w for w in state.workloads if w.meshed and w.identity == identity), None)


def _named(text: str, option: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ConfigError("expected NAMESPACE/NAME", source=f"{option} {text}")
    return namespace, name


def _report(p: Policy, holds, layer: str, root_namespace: str, out) -> None:
    """One applying policy: the rules that matched, else the parts each rule missed."""
    matched = [i for i, rule in enumerate(p.rules) if holds(p, (rule,))]
    what = f"matched rule {', '.join(map(str, matched))}" if matched else "no rule matched"
    flags = " (dry run)" if p.dry_run else ""
    out(f"  {p.key}  {p.action.value}{flags}  {_selection(p, root_namespace)}: {what}")
    for i in matched:
        out(f"    rule {i}: {describe_rule(p.rules[i])}")
    if not matched:
        # the parts of each rule that this request fails; a part a node proxy cannot
        # see is left to the "at L4" line below
        for i, rule in enumerate(p.rules):
            missed = [clause for clause in rule if not holds(p, ((clause,),))
                      and not (layer == "l4" and _needs_l7(clause))]
            if missed:
                out(f"    rule {i} did not match: {'; '.join(describe_rule((c,)) for c in missed)}")
    if layer == "l4":
        for sentence in l4_reductions(p):
            out(f"    at L4: {sentence.split(' ', 1)[1]}")


def _holds(evaluate):
    def holds(p: Policy, rules) -> bool:
        """Whether `rules` of p match this request, as the engine decides it."""
        alone = dataclasses.replace(p, rules=rules, dry_run=False,
                                    action=Action.ALLOW if p.action is Action.AUDIT else p.action)
        return evaluate([alone]).allowed == (alone.action is Action.ALLOW)
    return holds


def _extras(decision, out) -> int:
    if decision.audit:
        out(f"audited by: {', '.join(decision.audit)}")
    if decision.dry_run:
        out(f"dry-run policies that matched: {', '.join(decision.dry_run)}")
        if decision.shadow_allowed is not None:
            out(f"with the dry-run policies enforced: {'ALLOW' if decision.shadow_allowed else 'DENY'}")
    return 0 if decision.allowed else 1


def _caller_address(state, args, principal, caller) -> str:
    source_ip = args.source_ip or (str(caller.ips[0]) if caller is not None and caller.ips else None)
    if source_ip is None:
        if principal:
            raise ConfigError(f"no workload in {_where(args)} has this identity: give the caller's address "
                              "with --source-ip", source=f"--from {args.principal}")
        raise ConfigError("a plaintext caller (no --from) has no workload to take an address from: give it "
                          "with --source-ip", source="--source-ip")
    return source_ip


def explain_waypoint(args: argparse.Namespace, state, out=print) -> int:
    """As a waypoint decides a request to a service it serves: the policies attached to
    it by targetRefs, evaluated at L7 on the normalized path."""
    from meshcore._core.policy import PolicyEngine
    from meshcore.policy.waypoint import denied_response, evaluate_request
    waypoint = _named(args.waypoint, "--waypoint")
    service_name = _named(args.service, "--service") if args.service else None
    service = None
    if service_name is not None:
        service = next((s for s in state.services if (s.namespace, s.name) == service_name), None)
        if service is None:
            listed = ", ".join(sorted(f"{s.namespace}/{s.name}" for s in state.services)) or "none"
            raise ConfigError(f"no such service in {_where(args)} (services there: {listed})",
                              source=f"--service {args.service}")
    principal, caller = _source(state, args)
    source_ip = _caller_address(state, args, principal, caller)
    destination_ip = args.destination_ip or (str(service.vips[0][1]) if service is not None and service.vips
                                             else None)
    if destination_ip is None:
        raise ConfigError("give the address the request was sent to with --destination-ip (a service's VIP is "
                          "taken when --service names one that has one)", source=f"--waypoint {args.waypoint}")
    headers = dict(h.split("=", 1) for h in args.header) or None
    path = args.path

    def evaluate(policies):
        engine = PolicyEngine(policies, layer="l7", root_namespace=state.root_namespace)
        return evaluate_request(engine.waypoint_policy_set(waypoint, service_name), peer=principal,
                                source_ip=source_ip, destination_ip=destination_ip, port=args.port,
                                method=args.method, path=path, host=args.host, headers=headers,
                                normalization=args.path_normalization)

    decision = evaluate(state.policies)
    out(f"{'ALLOW' if decision.allowed else 'DENY'}: {decision.reason}")
    target = f"service {service_name[0]}/{service_name[1]}" if service_name else "a workload"
    request = " ".join(x for x in (args.method, path) if x) or "a request"
    if path is not None:
        from meshcore.policy.paths import normalize
        normalized = normalize(path, args.path_normalization)
        if normalized != path:
            request += f" (path as matched: {normalized})"
    out(f"request: {request} from {principal or '(no identity)'} at {source_ip} to {target} at "
        f"{destination_ip}:{args.port} through waypoint {waypoint[0]}/{waypoint[1]}, layer l7")
    applying = waypoint_policies(state.policies, waypoint=waypoint, service=service_name,
                                 root_namespace=state.root_namespace)
    if not applying:
        out("no policy is attached to this waypoint for this destination: allowed by default")
    holds = _holds(evaluate)
    for p in applying:
        _report(p, holds, "l7", state.root_namespace, out)
    if not decision.allowed:
        answer = denied_response(headers or ())
        extra = "".join(f", {k}: {v}" for k, v in answer.headers if k.startswith("grpc-"))
        out(f"answered: {answer.status}{extra}" + (f" {answer.body.decode()!r}" if answer.body else ""))
    return _extras(decision, out)


def explain(args: argparse.Namespace, out=print) -> int:
    from meshcore._core.policy import PolicyEngine
    state = _load(args)
    if args.waypoint:
        if args.to:
            raise ConfigError("--to names a workload as its node decides; --waypoint asks the waypoint: "
                              "give one of them", source=f"--to {args.to}")
        return explain_waypoint(args, state, out)
    if args.service:
        raise ConfigError("--service is a waypoint's destination: give --waypoint too", source=f"--service {args.service}")
    if not args.to:
        raise ConfigError("give --to NAMESPACE/NAME (a workload, as its node decides) or --waypoint "
                          "NAMESPACE/NAME", source="explain")
    destination = _destination(state, args)
    view = destination.policy_view()
    extra = dict(label.split("=", 1) for label in args.label)
    workload = PolicyTarget(view.namespace, tuple(sorted({**dict(view.labels), **extra}.items())), view.name,
                        view.attached)
    principal, caller = _source(state, args)
    source_ip = _caller_address(state, args, principal, caller)
    destination_ip = args.destination_ip or (str(destination.ips[0]) if destination.ips else None)
    if destination_ip is None:
        raise ConfigError(f"the workload has no address in {_where(args)}: give one with --destination-ip",
                          source=f"--to {args.to}")
    headers = dict(h.split("=", 1) for h in args.header) or None
    l7 = dict(method=args.method, path=args.path, host=args.host, headers=headers)

    def evaluate(policies):
        engine = PolicyEngine(policies, layer=args.layer, root_namespace=state.root_namespace)
        return engine.evaluate(workload, principal, source_ip, destination_ip, args.port, **l7)

    decision = evaluate(state.policies)
    verdict = "ALLOW" if decision.allowed else "DENY"
    out(f"{verdict}: {decision.reason}")
    labels = ", ".join(f"{k}={v}" for k, v in workload.labels) or "no labels"
    out(f"request: from {principal or '(no identity)'} at {source_ip} to {workload.namespace}/"
        f"{workload.name} ({labels}) at {destination_ip}:{args.port}, layer {args.layer}")
    applying = [p for p in state.policies if applies_to(p, workload, state.root_namespace)]
    if not applying:
        out("no policy applies to this workload: allowed by default")
    holds = _holds(evaluate)
    for p in applying:
        _report(p, holds, args.layer, state.root_namespace, out)
    elsewhere = [p.key for p in state.policies if p.target_refs and p.namespace == workload.namespace]
    if elsewhere:
        # an operator reading why a request passed its node wants to know these were not asked
        out(f"not enforced here (attached to waypoints by targetRefs; see --waypoint): {', '.join(elsewhere)}")
    return _extras(decision, out)


def add_parser(sub) -> None:
    policy = sub.add_parser("policy", help="check authorization policies, or explain a decision",
                            description="Validate Istio AuthorizationPolicy / PeerAuthentication and "
                                        "ztunnel local-config files, and explain how they decide a request.")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    c = psub.add_parser("check", help="validate files and print the policies as meshcore compiled them",
                        description="Load the files as `meshcore node` does (refused as a whole, with file, "
                                    "document, field and reason) and print every policy's selection and "
                                    "rules, and what a node proxy (L4) does with rules that need HTTP.")
    c.add_argument("files", nargs="+", metavar="FILE", help="YAML or JSON files")
    _root_namespace_option(c)
    c.set_defaults(func=check)
    e = psub.add_parser("explain", help="which policy and rule decide a request, and why",
                        description="Evaluate one request against the files' policies; print the decision, "
                                    "every policy that applies to the destination and the rules that "
                                    "matched. Exit status 0 when allowed, 1 when denied.")
    e.add_argument("files", nargs="+", metavar="FILE", help="YAML or JSON files")
    e.add_argument("--from", dest="principal", metavar="IDENTITY",
                   help="the caller's identity, TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT or spiffe://...; "
                        "leave out for a plaintext caller")
    e.add_argument("--to", metavar="NAMESPACE/NAME",
                   help="the destination workload, by name or uid, as the files list it (its labels, "
                        "address and attached policies come from there), as its node proxy decides")
    e.add_argument("--waypoint", metavar="NAMESPACE/NAME",
                   help="decide as this waypoint does instead: the policies attached to it by targetRefs, at L7")
    e.add_argument("--service", metavar="NAMESPACE/NAME",
                   help="with --waypoint: the service the request was addressed to (its VIP is the default "
                        "--destination-ip); leave out for a request addressed to a workload")
    e.add_argument("--path-normalization", default="BASE", choices=NORMALIZATIONS,
                   help="with --waypoint: how the waypoint normalizes the path before matching (Istio's "
                        "meshConfig pathNormalization; default BASE)")
    e.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   type=_key_value("--label"), help="a label the destination carries in addition to, or instead "
                                                    "of, the one the files give it (repeatable): what if")
    e.add_argument("--source-ip", type=_address("--source-ip"),
                   help="the caller's address (default: the address of the first workload of the files with "
                        "the --from identity)")
    e.add_argument("--destination-ip", type=_address("--destination-ip"),
                   help="the destination's address (default: the workload's own)")
    e.add_argument("--port", type=_port, default=8080, help="the destination port (default 8080)")
    e.add_argument("--layer", choices=("l4", "l7"), default="l4",
                   help="l4: as a node proxy decides (default); l7: as a waypoint decides")
    e.add_argument("--method", help="HTTP method (l7)")
    e.add_argument("--path", help="HTTP path (l7)")
    e.add_argument("--host", help="HTTP :authority (l7)")
    e.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", type=_key_value("--header"),
                   help="request header (l7)")
    _root_namespace_option(e)
    e.set_defaults(func=explain)


def _root_namespace_option(parser) -> None:
    parser.add_argument("--root-namespace", default=ROOT_NAMESPACE, metavar="NAMESPACE",
                        help="the mesh's root namespace, as `meshcore node --root-namespace` (Istio's "
                             f"meshConfig.rootNamespace; default: {ROOT_NAMESPACE})")


def _address(option: str):
    def parse(text: str) -> str:
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} {text!r} is not an IP address") from None
    return parse


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"--port {text!r} is not a port (1-65535)")
    return int(text)


def _key_value(option: str):
    def parse(text: str) -> str:
        if "=" not in text or text.startswith("="):
            raise argparse.ArgumentTypeError(f"{option} {text!r}: expected NAME=VALUE")
        return text
    return parse
