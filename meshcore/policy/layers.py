"""What a policy means at a layer that sees only L4 (a node proxy): the same rules
the compiled engine applies (docs/policy.md, "At L4 (the node proxy) and at L7 (a waypoint)"),
said in words for operators: an ALLOW or AUDIT rule that needs HTTP attributes is
dropped (it can never match there); a DENY rule keeps its L4 part."""
from __future__ import annotations

from dataclasses import fields

from meshcore.policy.model import L7_FIELDS, Action, Match, Policy

_NAMES = {"remote_ips": "remoteIpBlocks", "not_remote_ips": "notRemoteIpBlocks",
          "request_principals": "requestPrincipals", "not_request_principals": "notRequestPrincipals",
          "methods": "methods", "not_methods": "notMethods", "paths": "paths", "not_paths": "notPaths",
          "hosts": "hosts", "not_hosts": "notHosts", "headers": "request.headers",
          "not_headers": "request.headers (notValues)", "sni": "connection.sni", "not_sni": "connection.sni"}


def l7_fields_of(match: Match) -> list[str]:
    return [_NAMES[f.name] for f in fields(match) if f.name in L7_FIELDS and getattr(match, f.name)]


def l4_reductions(policy: Policy) -> list[str]:
    """One sentence per rule that the L4 layer changes; empty when none is."""
    out = []
    for i, rule in enumerate(policy.rules):
        needed = sorted({name for clause in rule for m in clause for name in l7_fields_of(m)})
        if not needed:
            continue
        if policy.action is Action.DENY:
            out.append(f"{policy.key} rule {i} denies on its L4 part only: {', '.join(needed)} "
                       "cannot be seen without a waypoint and are taken to match")
        else:
            out.append(f"{policy.key} rule {i} needs {', '.join(needed)}, which a node proxy cannot see: "
                       "it never matches here (route the traffic through a waypoint to enforce it)")
    return out


def l4_note(policies) -> str:
    """For a denial by default: which ALLOW rules could not match at L4 and why."""
    dropped = [r for p in policies if p.action is Action.ALLOW for r in l4_reductions(p)]
    return f" ({'; '.join(dropped)})" if dropped else ""
