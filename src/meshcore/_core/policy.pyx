"""Compiled authorization (docs/policy.md).

    engine = PolicyEngine(policies, layer="l4")          # or "l7" for a waypoint
    table = engine.for_workload(PolicyTarget.of("shop", {"app": "checkout"}))
    decision = table.evaluate("cluster.local/ns/shop/sa/frontend", "10.0.0.5", "10.0.0.7", 8080)

Each policy compiles once into matchers: exact strings in hash sets, prefixes and
suffixes in tuples, CIDR blocks into sorted merged ranges searched by bisection,
ports into sorted arrays. The policies that apply to a workload are gathered into a
PolicySet (cached per workload) whose rules are indexed by the exact principals they
require, so a request only looks at the rules that can match it. Decisions for the
common outcomes are built once and shared.
"""
cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.unicode cimport PyUnicode_AsUTF8
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

import gc
import ipaddress

from meshcore.policy.layers import l4_note
from meshcore.policy.paths import template_regex

from meshcore.policy.model import (Action, PolicyTarget, Scope, applies_to, attached_to_waypoint,
                                   target_ref_problem)

cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "sys/socket.h" nogil:
    int AF_INET
    int AF_INET6

# CMatch.present bits
cdef enum:
    B_NS = 1 << 0
    B_NOT_NS = 1 << 1
    B_PRIN = 1 << 2
    B_NOT_PRIN = 1 << 3
    B_SA = 1 << 4
    B_NOT_SA = 1 << 5
    B_SRC = 1 << 6
    B_NOT_SRC = 1 << 7
    B_DST = 1 << 8
    B_NOT_DST = 1 << 9
    B_PORT = 1 << 10
    B_NOT_PORT = 1 << 11
    B_REMOTE = 1 << 12
    B_NOT_REMOTE = 1 << 13
    B_REQP = 1 << 14
    B_NOT_REQP = 1 << 15
    B_METHOD = 1 << 16
    B_NOT_METHOD = 1 << 17
    B_PATH = 1 << 18
    B_NOT_PATH = 1 << 19
    B_HOST = 1 << 20
    B_NOT_HOST = 1 << 21
    B_HDR = 1 << 22
    B_NOT_HDR = 1 << 23
    B_SNI = 1 << 24
    B_NOT_SNI = 1 << 25
    B_NEEDS_DERIVED = B_NS | B_NOT_NS | B_SA | B_NOT_SA
    B_L4 = (1 << 12) - 1          # the fields a node proxy can see


cdef int parse_ip(object text, IpAddr* out) except -1:
    """Parses an IPv4/IPv6 address string (or None) with inet_pton: no Python objects."""
    cdef unsigned char buf[16]
    cdef const char* s
    cdef int i
    if text is None:
        out.family = 0
        out.hi = out.lo = 0
        return 0
    s = PyUnicode_AsUTF8(text)
    if inet_pton(AF_INET, s, buf) == 1:
        out.family = 4
        out.hi = 0
        out.lo = (<uint64_t>buf[0] << 24) | (<uint64_t>buf[1] << 16) | (<uint64_t>buf[2] << 8) | buf[3]
        return 0
    if inet_pton(AF_INET6, s, buf) == 1:
        out.family = 6
        out.hi = out.lo = 0
        for i in range(8):
            out.hi = (out.hi << 8) | buf[i]
            out.lo = (out.lo << 8) | buf[i + 8]
        return 0
    raise ValueError(f"{text!r} is not an IP address")


cdef inline bint _le(uint64_t ahi, uint64_t alo, uint64_t bhi, uint64_t blo) noexcept:
    return ahi < bhi or (ahi == bhi and alo <= blo)


@cython.no_gc
cdef class StrSet:
    cdef bint contains(self, object value):
        cdef object p
        if value is None or not value:
            return False
        if self.presence or value in self.exact:
            return True
        for p in self.prefixes:
            if (<str>value).startswith(p):
                return True
        for p in self.suffixes:
            if (<str>value).endswith(p):
                return True
        for p in self.templates:
            if p.fullmatch(value) is not None:
                return True
        return False


cdef StrSet make_strset(tuple matches, bint lower=False):
    cdef StrSet s = StrSet.__new__(StrSet)
    if len(matches) == 1 and matches[0].kind == "exact" and not lower:    # the common case
        s.exact = frozenset((matches[0].value,))
        s.prefixes = s.suffixes = s.templates = ()
        s.presence = False
        return s
    exact, prefixes, suffixes, templates = set(), [], [], []
    s.presence = False
    for m in matches:
        value = m.value.lower() if lower else m.value
        if m.kind == "exact":
            exact.add(value)
        elif m.kind == "prefix":
            prefixes.append(value)
        elif m.kind == "suffix":
            suffixes.append(value)
        elif m.kind == "template":
            templates.append(template_regex(value))
        else:
            s.presence = True
    s.exact = frozenset(exact)
    s.prefixes = tuple(prefixes)
    s.suffixes = tuple(suffixes)
    s.templates = tuple(templates)
    return s


cdef StrSet make_exact_strset(values):
    cdef StrSet s = StrSet.__new__(StrSet)
    s.exact = frozenset(values)
    s.prefixes = s.suffixes = s.templates = ()
    s.presence = False
    return s


@cython.no_gc
cdef class IpSet:
    def __dealloc__(self):
        PyMem_Free(self.v4)
        PyMem_Free(self.v6)

    cdef bint contains(self, const IpAddr* a) noexcept:
        cdef Py_ssize_t lo = 0, hi, mid
        if a.family == 4:
            hi = self.n4
            while lo < hi:            # first range whose end >= address
                mid = (lo + hi) >> 1
                if self.v4[2 * mid + 1] < a.lo:
                    lo = mid + 1
                else:
                    hi = mid
            return lo < self.n4 and self.v4[2 * lo] <= a.lo
        if a.family == 6:
            hi = self.n6
            while lo < hi:
                mid = (lo + hi) >> 1
                if not _le(a.hi, a.lo, self.v6[4 * mid + 2], self.v6[4 * mid + 3]):
                    lo = mid + 1
                else:
                    hi = mid
            return lo < self.n6 and _le(self.v6[4 * lo], self.v6[4 * lo + 1], a.hi, a.lo)
        return False


cdef list _merged(list ranges):
    ranges.sort()
    out = []
    for start, end in ranges:
        if out and start <= out[len(out) - 1][1] + 1:
            last = out[len(out) - 1]
            if end > last[1]:
                last[1] = end
        else:
            out.append([start, end])
    return out


cdef IpSet make_ipset(networks):
    return _ipset_from_ranges([(net.version, int(net.network_address), int(net.broadcast_address))
                               for net in networks])


@cython.no_gc
cdef class PortSet:
    def __dealloc__(self):
        PyMem_Free(self.ports)

    cdef bint contains(self, int port) noexcept:
        cdef Py_ssize_t i
        for i in range(self.n):
            if self.ports[i] == port:
                return True
        return False


cdef PortSet make_portset(tuple ports):
    cdef PortSet s = PortSet.__new__(PortSet)
    values = ports if len(ports) == 1 else sorted(set(ports))
    s.n = len(values)
    s.ports = <uint16_t*>PyMem_Malloc(sizeof(uint16_t) * (s.n or 1))
    if s.ports == NULL:
        raise MemoryError()
    for i, p in enumerate(values):
        s.ports[i] = p
    return s


cdef class Facts:
    cdef void derive(self):
        """namespace and ns/sa from the principal td/ns/<ns>/sa/<sa>, when first needed."""
        self.derived = True
        if self.principal is None or self.namespace is not None:
            return
        parts = (<str>self.principal).split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            self.namespace = parts[2]
            self.service_account = parts[2] + "/" + parts[4]


cdef dict _lower_names(dict headers):
    """HTTP header names are case-insensitive: policies hold them lower-cased."""
    for k in headers:
        if <str>k != (<str>k).lower():
            return {(<str>name).lower(): v for name, v in headers.items()}
    return headers


cdef bint _headers_match(tuple matchers, dict headers, bint negate):
    """positive: every named header matches one of its values; negated: none does."""
    cdef StrSet s
    for name, s in matchers:
        value = headers.get(name) if headers is not None else None
        if negate:
            if s.contains(value):
                return False
        elif not s.contains(value):
            return False
    return True


@cython.no_gc
cdef class CMatch:
    cdef bint matches(self, Facts f):
        cdef uint32_t p = self.present
        if p == 0:
            return False                      # an all-empty match never matches
        if p & B_PORT and not self.ports.contains(f.port):
            return False
        if p & B_NOT_PORT and self.not_ports.contains(f.port):
            return False
        if p & B_PRIN and not self.principals.contains(f.principal):
            return False
        if p & B_NOT_PRIN and self.not_principals.contains(f.principal):
            return False
        if p & B_NEEDS_DERIVED and not f.derived:
            f.derive()
        if p & B_NS and not self.namespaces.contains(f.namespace):
            return False
        if p & B_NOT_NS and self.not_namespaces.contains(f.namespace):
            return False
        if p & B_SA and not self.service_accounts.contains(f.service_account):
            return False
        if p & B_NOT_SA and self.not_service_accounts.contains(f.service_account):
            return False
        if p & B_SRC and not self.source_ips.contains(&f.src):
            return False
        if p & B_NOT_SRC and self.not_source_ips.contains(&f.src):
            return False
        if p & B_DST and not self.destination_ips.contains(&f.dst):
            return False
        if p & B_NOT_DST and self.not_destination_ips.contains(&f.dst):
            return False
        if p < B_REMOTE:
            return True
        if p & B_REMOTE and not self.remote_ips.contains(&f.remote):
            return False
        if p & B_NOT_REMOTE and self.not_remote_ips.contains(&f.remote):
            return False
        if p & B_REQP and not self.request_principals.contains(f.request_principal):
            return False
        if p & B_NOT_REQP and self.not_request_principals.contains(f.request_principal):
            return False
        if p & B_METHOD and not self.methods.contains(f.method):
            return False
        if p & B_NOT_METHOD and self.not_methods.contains(f.method):
            return False
        if p & B_PATH and not self.paths.contains(f.path):
            return False
        if p & B_NOT_PATH and self.not_paths.contains(f.path):
            return False
        if p & B_HOST and not self.hosts.contains(f.host):
            return False
        if p & B_NOT_HOST and self.not_hosts.contains(f.host):
            return False
        if p & B_HDR and not _headers_match(self.headers, f.headers, False):
            return False
        if p & B_NOT_HDR and not _headers_match(self.not_headers, f.headers, True):
            return False
        if p & B_SNI and not self.sni.contains(f.sni):
            return False
        if p & B_NOT_SNI and self.not_sni.contains(f.sni):
            return False
        return True


_FIELDS = {name: i for i, name in enumerate((
    "namespaces", "not_namespaces", "principals", "not_principals", "service_accounts",
    "not_service_accounts", "source_ips", "not_source_ips", "destination_ips",
    "not_destination_ips", "destination_ports", "not_destination_ports", "remote_ips",
    "not_remote_ips", "request_principals", "not_request_principals", "methods", "not_methods",
    "paths", "not_paths", "hosts", "not_hosts", "headers", "not_headers", "sni", "not_sni"))}
# the field numbers above are the bit numbers of B_*: field i sets bit 1 << i


cdef CMatch compile_match(m):
    """Reads the match's fields once and compiles only those that are set."""
    cdef CMatch c = CMatch.__new__(CMatch)
    cdef uint32_t p = 0
    cdef int code
    for name, code in _FIELDS.items():
        value = getattr(m, name)
        if not value:
            continue
        p |= (<uint32_t>1) << code
        if code == 0: c.namespaces = make_strset(value)
        elif code == 1: c.not_namespaces = make_strset(value)
        elif code == 2: c.principals = make_strset(value)
        elif code == 3: c.not_principals = make_strset(value)
        elif code == 4: c.service_accounts = make_exact_strset(f"{ns}/{sa}" for ns, sa in value)
        elif code == 5: c.not_service_accounts = make_exact_strset(f"{ns}/{sa}" for ns, sa in value)
        elif code == 6: c.source_ips = make_ipset(value)
        elif code == 7: c.not_source_ips = make_ipset(value)
        elif code == 8: c.destination_ips = make_ipset(value)
        elif code == 9: c.not_destination_ips = make_ipset(value)
        elif code == 10: c.ports = make_portset(value)
        elif code == 11: c.not_ports = make_portset(value)
        elif code == 12: c.remote_ips = make_ipset(value)
        elif code == 13: c.not_remote_ips = make_ipset(value)
        elif code == 14: c.request_principals = make_strset(value)
        elif code == 15: c.not_request_principals = make_strset(value)
        elif code == 16: c.methods = make_strset(value)
        elif code == 17: c.not_methods = make_strset(value)
        elif code == 18: c.paths = make_strset(value)
        elif code == 19: c.not_paths = make_strset(value)
        elif code == 20: c.hosts = make_strset(value, True)
        elif code == 21: c.not_hosts = make_strset(value, True)
        elif code == 22: c.headers = tuple((n, make_strset(v)) for n, v in value)
        elif code == 23: c.not_headers = tuple((n, make_strset(v)) for n, v in value)
        elif code == 24: c.sni = make_strset(value)
        else: c.not_sni = make_strset(value)
    c.present = p
    return c


@cython.no_gc
cdef class CRule:
    cdef bint matches(self, Facts f):
        cdef tuple clause
        cdef CMatch m
        cdef bint ok
        for clause in self.clauses:               # AND over clauses
            ok = False
            for m in clause:                      # OR over matches; empty clause matches
                if m.matches(f):
                    ok = True
                    break
            if not ok and len(clause):
                return False
        return True

    cdef frozenset required_principals(self):
        """Exact principals one of which the rule needs, or None: from the clause
        whose every match names exact principals only (the smallest such set)."""
        best = None
        for clause in self.clauses:
            if not clause:
                continue
            names = set()
            for m in clause:
                if not (<CMatch>m).present & B_PRIN:
                    names = None
                    break
                s = (<CMatch>m).principals
                if s.presence or s.prefixes or s.suffixes:
                    names = None
                    break
                names |= s.exact
            if names is not None and (best is None or len(names) < len(best)):
                best = frozenset(names)
        return best


    cdef list required_source_ips(self):
        """Networks one of which the source IP must be in for the rule to match, from a
        clause whose every match names source_ips; or None."""
        for clause in self.clauses:
            if not clause:
                continue
            nets = []
            for m in clause:
                if not (<CMatch>m).present & B_SRC:
                    nets = None
                    break
                nets.extend(_ipset_networks((<CMatch>m).source_ips))
            if nets is not None:
                return nets
        return None


cdef list _ipset_networks(IpSet s):
    """The ranges of an IpSet as (family, start, end) triples."""
    cdef Py_ssize_t i
    out = [(4, s.v4[2 * i], s.v4[2 * i + 1]) for i in range(s.n4)]
    out += [(6, (<object>s.v6[4 * i] << 64) | s.v6[4 * i + 1],
             (<object>s.v6[4 * i + 2] << 64) | s.v6[4 * i + 3]) for i in range(s.n6)]   # Python ints: 128 bits
    return out


@cython.no_gc
cdef class Decision:
    def __repr__(self):
        verdict = "ALLOW" if self.allowed else "DENY"
        return f"<Decision {verdict} {self.reason!r}>"

    def __bool__(self):
        return self.allowed


cdef Decision make_decision(bint allowed, str policy, str action, str reason,
                            tuple audit=(), tuple dry_run=(), object shadow=None):
    cdef Decision d = Decision.__new__(Decision)
    d.allowed = allowed
    d.policy = policy
    d.action = action
    d.reason = reason
    d.audit = audit
    d.dry_run = dry_run
    d.shadow_allowed = shadow
    return d


cdef class CompiledPolicy:
    def __repr__(self):
        return f"<CompiledPolicy {self.key} {self.action} rules={len(self.rules)}>"


cdef CMatch _l4_part(CMatch m):
    """The match with its L7 fields dropped (the L4 fields are shared, not copied)."""
    cdef CMatch c = CMatch.__new__(CMatch)
    c.namespaces, c.not_namespaces = m.namespaces, m.not_namespaces
    c.principals, c.not_principals = m.principals, m.not_principals
    c.service_accounts, c.not_service_accounts = m.service_accounts, m.not_service_accounts
    c.source_ips, c.not_source_ips = m.source_ips, m.not_source_ips
    c.destination_ips, c.not_destination_ips = m.destination_ips, m.not_destination_ips
    c.ports, c.not_ports = m.ports, m.not_ports
    c.present = m.present & B_L4
    return c


cdef object _fail_closed(tuple clauses, bint deny):
    """docs/policy.md, "At L4 (the node proxy) and at L7 (a waypoint)": an ALLOW (or AUDIT) rule that
    needs L7 attributes is dropped (returns None: it can never allow). In a DENY rule the
    L7 part of every match is assumed to hold: a match keeps its L4 fields, and a match
    with only L7 fields makes its whole clause hold (the clause is dropped)."""
    cdef CMatch m
    cdef bint needs_l7 = False
    for clause in clauses:
        for m in clause:
            if m.present & ~B_L4:
                needs_l7 = True
    if not needs_l7:
        return clauses
    if not deny:
        return None
    out = []
    for clause in clauses:
        stripped = []
        holds = False
        for m in clause:
            if m.present & ~B_L4:
                if not m.present & B_L4:
                    holds = True
                    break
                m = _l4_part(m)
            stripped.append(m)
        if not holds:
            out.append(tuple(stripped))
    return tuple(out)


cdef CompiledPolicy compile_policy(policy, Py_ssize_t order, bint l4):
    cdef CompiledPolicy c = CompiledPolicy.__new__(CompiledPolicy)
    cdef CRule r
    c.key = policy.key
    c.action = policy.action.value
    c.dry_run = policy.dry_run
    c.source = policy
    c.order = order
    c.rules = []
    for rule in policy.rules:
        clauses = tuple(tuple([compile_match(m) for m in clause]) for clause in rule)
        if l4:
            clauses = _fail_closed(clauses, c.action == "DENY")
            if clauses is None:
                continue
        c.rules.append(clauses)
    c.allowed_by = make_decision(True, c.key, c.action, f"allowed by {c.action} policy {c.key}")
    c.denied_by = make_decision(False, c.key, c.action, f"denied by {c.action} policy {c.key}")
    c.rules = [_rule(clauses, c, order) for clauses in c.rules]
    return c


cdef CRule _rule(tuple clauses, CompiledPolicy p, Py_ssize_t order):
    cdef CRule r = CRule.__new__(CRule)
    r.clauses = clauses
    r.allowed_by = p.allowed_by
    r.denied_by = p.denied_by
    r.order = order
    return r


cdef class RuleGroup:
    cdef CRule first_match(self, Facts f):
        """The matching rule of the earliest policy, or None. Each bucket is in policy
        order, so its first match is its earliest."""
        cdef CRule r, best = None
        cdef list indexed
        if self.by_principal and f.principal is not None:
            indexed = self.by_principal.get(f.principal)
            if indexed is not None:
                for r in indexed:
                    if r.matches(f):
                        best = r
                        break
        if self.by_source and self.source_union.contains(&f.src):
            for r in self.by_source:
                if best is not None and r.order >= best.order:
                    break
                if r.matches(f):
                    best = r
                    break
        for r in self.unindexed:
            if best is not None and r.order >= best.order:
                break
            if r.matches(f):
                return r
        return best


cdef IpSet _ipset_from_ranges(list ranges):
    cdef IpSet s = IpSet.__new__(IpSet)
    cdef Py_ssize_t i
    v4 = _merged([(a, b) for fam, a, b in ranges if fam == 4])
    v6 = _merged([(a, b) for fam, a, b in ranges if fam == 6])
    s.n4, s.n6 = len(v4), len(v6)
    s.v4 = <uint64_t*>PyMem_Malloc(sizeof(uint64_t) * 2 * (s.n4 or 1))
    s.v6 = <uint64_t*>PyMem_Malloc(sizeof(uint64_t) * 4 * (s.n6 or 1))
    if s.v4 == NULL or s.v6 == NULL:
        raise MemoryError()
    for i in range(s.n4):
        s.v4[2 * i], s.v4[2 * i + 1] = v4[i][0], v4[i][1]
    for i in range(s.n6):
        start, end = v6[i]
        s.v6[4 * i], s.v6[4 * i + 1] = start >> 64, start & 0xffffffffffffffff
        s.v6[4 * i + 2], s.v6[4 * i + 3] = end >> 64, end & 0xffffffffffffffff
    return s


cdef RuleGroup make_group(list policies):
    cdef RuleGroup g = RuleGroup.__new__(RuleGroup)
    cdef CompiledPolicy p
    cdef CRule r
    g.policies = policies
    g.by_principal = {}
    g.by_source = []
    g.unindexed = []
    ranges = []
    for p in policies:
        for r in p.rules:
            names = r.required_principals()
            if names is not None:
                for name in names:
                    g.by_principal.setdefault(name, []).append(r)
                continue
            nets = r.required_source_ips()
            if nets is not None:
                g.by_source.append(r)
                ranges.extend(nets)
            else:
                g.unindexed.append(r)
    g.source_union = _ipset_from_ranges(ranges)
    return g


cdef class PolicySet:
    """The policies that apply to one destination workload, indexed for evaluation."""

    @property
    def policies(self):
        return [p.key for g in (self.deny, self.allow, self.audit, self.dry_deny, self.dry_allow)
                for p in (<RuleGroup>g).policies]

    cpdef Decision evaluate(self, object principal, object source_ip, object destination_ip,
                            int destination_port, object method=None, object path=None,
                            object host=None, dict headers=None, object request_principal=None,
                            object sni=None, object remote_ip=None):
        """principal: "td/ns/<ns>/sa/<sa>" (spiffe:// optional) or None for no identity.
        The L7 arguments matter to a waypoint's (layer="l7") tables only."""
        cdef Facts f = Facts.__new__(Facts)
        if principal is not None and (<str>principal).startswith("spiffe://"):
            principal = (<str>principal)[9:]
        f.principal = principal
        f.derived = False
        parse_ip(source_ip, &f.src)
        parse_ip(destination_ip, &f.dst)
        if remote_ip is None:
            f.remote = f.src
        else:
            parse_ip(remote_ip, &f.remote)
        f.port = destination_port
        f.method = method
        # Istio matches `paths` against the path alone: a query or fragment never reaches it
        if path is not None and ("?" in <str>path or "#" in <str>path):
            path = (<str>path).partition("?")[0].partition("#")[0]
        f.path = path
        if host is not None:
            f.host = (<str>host).lower()          # the whole authority: a port is part of it
        f.headers = _lower_names(headers) if headers is not None else None
        f.request_principal = request_principal
        f.sni = sni
        return self.decide(f)

    cdef Decision decide(self, Facts f):
        cdef CRule r
        cdef Decision d
        r = self.deny.first_match(f) if self.deny.policies else None
        if r is not None:
            d = r.denied_by
        elif not self.has_allow:
            d = self.allow_default
        else:
            r = self.allow.first_match(f)
            d = r.allowed_by if r is not None else self.deny_default
        if self.extras:
            return self._with_extras(d, f)
        return d

    cdef Decision _with_extras(self, Decision d, Facts f):
        cdef CompiledPolicy p
        cdef CRule r
        audit = tuple(p.key for p in self.audit.policies if _policy_matches(p, f))
        dry = tuple(p.key for g in (self.dry_deny, self.dry_allow)
                    for p in (<RuleGroup>g).policies if _policy_matches(p, f))
        shadow = None
        if self.dry_deny.policies or self.dry_allow.policies:
            # the decision had the dry-run policies been enforced
            if d.action == "DENY" or any(_policy_matches(p, f) for p in self.dry_deny.policies):
                shadow = False
            elif not (self.has_allow or self.has_dry_allow):
                shadow = True
            else:
                shadow = (d.allowed and d.action == "ALLOW") or any(
                    _policy_matches(p, f) for p in self.dry_allow.policies)
        return make_decision(d.allowed, d.policy, d.action, d.reason, audit, dry, shadow)


cdef bint _policy_matches(CompiledPolicy p, Facts f):
    cdef CRule r
    for r in p.rules:
        if r.matches(f):
            return True
    return False


cdef PolicySet make_policy_set(list compiled, str note=""):
    cdef PolicySet s = PolicySet.__new__(PolicySet)
    cdef CompiledPolicy p
    groups = {"deny": [], "allow": [], "audit": [], "dry_deny": [], "dry_allow": []}
    for p in compiled:
        if p.action == "AUDIT":
            groups["audit"].append(p)
        elif p.dry_run:
            groups["dry_deny" if p.action == "DENY" else "dry_allow"].append(p)
        else:
            groups["deny" if p.action == "DENY" else "allow"].append(p)
    s.deny = make_group(groups["deny"])
    s.allow = make_group(groups["allow"])
    s.audit = make_group(groups["audit"])
    s.dry_deny = make_group(groups["dry_deny"])
    s.dry_allow = make_group(groups["dry_allow"])
    s.has_allow = bool(groups["allow"])
    s.has_dry_allow = bool(groups["dry_allow"])
    s.extras = bool(groups["audit"] or groups["dry_deny"] or groups["dry_allow"])
    s.allow_default = make_decision(True, None, None, "allowed: no ALLOW policy applies")
    s.deny_default = make_decision(False, None, None, "denied: no ALLOW policy matched" + note)
    return s


TABLE_CACHE_LIMIT = 65536       # per-workload tables kept at once (rebuilt on use past it)


class PolicyEngine:
    """All policies, compiled once; per-workload tables built on first use and cached.

    layer="l4" (node proxy) compiles the fail-closed form of policies with L7 fields;
    layer="l7" (waypoint) keeps them.

    An engine in force is never changed by a configuration change: changed() returns
    a new engine that shares every compiled policy and per-workload table the change
    does not touch, so connections holding the old one keep deciding as they began."""

    def __init__(self, policies=(), *, layer="l4", root_namespace="istio-system"):
        if layer not in ("l4", "l7"):
            raise ValueError("layer is 'l4' or 'l7'")
        self.layer = layer
        self.root_namespace = root_namespace
        self._compiled = {}
        self._tables = {}
        self._waypoint_tables = {}
        self._by_namespace = {}
        self._global = []
        self._next_order = 0
        self.update(policies)

    def update(self, policies):
        """Replace the policy set in place (ValueError on the first policy that cannot
        be compiled, or a key given twice; nothing changes then)."""
        keys = set()
        for policy in policies:
            if policy.key in keys:
                raise ValueError(f"policy {policy.key} given twice")
            keys.add(policy.key)
        engine, rejected = self.changed(policies, [k for k in self._compiled if k not in keys])
        if rejected:
            key, reason = next(iter(rejected.items()))
            raise ValueError(reason)
        self.__dict__.update(engine.__dict__)

    def changed(self, upserts=(), removes=()):
        """(engine, rejected): a new engine with the model Policies in `upserts` put in
        force and the keys in `removes` taken out; `rejected` maps the key of each
        policy that could not be compiled to why (it stays as it was). A changed
        policy keeps its place in evaluation order; a new one goes last. Only the
        per-workload tables of namespaces whose policies changed are dropped (all of
        them when a mesh-wide policy changed); they are rebuilt on next use."""
        cdef bint l4 = self.layer == "l4"
        cdef Py_ssize_t order = self._next_order
        cdef CompiledPolicy old, c
        compiled = dict(self._compiled)
        rejected = {}
        namespaces = set()            # namespaces whose policy lists changed
        keys = set()                  # changed keys (ztunnel workloads attach policies by key)
        everyone = False
        root = self.root_namespace
        gc_was_enabled = gc.isenabled()
        # compiling allocates ~20 objects per rule: pausing the cyclic GC meanwhile saves
        # it from rescanning the heap dozens of times (compiled objects are untracked)
        gc.disable()
        try:
            for key in removes:
                old = compiled.pop(key, None)
                if old is not None:
                    namespaces.add(old.source.namespace)
                    keys.add(key)
                    everyone = everyone or old.source.scope is Scope.GLOBAL
            for policy in upserts:
                old = compiled.get(policy.key)
                if old is not None and (old.source is policy or old.source == policy):
                    continue
                problem = target_ref_problem(policy, root)
                if problem is not None:
                    rejected[policy.key] = problem
                    continue
                try:
                    c = compile_policy(policy, old.order if old is not None else order, l4)
                except ValueError as exc:
                    rejected[policy.key] = str(exc)
                    continue
                if old is None:
                    order += 1
                else:
                    namespaces.add(old.source.namespace)
                    everyone = everyone or old.source.scope is Scope.GLOBAL
                compiled[policy.key] = c
                namespaces.add(policy.namespace)
                keys.add(policy.key)
                everyone = everyone or policy.scope is Scope.GLOBAL
        finally:
            if gc_was_enabled:
                gc.enable()
        engine = PolicyEngine.__new__(PolicyEngine)
        engine.layer = self.layer
        engine.root_namespace = root
        engine._compiled = compiled
        engine._next_order = order
        if not keys:
            engine._tables, engine._by_namespace, engine._global = self._tables, self._by_namespace, self._global
            engine._waypoint_tables = self._waypoint_tables
            return engine, rejected
        everyone = everyone or root in namespaces
        by_namespace = dict(self._by_namespace)
        for ns in namespaces:
            by_namespace.pop(ns, None)
        global_ = [c for c in self._global if c.key not in keys]
        for c in compiled.values():
            if c.source.namespace in namespaces:
                if c.source.scope is Scope.GLOBAL:
                    if c.key in keys:
                        global_.append(c)          # mesh-wide, whatever its namespace
                else:
                    by_namespace.setdefault(c.source.namespace, []).append(c)
            elif c.key in keys and c.source.scope is Scope.GLOBAL:
                global_.append(c)
        engine._by_namespace = by_namespace
        engine._global = global_
        if everyone:
            engine._tables = {}
            engine._waypoint_tables = {}
        else:
            # a waypoint's table reads the policies of its own namespace, its service's
            # and the root namespace's (a root change made everyone true)
            waypoint_tables = dict(self._waypoint_tables)
            engine._waypoint_tables = {k: t for k, t in waypoint_tables.items()
                                       if (<tuple>k)[0][0] not in namespaces
                                       and ((<tuple>k)[1] is None or (<tuple>k)[1][0] not in namespaces)}
            # a copy first, in one call: this may run on a worker thread while the event
            # loop adds tables to the engine in force
            tables = dict(self._tables)
            engine._tables = {k: t for k, t in tables.items()
                              if (<tuple>k)[0] not in namespaces and keys.isdisjoint((<tuple>k)[2])}
        return engine, rejected

    @property
    def policies(self):
        return [p.source for p in self._compiled.values()]

    def for_workload(self, workload):
        """The PolicySet of a destination workload (PolicyTarget or (namespace, labels))."""
        if not isinstance(workload, PolicyTarget):
            workload = PolicyTarget.of(*workload)
        # what selection reads: workloads alike (replicas of one template) share a table
        key = (workload.namespace, workload.labels, workload.attached)
        table = self._tables.get(key)
        if table is None:
            # only global ones, the root namespace's, the workload's own and attached ones can apply
            candidates = list(self._global)
            candidates += self._by_namespace.get(self.root_namespace, ())
            if workload.namespace != self.root_namespace:
                candidates += self._by_namespace.get(workload.namespace, ())
            candidates += [self._compiled[k] for k in workload.attached if k in self._compiled]
            chosen = sorted({id(p): p for p in candidates
                             if applies_to((<CompiledPolicy>p).source, workload, self.root_namespace)}.values(),
                            key=lambda p: (<CompiledPolicy>p).order)
            note = l4_note([(<CompiledPolicy>p).source for p in chosen]) if self.layer == "l4" else ""
            if len(self._tables) >= TABLE_CACHE_LIMIT:
                self._tables = {}          # label sets come and go (rollouts): the cache stays bounded
            table = self._tables[key] = make_policy_set(chosen, note)
        return table

    def evaluate(self, workload, *args, **kwargs):
        return self.for_workload(workload).evaluate(*args, **kwargs)

    def waypoint_policy_set(self, waypoint, service=None, service_kind="Service", layer="l7"):
        """The PolicySet a waypoint (namespace, name) enforces on requests to `service`
        (namespace, name of the Service, or of the ServiceEntry with service_kind
        "ServiceEntry"; None for traffic addressed to a workload): the policies
        attached by targetRefs (model.attached_to_waypoint), cached like a workload's.

        layer="l4": the same policies in their fail-closed form (Envoy's network RBAC),
        for a tunnel the waypoint cannot read as HTTP: an ALLOW rule that needs HTTP
        attributes never matches, a DENY rule is decided on its L4 part."""
        if self.layer != "l7":
            # an L4 engine has dropped every ALLOW rule that needs HTTP: a waypoint
            # deciding with it would deny what its policies allow
            raise ValueError("a waypoint's policies are evaluated by an engine with layer='l7'")
        if layer not in ("l4", "l7"):
            raise ValueError("layer is 'l4' or 'l7'")
        waypoint = (waypoint[0], waypoint[1])
        service = None if service is None else (service[0], service[1])
        # changed() drops entries by key[0] and key[1]: the l4 form is kept under a longer key
        key = (waypoint, service, service_kind) if layer == "l7" else (waypoint, service, service_kind, "l4")
        table = self._waypoint_tables.get(key)
        if table is None:
            root = self.root_namespace
            namespaces = {root, waypoint[0]} | ({service[0]} if service is not None else set())
            candidates = [p for ns in namespaces for p in self._by_namespace.get(ns, ())]
            chosen = sorted([p for p in candidates
                             if attached_to_waypoint((<CompiledPolicy>p).source, waypoint, service, root,
                                                     service_kind)],
                            key=lambda p: (<CompiledPolicy>p).order)
            note = ""
            if layer == "l4":
                # recompiled from the source: the engine's compiled form keeps the L7 fields
                if l4_note([(<CompiledPolicy>p).source for p in chosen]):
                    note = " (the tunnel is not HTTP: ALLOW rules that need HTTP attributes cannot match it)"
                chosen = [compile_policy((<CompiledPolicy>p).source, (<CompiledPolicy>p).order, True)
                          for p in chosen]
            if len(self._waypoint_tables) >= TABLE_CACHE_LIMIT:
                self._waypoint_tables = {}
            table = self._waypoint_tables[key] = make_policy_set(chosen, note)
        return table
