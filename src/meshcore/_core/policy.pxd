# Compiled authorization tables (docs/policy.md): matchers, per-workload rule indexes,
# and evaluate(request facts) -> Decision.
from libc.stdint cimport uint16_t, uint32_t, uint64_t

cdef struct IpAddr:
    int family                 # 0: absent, 4 or 6
    uint64_t hi                # 128-bit value; IPv4 uses lo only (hi = 0)
    uint64_t lo

cdef class StrSet:             # OR of exact / prefix / suffix / path template / presence
    cdef frozenset exact
    cdef tuple prefixes
    cdef tuple suffixes
    cdef tuple templates       # compiled regular expressions of path templates
    cdef bint presence
    cdef bint contains(self, object value)

cdef class IpSet:              # sorted, merged address ranges per family
    cdef uint64_t* v4          # [start, end] pairs
    cdef Py_ssize_t n4
    cdef uint64_t* v6          # [start_hi, start_lo, end_hi, end_lo] quads
    cdef Py_ssize_t n6
    cdef bint contains(self, const IpAddr* addr) noexcept

cdef class PortSet:
    cdef uint16_t* ports
    cdef Py_ssize_t n
    cdef bint contains(self, int port) noexcept

cdef class Facts:              # one request, as the engine sees it
    cdef object principal      # str "td/ns/x/sa/y" or None (no identity)
    cdef object namespace
    cdef object service_account    # "ns/sa"
    cdef bint derived
    cdef IpAddr src
    cdef IpAddr dst
    cdef IpAddr remote
    cdef int port
    cdef object method
    cdef object path
    cdef object host
    cdef dict headers
    cdef object request_principal
    cdef object sni
    cdef void derive(self)

cdef class CMatch:
    cdef uint32_t present      # bit per field set (see policy.pyx)
    cdef StrSet namespaces, not_namespaces, principals, not_principals
    cdef StrSet service_accounts, not_service_accounts
    cdef IpSet source_ips, not_source_ips, destination_ips, not_destination_ips
    cdef IpSet remote_ips, not_remote_ips
    cdef PortSet ports, not_ports
    cdef StrSet request_principals, not_request_principals, methods, not_methods
    cdef StrSet paths, not_paths, hosts, not_hosts, sni, not_sni
    cdef tuple headers         # ((name, StrSet), ...)
    cdef tuple not_headers
    cdef bint matches(self, Facts f)

cdef class CRule:
    cdef tuple clauses         # tuple of tuples of CMatch
    cdef Decision allowed_by   # its policy's decisions (no reference back to the policy,
    cdef Decision denied_by    # so compiled rules form no cycles and skip the GC)
    cdef Py_ssize_t order
    cdef bint matches(self, Facts f)
    cdef frozenset required_principals(self)
    cdef list required_source_ips(self)

cdef class CompiledPolicy:
    cdef readonly str key
    cdef readonly str action
    cdef readonly bint dry_run
    cdef readonly object source        # the model Policy
    cdef list rules                    # CRule
    cdef Py_ssize_t order
    cdef Decision allowed_by
    cdef Decision denied_by

cdef class RuleGroup:                  # the rules of one action for one workload
    cdef dict by_principal             # exact principal -> [CRule] in policy order
    cdef list by_source                # [CRule] that need a source IP in their ranges
    cdef IpSet source_union            # every range of by_source: one bisection rejects all
    cdef list unindexed                # [CRule] in policy order
    cdef list policies                 # [CompiledPolicy]
    cdef CRule first_match(self, Facts f)

cdef class Decision:
    cdef readonly bint allowed
    cdef readonly str policy           # "namespace/name" that decided, or None
    cdef readonly str action           # "ALLOW" / "DENY" of that policy, or None
    cdef readonly str reason
    cdef readonly tuple audit          # AUDIT policies that matched
    cdef readonly tuple dry_run        # dry-run policies that matched
    cdef readonly object shadow_allowed    # the decision with dry-run policies enforced

cdef class PolicySet:
    cdef RuleGroup deny, allow, audit, dry_deny, dry_allow
    cdef bint has_allow, has_dry_allow, extras
    cdef Decision allow_default, deny_default
    cpdef Decision evaluate(self, object principal, object source_ip, object destination_ip,
                            int destination_port, object method=*, object path=*, object host=*,
                            dict headers=*, object request_principal=*, object sni=*,
                            object remote_ip=*)
    cdef Decision decide(self, Facts f)
    cdef Decision _with_extras(self, Decision d, Facts f)
