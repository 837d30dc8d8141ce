"""Istio AuthorizationPolicy (security.istio.io/v1, v1beta1) → the policy model."""
from __future__ import annotations

import re
from sys import intern

from meshcore.config import fields as F
from meshcore.config.yamlfile import documents, located
from meshcore.errors import ConfigError
from meshcore.policy.model import (GATEWAY_GROUP, WAYPOINT_CLASS, Action, Match, Policy, Scope, StringMatch,
                                   TargetRef)
from meshcore.policy.paths import check_template, is_template

API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
ROOT_NAMESPACE = "istio-system"            # Istio's default meshConfig.rootNamespace
DRY_RUN_ANNOTATION = "istio.io/dry-run"

_SOURCE = {
    "principals": ("principals", "str"), "notPrincipals": ("not_principals", "str"),
    "requestPrincipals": ("request_principals", "str"),
    "notRequestPrincipals": ("not_request_principals", "str"),
    "namespaces": ("namespaces", "str"), "notNamespaces": ("not_namespaces", "str"),
    "ipBlocks": ("source_ips", "ip"), "notIpBlocks": ("not_source_ips", "ip"),
    "remoteIpBlocks": ("remote_ips", "ip"), "notRemoteIpBlocks": ("not_remote_ips", "ip"),
    "serviceAccounts": ("service_accounts", "sa"), "notServiceAccounts": ("not_service_accounts", "sa"),
}
_OPERATION = {
    "hosts": ("hosts", "host"), "notHosts": ("not_hosts", "host"),
    "ports": ("destination_ports", "port"), "notPorts": ("not_destination_ports", "port"),
    "methods": ("methods", "str"), "notMethods": ("not_methods", "str"),
    "paths": ("paths", "path"), "notPaths": ("not_paths", "path"),
}
# `when` keys → (model field, value kind)
_CONDITIONS = {
    "source.ip": ("source_ips", "ip"), "source.namespace": ("namespaces", "str"),
    "source.principal": ("principals", "str"), "remote.ip": ("remote_ips", "ip"),
    "destination.ip": ("destination_ips", "ip"), "destination.port": ("destination_ports", "port"),
    "request.auth.principal": ("request_principals", "str"), "connection.sni": ("sni", "str"),
}
_HEADER_KEY = re.compile(r"request\.headers\[([^\]]+)\]")


def _values(kind: str, raw, path: str, namespace: str = "") -> tuple:
    if kind == "ip":
        return tuple(F.network(v, f"{path}[{i}]") for i, v in enumerate(F.sequence(raw, path)))
    if kind == "port":
        return tuple(F.port(v, f"{path}[{i}]") for i, v in enumerate(F.sequence(raw, path)))
    if kind == "sa":
        # `<namespace>/<name>`, or a bare `<name>` meaning the policy's own namespace
        # (Istio's Source.serviceAccounts); no wildcards, unlike principals
        out = []
        for i, v in enumerate(F.strings(raw, path)):
            if "*" in v:
                raise F.fail(f"{path}[{i}]", f"{v!r}: wildcards are not supported in serviceAccounts "
                                             "(Istio refuses them; use principals for prefix/suffix matches)")
            ns, sep, sa = v.rpartition("/") if "/" in v else (namespace, "/", v)
            if not ns or not sa or "/" in ns:
                raise F.fail(f"{path}[{i}]", f"{v!r} is not <namespace>/<service account> or <service account>")
            out.append((ns, sa))
        return tuple(out)
    values = F.strings(raw, path)
    if kind == "host":
        values = [v.lower() for v in values]
    if kind == "path":
        out = []
        for i, v in enumerate(values):
            if is_template(v):
                try:
                    check_template(v)
                except ValueError as exc:
                    raise F.fail(f"{path}[{i}]", str(exc)) from None
                out.append(StringMatch("template", v))
            else:
                out.append(StringMatch.istio(v))
        return tuple(out)
    return tuple(StringMatch.istio(v) for v in values)


def _match(obj: dict, table: dict, path: str, what: str, namespace: str) -> Match:
    F.mapping(obj, path, allowed=table)
    kwargs = {}
    for key, raw in obj.items():
        name, kind = table[key]
        kwargs[name] = _values(kind, raw, f"{path}.{key}", namespace)
    match = Match(**kwargs)
    if match.is_empty():
        raise F.fail(path, f"{what} must set at least one field")
    if (match.service_accounts or match.not_service_accounts) and (
            match.principals or match.not_principals or match.namespaces or match.not_namespaces):
        raise F.fail(path, "serviceAccounts cannot be set with namespaces or principals in one source "
                           "(istiod refuses it)")
    for port in match.destination_ports + match.not_destination_ports:
        if port == 0:
            raise F.fail(path, "port 0 is not a port a request can reach (1-65535)")
    return match


def _condition(obj, path: str) -> Match:
    F.mapping(obj, path, allowed=("key", "values", "notValues"), required=("key",))
    key = F.string(obj["key"], f"{path}.key")
    values, not_values = obj.get("values"), obj.get("notValues")
    if not values and not not_values:
        raise F.fail(path, "a condition needs values or notValues")
    header = _HEADER_KEY.fullmatch(key)
    if header:
        name = header.group(1).lower()
        kw = {}
        if values:
            kw["headers"] = ((name, _values("str", values, f"{path}.values")),)
        if not_values:
            kw["not_headers"] = ((name, _values("str", not_values, f"{path}.notValues")),)
        return Match(**kw)
    if key not in _CONDITIONS:
        raise F.fail(f"{path}.key", f"unsupported condition key {key!r} (supported: "
                     f"{', '.join(sorted(_CONDITIONS))}, request.headers[NAME])")
    name, kind = _CONDITIONS[key]
    kw = {}
    if values:
        kw[name] = _values(kind, values, f"{path}.values")
    if not_values:
        kw["not_" + name] = _values(kind, not_values, f"{path}.notValues")
    return Match(**kw)


def _rule(obj, path: str, namespace: str) -> tuple:
    F.mapping(obj, path, allowed=("from", "to", "when"))
    clauses = []
    for key, inner, table in (("from", "source", _SOURCE), ("to", "operation", _OPERATION)):
        items = F.sequence(obj.get(key), f"{path}.{key}")
        if key in obj and not items:
            # istiod refuses it: an empty list would otherwise match every request
            raise F.fail(f"{path}.{key}", f"`{key}` must not be empty (leave it out to match any {inner})")
        if items:       # one clause: its sources (or operations) are OR'ed
            clauses.append(tuple(
                _match(F.mapping(item, f"{path}.{key}[{i}]", allowed=(inner,), required=(inner,))[inner],
                       table, f"{path}.{key}[{i}].{inner}", inner, namespace)
                for i, item in enumerate(items)))
    for i, cond in enumerate(F.sequence(obj.get("when"), f"{path}.when")):
        clauses.append((_condition(cond, f"{path}.when[{i}]"),))
    return tuple(clauses)


_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def workload_selector(obj, path: str) -> tuple[tuple[str, str], ...] | None:
    """`selector: {matchLabels: {...}}` as istiod validates it: keys not empty, no wildcards."""
    if obj is None:
        return None
    sel = F.mapping(obj, path, allowed=("matchLabels",))
    labels = F.mapping(sel.get("matchLabels") or {}, f"{path}.matchLabels")
    out = []
    for k, v in labels.items():
        key = F.string(k, f"{path}.matchLabels", empty_ok=True)
        if not key:
            raise F.fail(f"{path}.matchLabels", "an empty label key is not supported in a selector")
        value = F.string(str(v), f"{path}.matchLabels.{key}", empty_ok=True)
        if "*" in key or "*" in value:
            raise F.fail(f"{path}.matchLabels.{key}", "wildcards are not supported in selector labels "
                                                      "(Istio refuses them)")
        out.append((key, value))
    return tuple(sorted(out))


def _go_bool(value, path: str) -> bool:
    """An annotation's boolean as istiod reads it (Go's strconv.ParseBool)."""
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in _GO_TRUE or text in _GO_FALSE:
        return text in _GO_TRUE
    raise F.fail(path, f"{text!r} is not a boolean (1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)")


# (kind, canonical group) a waypoint can be attached by; "core" is Istio's canonical
# name for the empty group
_TARGET_KINDS = {("Gateway", GATEWAY_GROUP), ("GatewayClass", GATEWAY_GROUP), ("Service", "core"),
                 ("ServiceEntry", "networking.istio.io")}


def _target_ref(obj, path: str, namespace: str) -> TargetRef:
    F.mapping(obj, path, allowed=("kind", "group", "name", "namespace"), required=("kind", "name"))
    kind = F.string(obj["kind"], f"{path}.kind")
    group = F.string(obj.get("group", ""), f"{path}.group", empty_ok=True) or "core"
    name = F.string(obj["name"], f"{path}.name")
    if (kind, group) not in _TARGET_KINDS:
        known = ", ".join(f"{k} ({g})" for k, g in sorted(_TARGET_KINDS))
        raise F.fail(path, f"{group}/{kind} cannot be a target (one of: {known})")
    ref_namespace = F.string(obj.get("namespace", namespace), f"{path}.namespace", empty_ok=True)
    if ref_namespace not in ("", namespace):
        raise F.fail(f"{path}.namespace", f"{ref_namespace!r}: a policy attaches to targets of its own "
                                          f"namespace {namespace} only")
    if kind == "GatewayClass" and name != WAYPOINT_CLASS:
        raise F.fail(f"{path}.name", f"GatewayClass {name!r}: only {WAYPOINT_CLASS} (every waypoint) can be a "
                                     "target")
    return TargetRef(kind, group, name, path)


def _target_refs(spec: dict, namespace: str) -> tuple[TargetRef, ...]:
    """`targetRefs`, or the older single `targetRef` (Istio reads it only when
    targetRefs is empty; both set is refused here rather than one silently ignored)."""
    single, many = spec.get("targetRef"), F.sequence(spec.get("targetRefs"), "spec.targetRefs")
    if single is not None and many:
        raise F.fail("spec.targetRef", "set targetRefs or targetRef, not both")
    if single is not None:
        return (_target_ref(single, "spec.targetRef", namespace),)
    refs = tuple(_target_ref(r, f"spec.targetRefs[{i}]", namespace) for i, r in enumerate(many))
    return tuple(dict.fromkeys(refs))


def authorization_policy(doc: dict, source: str = "") -> Policy:
    """One AuthorizationPolicy document (already parsed YAML). Raises ConfigError with
    the field path."""
    F.mapping(doc, "", allowed=("apiVersion", "kind", "metadata", "spec", "status"),
              required=("apiVersion", "kind", "metadata"))
    if doc["apiVersion"] not in API_VERSIONS:
        raise F.fail("apiVersion", f"{doc['apiVersion']!r} is not one of {', '.join(API_VERSIONS)}")
    meta = F.mapping(doc["metadata"], "metadata", required=("name",))
    name = F.string(meta["name"], "metadata.name")
    namespace = intern(F.string(meta.get("namespace", "default"), "metadata.namespace"))  # shared by many
    annotations = F.mapping(meta.get("annotations") or {}, "metadata.annotations")
    dry_run = _go_bool(annotations.get(DRY_RUN_ANNOTATION, "false"), f"metadata.annotations.{DRY_RUN_ANNOTATION}")
    spec = F.mapping(doc.get("spec") or {}, "spec",
                     allowed=("selector", "targetRef", "targetRefs", "action", "provider", "rules"))
    target_refs = _target_refs(spec, namespace)
    action_text = F.string(spec.get("action", "ALLOW"), "spec.action")
    if action_text == "CUSTOM":
        raise F.fail("spec.action", "CUSTOM (external authorization) is not supported")
    try:
        action = Action(action_text)
    except ValueError:
        raise F.fail("spec.action", f"{action_text!r} is not ALLOW, DENY, AUDIT or CUSTOM") from None
    if action is Action.AUDIT and DRY_RUN_ANNOTATION in annotations:
        # istiod refuses the annotation, whatever its value, on anything but ALLOW and DENY
        raise F.fail(f"metadata.annotations.{DRY_RUN_ANNOTATION}",
                     f"the {DRY_RUN_ANNOTATION} annotation is for ALLOW and DENY policies only, not AUDIT "
                     "(istiod refuses it); an AUDIT policy never changes a decision anyway")
    if spec.get("provider") is not None:
        raise F.fail("spec.provider", f"`provider` is for action CUSTOM only, not {action_text}")
    selector = workload_selector(spec.get("selector"), "spec.selector")
    if selector is not None and target_refs:
        where = "spec.targetRef" if "targetRef" in spec else "spec.targetRefs"
        raise F.fail(where, "only one of targetRefs or selector can be set (istiod refuses both): "
                            "a selector is for node proxies, targetRefs for waypoints")
    raw_rules = F.sequence(spec.get("rules"), "spec.rules")
    if action is Action.DENY and not raw_rules:
        raise F.fail("spec.rules", "a DENY policy without rules never applies (istiod refuses it); "
                                   "write `rules: [{}]` to deny every request")
    rules = tuple(_rule(r, f"spec.rules[{i}]", namespace) for i, r in enumerate(raw_rules))
    # without a selector, mesh-wide or namespace-wide depending on the root namespace of
    # the mesh that selects it (model.resolved_scope)
    scope = (Scope.TARGET_REFS if target_refs else
             Scope.WORKLOAD_SELECTOR if selector is not None else Scope.ROOT_OR_NAMESPACE)
    return Policy(name, namespace, action, rules, scope, selector, dry_run, source, target_refs)


def load_authorization_policies(text: str, source: str = "<policies>") -> list[Policy]:
    """Every AuthorizationPolicy in a multi-document YAML text (other kinds are left to
    their own loaders). The file is refused as a whole on the first error."""
    policies = []
    for index, doc in enumerate(documents(text, source), 1):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise ConfigError("a document must be a mapping with a kind", source=source, document=index)
        if doc["kind"] != "AuthorizationPolicy":
            continue
        try:
            policies.append(authorization_policy(doc, source))
        except ConfigError as exc:
            raise located(exc, source, index) from None
    keys = [p.key for p in policies]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise ConfigError(f"AuthorizationPolicy {dup} is defined twice", source=source)
    return policies
