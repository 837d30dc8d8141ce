"""ztunnel local-config `policies` entries (docs/configuration.md) → the policy model."""
from __future__ import annotations

from sys import intern

from meshcore.config import fields as F
from meshcore.policy.model import Action, Match, Policy, Scope, StringMatch

_STRING_FIELDS = {"namespaces": "namespaces", "notNamespaces": "not_namespaces",
                  "principals": "principals", "notPrincipals": "not_principals"}
_IP_FIELDS = {"sourceIps": "source_ips", "notSourceIps": "not_source_ips",
              "destinationIps": "destination_ips", "notDestinationIps": "not_destination_ips"}
_PORT_FIELDS = {"destinationPorts": "destination_ports", "notDestinationPorts": "not_destination_ports"}
_SA_FIELDS = {"serviceAccounts": "service_accounts", "notServiceAccounts": "not_service_accounts"}
MATCH_KEYS = tuple(_STRING_FIELDS) + tuple(_IP_FIELDS) + tuple(_PORT_FIELDS) + tuple(_SA_FIELDS)
_KINDS = {"Exact": "exact", "Prefix": "prefix", "Suffix": "suffix", "Presence": "presence"}
_SCOPES = {s.value: s for s in (Scope.GLOBAL, Scope.NAMESPACE, Scope.WORKLOAD_SELECTOR)}


def _string_match(obj, path: str) -> StringMatch:
    """`abc` / `abc*` / `*abc` / `*`, or ztunnel's {Exact|Prefix|Suffix|Presence: ...}."""
    if isinstance(obj, str):
        return StringMatch.istio(obj)
    F.mapping(obj, path, allowed=_KINDS)
    if len(obj) != 1:
        raise F.fail(path, "a string match has exactly one of Exact, Prefix, Suffix, Presence")
    (kind, value), = obj.items()
    if kind == "Presence":
        return StringMatch("presence")
    return StringMatch(_KINDS[kind], intern(F.string(value, f"{path}.{kind}")))


def _match(obj, path: str) -> Match:
    F.mapping(obj, path, allowed=MATCH_KEYS)
    kw = {}
    for key, raw in obj.items():
        p = f"{path}.{key}"
        items = F.sequence(raw, p)
        if key in _STRING_FIELDS:
            kw[_STRING_FIELDS[key]] = tuple(_string_match(v, f"{p}[{i}]") for i, v in enumerate(items))
        elif key in _IP_FIELDS:
            kw[_IP_FIELDS[key]] = tuple(F.network(v, f"{p}[{i}]") for i, v in enumerate(items))
        elif key in _PORT_FIELDS:
            kw[_PORT_FIELDS[key]] = tuple(F.port(v, f"{p}[{i}]") for i, v in enumerate(items))
        else:
            sas = []
            for i, v in enumerate(items):
                F.mapping(v, f"{p}[{i}]", allowed=("namespace", "serviceAccount"),
                          required=("namespace", "serviceAccount"))
                sas.append((intern(F.string(v["namespace"], f"{p}[{i}].namespace")),
                            intern(F.string(v["serviceAccount"], f"{p}[{i}].serviceAccount"))))
            kw[_SA_FIELDS[key]] = tuple(sas)
    return Match(**kw)


def ztunnel_policy(obj, path: str, source: str = "") -> Policy:
    F.mapping(obj, path, allowed=("name", "namespace", "scope", "action", "rules", "dryRun", "groups"),
              required=("name", "namespace"))
    name = F.string(obj["name"], f"{path}.name")
    namespace = intern(F.string(obj["namespace"], f"{path}.namespace"))     # shared by many policies
    scope_text = F.string(obj.get("scope", "Namespace"), f"{path}.scope")
    scope = _SCOPES.get(scope_text)
    if scope is None:
        raise F.fail(f"{path}.scope", f"{scope_text!r} is not Global, Namespace or WorkloadSelector")
    action_text = F.string(obj.get("action", "Allow"), f"{path}.action")
    actions = {"Allow": Action.ALLOW, "Deny": Action.DENY}
    if action_text not in actions:
        # ztunnel's authorization action has these two only: istiod sends it no AUDIT
        # policy ("ztunnel does not support the AUDIT action")
        raise F.fail(f"{path}.action", f"{action_text!r} is not Allow or Deny (ztunnel's local config has "
                                       "no Audit; write an Istio AuthorizationPolicy with action AUDIT)")
    rules = []
    for i, rule in enumerate(F.sequence(obj.get("rules"), f"{path}.rules")):
        clauses = []
        for j, clause in enumerate(F.sequence(rule, f"{path}.rules[{i}]")):
            clauses.append(tuple(_match(m, f"{path}.rules[{i}][{j}][{k}]")
                                 for k, m in enumerate(F.sequence(clause, f"{path}.rules[{i}][{j}]"))))
        rules.append(tuple(clauses))
    dry_run = F.boolean(obj.get("dryRun", False), f"{path}.dryRun")
    return Policy(name, namespace, actions[action_text], tuple(rules), scope, None, dry_run, source)
