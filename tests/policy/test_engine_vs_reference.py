"""The compiled engine against the reference evaluator on random policy sets and
random requests (both layers)."""
import ipaddress

from hypothesis import HealthCheck, given, settings, strategies as st

from meshcore._core.policy import PolicyEngine
from meshcore.policy.model import Action, Match, Policy, PolicyTarget, Scope, StringMatch

from reference import Request, decide

PRINCIPALS = ["cluster.local/ns/a/sa/x", "cluster.local/ns/a/sa/y", "cluster.local/ns/b/sa/x",
              "other.local/ns/b/sa/z"]
NAMESPACES = ["a", "b", "c"]
IPS = ["10.0.0.1", "10.0.1.7", "192.168.3.4", "fd00::1", "fd00::1:5"]
NETS = ["10.0.0.0/24", "10.0.0.0/16", "10.0.1.7/32", "192.168.0.0/16", "fd00::/64", "fd00::1/128",
        "0.0.0.0/0"]
PORTS = [80, 443, 8080, 9999]
METHODS = ["GET", "POST", "DELETE"]
PATHS = ["/", "/charge", "/charge/1", "/admin"]
HOSTS = ["shop.example", "shop.example:8080", "api.shop.example"]

def strmatch(pool):
    return st.one_of(
        st.sampled_from(pool).map(lambda v: StringMatch("exact", v)),
        st.sampled_from(pool).map(lambda v: StringMatch("prefix", v[: max(1, len(v) // 2)])),
        st.sampled_from(pool).map(lambda v: StringMatch("suffix", v[len(v) // 2:])),
        st.just(StringMatch("presence")))


def tup(strategy, max_size=2):
    return st.lists(strategy, max_size=max_size).map(tuple)


nets = st.sampled_from(NETS).map(ipaddress.ip_network)
L4 = dict(
    namespaces=tup(strmatch(NAMESPACES)), not_namespaces=tup(strmatch(NAMESPACES)),
    principals=tup(strmatch(PRINCIPALS)), not_principals=tup(strmatch(PRINCIPALS)),
    service_accounts=tup(st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(["x", "y"]))),
    not_service_accounts=tup(st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(["x", "y"]))),
    source_ips=tup(nets), not_source_ips=tup(nets), destination_ips=tup(nets),
    not_destination_ips=tup(nets), destination_ports=tup(st.sampled_from(PORTS)),
    not_destination_ports=tup(st.sampled_from(PORTS)))
L7 = dict(
    methods=tup(strmatch(METHODS)), not_methods=tup(strmatch(METHODS)),
    paths=tup(strmatch(PATHS)), not_paths=tup(strmatch(PATHS)),
    hosts=tup(strmatch(HOSTS)), not_hosts=tup(strmatch(HOSTS)),
    headers=tup(st.tuples(st.sampled_from(["x-tenant", "x-env"]),
                          st.lists(strmatch(["gold", "prod"]), min_size=1, max_size=2).map(tuple)), 1),
    not_headers=tup(st.tuples(st.sampled_from(["x-tenant"]),
                              st.lists(strmatch(["gold"]), min_size=1, max_size=1).map(tuple)), 1),
    request_principals=tup(strmatch(["issuer/alice", "issuer/bob"])))


@st.composite
def matches(draw, with_l7):
    fields = dict(L4, **(L7 if with_l7 else {}))
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True))
    return Match(**{name: draw(fields[name]) for name in chosen})


@st.composite
def policies(draw, with_l7):
    n = draw(st.integers(0, 6))
    out = []
    for i in range(n):
        rules = draw(st.lists(st.lists(st.lists(matches(with_l7), max_size=3).map(tuple), max_size=3).map(tuple),
                              max_size=3).map(tuple))
        namespace = draw(st.sampled_from(NAMESPACES + ["istio-system"]))
        selector = draw(st.one_of(st.none(), st.just((("app", "web"),)), st.just((("app", "db"),))))
        out.append(Policy(
            f"p{i}", namespace, draw(st.sampled_from(list(Action))), rules,
            Scope.WORKLOAD_SELECTOR if selector else (Scope.GLOBAL if namespace == "istio-system" else Scope.NAMESPACE),
            selector, draw(st.booleans()) and draw(st.booleans())))
    return out


requests = st.builds(
    Request, st.one_of(st.none(), st.sampled_from(PRINCIPALS)), st.sampled_from(IPS),
    st.sampled_from(IPS), st.sampled_from(PORTS), st.one_of(st.none(), st.sampled_from(METHODS)),
    st.one_of(st.none(), st.sampled_from(PATHS)), st.one_of(st.none(), st.sampled_from(HOSTS)),
    st.one_of(st.none(), st.fixed_dictionaries({}, optional={"x-tenant": st.sampled_from(["gold", "silver"]),
                                                              "x-env": st.sampled_from(["prod", "dev"])})),
    st.one_of(st.none(), st.sampled_from(["issuer/alice", "issuer/bob"])))
workloads = st.builds(lambda ns, app: PolicyTarget.of(ns, {"app": app}),
                      st.sampled_from(NAMESPACES), st.sampled_from(["web", "db"]))


def check(layer, policy_list, workload, reqs):
    engine = PolicyEngine(policy_list, layer=layer)
    table = engine.for_workload(workload)
    for r in reqs:
        d = table.evaluate(r.principal, r.source_ip, r.destination_ip, r.port, r.method, r.path,
                           r.host, r.headers, r.request_principal)
        allowed, deciders, audit, dry = decide(policy_list, workload, r, layer)
        assert d.allowed == allowed, (d, allowed, deciders)
        assert d.policy in deciders, (d.policy, deciders)
        assert set(d.audit) == audit and set(d.dry_run) == dry


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=policies(with_l7=False), w=workloads, reqs=st.lists(requests, min_size=1, max_size=8))
def test_l4_policies(p, w, reqs):
    check("l4", p, w, reqs)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=policies(with_l7=True), w=workloads, reqs=st.lists(requests, min_size=1, max_size=8),
       layer=st.sampled_from(["l4", "l7"]))
def test_l7_policies_at_both_layers(p, w, reqs, layer):
    check(layer, p, w, reqs)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions=st.lists(policies(with_l7=False), min_size=2, max_size=4), w=workloads,
       reqs=st.lists(requests, min_size=1, max_size=6))
def test_an_engine_changed_step_by_step_decides_as_a_fresh_one(versions, w, reqs):
    """Each step puts one policy set in force as a delta (upserts, and removes of what
    it no longer has); the engine in force before a step keeps deciding as it did."""
    engine = PolicyEngine(versions[0])
    for policy_list in versions[1:]:
        before, before_table = engine, engine.for_workload(w)
        kept = [before_table.evaluate(r.principal, r.source_ip, r.destination_ip, r.port).allowed for r in reqs]
        keys = {p.key for p in policy_list}
        engine, rejected = engine.changed(policy_list, [p.key for p in before.policies if p.key not in keys])
        assert not rejected
        fresh = PolicyEngine(policy_list).for_workload(w)
        table = engine.for_workload(w)
        for r in reqs:
            args = (r.principal, r.source_ip, r.destination_ip, r.port)
            assert table.evaluate(*args).allowed == fresh.evaluate(*args).allowed
        assert [before.for_workload(w).evaluate(r.principal, r.source_ip, r.destination_ip, r.port).allowed
                for r in reqs] == kept
