"""ztunnel's shape for policy benchmarks: 10,000 policies x 10 rules.

1,000 namespaces, each with 8 workload-selector ALLOW policies (app0..app7), one
namespace-wide ALLOW and one namespace-wide DENY; every rule names a source
principal and a destination port, DENY rules name source IP blocks; plus two
mesh-wide DENY policies on IP blocks in the root namespace.
"""
import ipaddress

from meshcore.policy.model import Action, Match, Policy, PolicyTarget, Scope, StringMatch

N_NAMESPACES = 1000
RULES = 10


def principal(ns: int, sa: int) -> str:
    return f"cluster.local/ns/ns{ns % N_NAMESPACES}/sa/sa{sa}"


def build() -> list[Policy]:
    out = []
    for i in range(N_NAMESPACES):
        ns = f"ns{i}"
        for j in range(8):
            rules = tuple(
                ((Match(principals=(StringMatch("exact", principal(i + k, j)),)),),
                 (Match(destination_ports=(8000 + k,)),))
                for k in range(RULES))
            out.append(Policy(f"app{j}", ns, Action.ALLOW, rules, Scope.WORKLOAD_SELECTOR,
                              (("app", f"app{j}"),)))
        out.append(Policy("ns-allow", ns, Action.ALLOW, tuple(
            ((Match(namespaces=(StringMatch("exact", f"ns{(i + k) % N_NAMESPACES}"),),
                    destination_ports=(9000 + k,)),),) for k in range(RULES)), Scope.NAMESPACE))
        out.append(Policy("ns-deny", ns, Action.DENY, tuple(
            ((Match(source_ips=(ipaddress.ip_network(f"172.{16 + k}.{i % 256}.0/24"),)),),)
            for k in range(RULES)), Scope.NAMESPACE))
    for g in range(2):
        out.append(Policy(f"mesh-deny-{g}", "istio-system", Action.DENY, tuple(
            ((Match(source_ips=(ipaddress.ip_network(f"100.{64 + g}.{k}.0/24"),)),),) for k in range(RULES)),
            Scope.GLOBAL))
    return out


WORKLOAD = PolicyTarget.of("ns500", {"app": "app3"})
# (principal, source ip, destination ip, port): allowed by shop/app3 rule 4; denied (no rule)
ALLOWED = (principal(504, 3), "10.1.2.3", "10.9.0.1", 8004)
DENIED = (principal(504, 5), "10.1.2.3", "10.9.0.1", 8004)
DENIED_BY_IP = (principal(504, 3), "172.20.244.9", "10.9.0.1", 8004)
