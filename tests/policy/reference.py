"""A deliberately simple authorization evaluator, written from docs/policy.md alone, to
check the compiled engine against. Slow and obvious on purpose."""
import ipaddress
from dataclasses import dataclass

from meshcore.policy.model import L7_FIELDS, Action, Scope


@dataclass
class Request:
    principal: str | None
    source_ip: str
    destination_ip: str
    port: int
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: dict | None = None
    request_principal: str | None = None
    sni: str | None = None


def _template_holds(template, path):
    """Istio/Envoy URI templates, segment by segment: {*} one non-empty segment, {**}
    whatever remains before the literal tail (possibly nothing)."""
    t, p = template.split("/"), path.split("/")
    if "{**}" in t:
        i = t.index("{**}")
        head, tail = t[:i], t[i + 1:]
        if len(p) < len(head) + len(tail):
            return False
        return (_segments_hold(head, p[:len(head)]) and _segments_hold(tail, p[len(p) - len(tail):])
                if tail else _segments_hold(head, p[:len(head)]))
    return len(t) == len(p) and _segments_hold(t, p)


def _segments_hold(template, segments):
    return all((t == "{*}" and s != "") or t == s for t, s in zip(template, segments))


def _str_any(matches, value, lower=False):
    if value is None or value == "":
        return False
    if lower:
        value = value.lower()
    for m in matches:
        v = m.value.lower() if lower else m.value
        if m.kind == "presence":
            return True
        if m.kind == "template" and _template_holds(v, value):
            return True
        if m.kind == "exact" and value == v:
            return True
        if m.kind == "prefix" and value.startswith(v):
            return True
        if m.kind == "suffix" and value.endswith(v):
            return True
    return False


def _ip_any(nets, ip):
    addr = ipaddress.ip_address(ip)
    return any(addr in n for n in nets)


def _host_any(matches, host):
    """The whole authority, case-insensitively: `example.com` is not `example.com:8080`."""
    return host is not None and _str_any(matches, host, True)


def _path(path):
    return None if path is None else path.split("?")[0].split("#")[0]


def field_checks(m, r: Request):
    """(field name, passes) for every field the match sets."""
    parts = r.principal.split("/") if r.principal else []
    ns = parts[2] if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" else None
    sa = f"{parts[2]}/{parts[4]}" if ns else None
    headers = {k.lower(): v for k, v in (r.headers or {}).items()}
    out = []

    def add(name, positive, ok):
        if getattr(m, name):
            out.append((name, ok if positive else not ok))

    add("namespaces", True, _str_any(m.namespaces, ns))
    add("not_namespaces", False, _str_any(m.not_namespaces, ns))
    add("principals", True, _str_any(m.principals, r.principal))
    add("not_principals", False, _str_any(m.not_principals, r.principal))
    add("service_accounts", True, sa in {f"{a}/{b}" for a, b in m.service_accounts})
    add("not_service_accounts", False, sa in {f"{a}/{b}" for a, b in m.not_service_accounts})
    add("source_ips", True, _ip_any(m.source_ips, r.source_ip))
    add("not_source_ips", False, _ip_any(m.not_source_ips, r.source_ip))
    add("destination_ips", True, _ip_any(m.destination_ips, r.destination_ip))
    add("not_destination_ips", False, _ip_any(m.not_destination_ips, r.destination_ip))
    add("destination_ports", True, r.port in m.destination_ports)
    add("not_destination_ports", False, r.port in m.not_destination_ports)
    add("remote_ips", True, _ip_any(m.remote_ips, r.source_ip))
    add("not_remote_ips", False, _ip_any(m.not_remote_ips, r.source_ip))
    add("request_principals", True, _str_any(m.request_principals, r.request_principal))
    add("not_request_principals", False, _str_any(m.not_request_principals, r.request_principal))
    add("methods", True, _str_any(m.methods, r.method))
    add("not_methods", False, _str_any(m.not_methods, r.method))
    add("paths", True, _str_any(m.paths, _path(r.path)))
    add("not_paths", False, _str_any(m.not_paths, _path(r.path)))
    add("hosts", True, _host_any(m.hosts, r.host))
    add("not_hosts", False, _host_any(m.not_hosts, r.host))
    add("headers", True, all(_str_any(v, headers.get(n)) for n, v in m.headers))
    add("not_headers", False, any(_str_any(v, headers.get(n)) for n, v in m.not_headers))
    add("sni", True, _str_any(m.sni, r.sni))
    add("not_sni", False, _str_any(m.not_sni, r.sni))
    return out


def match_holds(m, r, l4_deny=False):
    checks = field_checks(m, r)
    if not checks:
        return False                           # all-empty match never matches
    # at L4 a DENY assumes whatever it cannot see holds
    return all(ok or (l4_deny and name in L7_FIELDS) for name, ok in checks)


def rule_holds(rule, r, action, layer):
    if layer == "l4" and action is not Action.DENY:
        if any(getattr(m, f) for clause in rule for m in clause for f in L7_FIELDS):
            return False                       # needs L7: can never allow
    l4_deny = layer == "l4" and action is Action.DENY
    return all(not clause or any(match_holds(m, r, l4_deny) for m in clause) for clause in rule)


def policy_holds(p, r, layer):
    return any(rule_holds(rule, r, p.action, layer) for rule in p.rules)


def applies(p, workload, root="istio-system"):
    if p.key in workload.attached:
        return True
    if p.selector is None:
        scope = p.scope
        if scope is Scope.ROOT_OR_NAMESPACE:           # Istio, no selector: mesh-wide in the root namespace
            scope = Scope.GLOBAL if p.namespace == root else Scope.NAMESPACE
        if scope is Scope.GLOBAL:
            return True
        if scope is Scope.WORKLOAD_SELECTOR:
            return False
        return p.namespace == workload.namespace
    if p.namespace not in (workload.namespace, root):
        return False
    labels = dict(workload.labels)
    return all(labels.get(k) == v for k, v in p.selector)


def decide(policies, workload, r, layer="l4"):
    """(allowed, set of policies that could have decided, audit keys, dry-run keys)."""
    mine = [p for p in policies if applies(p, workload)]
    enforced = [p for p in mine if not p.dry_run and p.action is not Action.AUDIT]
    audit = {p.key for p in mine if p.action is Action.AUDIT and policy_holds(p, r, layer)}
    dry = {p.key for p in mine if p.dry_run and p.action is not Action.AUDIT and policy_holds(p, r, layer)}
    denies = {p.key for p in enforced if p.action is Action.DENY and policy_holds(p, r, layer)}
    if denies:
        return False, denies, audit, dry
    allows = [p for p in enforced if p.action is Action.ALLOW]
    if not allows:
        return True, {None}, audit, dry
    matched = {p.key for p in allows if policy_holds(p, r, layer)}
    if matched:
        return True, matched, audit, dry
    return False, {None}, audit, dry
