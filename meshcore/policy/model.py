"""The authorization model: ztunnel's compiled form, extended with the L7 fields a
waypoint evaluates. Istio AuthorizationPolicy resources and ztunnel local-config
policies both load into it (see istio.py, ztunnel.py); the compiled engine
(meshcore._core.policy) evaluates it.

    Policy.rules:  rules OR'ed  → a rule is clauses AND'ed → a clause is matches OR'ed
    Match:         fields AND'ed, values of one field OR'ed, not_* pass when none match
    An all-empty match never matches; an empty clause matches; a rule with no clauses
    matches; a policy with no rules never matches.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, fields
from sys import intern

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"


class Scope(enum.Enum):
    GLOBAL = "Global"               # the whole mesh, whatever the policy's namespace
    NAMESPACE = "Namespace"         # no selector: every workload of the namespace
    WORKLOAD_SELECTOR = "WorkloadSelector"
    # An Istio AuthorizationPolicy without a selector: Global in the root namespace,
    # Namespace elsewhere (as istiod converts it for ztunnel). The root namespace is an
    # option of whoever selects policies (meshConfig.rootNamespace), not of the file, so
    # this is resolved at selection (resolved_scope), never when the policy is read.
    ROOT_OR_NAMESPACE = "RootOrNamespace"
    # attached by `targetRefs` to waypoints: enforced there, never by a node proxy
    # (istiod sends ztunnel no policy that has targetRefs)
    TARGET_REFS = "TargetRefs"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """exact, prefix, suffix, presence (non-empty) or a path template (paths.py)."""
    kind: str
    value: str = ""

    @classmethod
    def istio(cls, text: str) -> "StringMatch":
        """Istio's notation: `*` presence, `abc*` prefix, `*abc` suffix, else exact. The
        value is interned: policies name the same principals and namespaces over and over."""
        if text == "*":
            return cls("presence")
        if text.endswith("*"):
            return cls("prefix", intern(text[:-1]))
        if text.startswith("*"):
            return cls("suffix", intern(text[1:]))
        return cls("exact", intern(text))

    def matches(self, value: str | None) -> bool:
        if not value:
            return False
        if self.kind == "template":
            from meshcore.policy.paths import template_regex
            return template_regex(self.value).fullmatch(value) is not None
        if self.kind == "exact":
            return value == self.value
        if self.kind == "prefix":
            return value.startswith(self.value)
        if self.kind == "suffix":
            return value.endswith(self.value)
        return True

    def __str__(self) -> str:
        return {"exact": self.value, "prefix": self.value + "*", "suffix": "*" + self.value,
                "presence": "*", "template": self.value}[self.kind]


Strings = tuple[StringMatch, ...]
HeaderMatches = tuple[tuple[str, Strings], ...]    # (lower-case header name, values)

L4_FIELDS = ("namespaces", "not_namespaces", "principals", "not_principals", "service_accounts",
             "not_service_accounts", "source_ips", "not_source_ips", "destination_ips",
             "not_destination_ips", "destination_ports", "not_destination_ports")
L7_FIELDS = ("remote_ips", "not_remote_ips", "request_principals", "not_request_principals",
             "methods", "not_methods", "paths", "not_paths", "hosts", "not_hosts", "headers",
             "not_headers", "sni", "not_sni")


@dataclass(frozen=True, slots=True)
class Match:
    # L4: what a node proxy sees
    namespaces: Strings = ()
    not_namespaces: Strings = ()
    principals: Strings = ()              # written without spiffe://
    not_principals: Strings = ()
    service_accounts: tuple[tuple[str, str], ...] = ()    # (namespace, service account)
    not_service_accounts: tuple[tuple[str, str], ...] = ()
    source_ips: tuple[IpNetwork, ...] = ()
    not_source_ips: tuple[IpNetwork, ...] = ()
    destination_ips: tuple[IpNetwork, ...] = ()
    not_destination_ips: tuple[IpNetwork, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    # L7: only a waypoint sees these
    remote_ips: tuple[IpNetwork, ...] = ()
    not_remote_ips: tuple[IpNetwork, ...] = ()
    request_principals: Strings = ()
    not_request_principals: Strings = ()
    methods: Strings = ()
    not_methods: Strings = ()
    paths: Strings = ()
    not_paths: Strings = ()
    hosts: Strings = ()
    not_hosts: Strings = ()
    headers: HeaderMatches = ()
    not_headers: HeaderMatches = ()
    sni: Strings = ()
    not_sni: Strings = ()

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))



Clause = tuple[Match, ...]
Rule = tuple[Clause, ...]


GATEWAY_GROUP = "gateway.networking.k8s.io"
WAYPOINT_CLASS = "istio-waypoint"


@dataclass(frozen=True, slots=True)
class TargetRef:
    """One entry of an AuthorizationPolicy's `targetRefs` (or its `targetRef`), in the
    policy's own namespace. kind: Gateway, GatewayClass, Service or ServiceEntry; group
    as Istio canonicalizes it ("core" for a Service written with group "")."""
    kind: str
    group: str
    name: str
    path: str = field(default="", compare=False)        # where the file wrote it, for messages

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    namespace: str
    action: Action
    rules: tuple[Rule, ...]
    scope: Scope = Scope.NAMESPACE
    selector: tuple[tuple[str, str], ...] | None = None     # matchLabels, sorted
    dry_run: bool = False
    source: str = ""                                         # where it was loaded from
    target_refs: tuple[TargetRef, ...] = ()                  # waypoint attachment (waypoint_policies)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PolicyTarget:
    """A destination workload as policy selection sees it: namespace, labels, name and
    the policies attached to it by name (meshcore.state.model.Workload.policy_view())."""
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    name: str = ""
    attached: tuple[str, ...] = ()      # ztunnel: authorizationPolicies ["ns/name", ...]

    @classmethod
    def of(cls, namespace: str, labels: dict | None = None, name: str = "",
           attached=()) -> "PolicyTarget":
        return cls(namespace, tuple(sorted((labels or {}).items())), name, tuple(attached))


def resolved_scope(policy: Policy, root_namespace: str) -> Scope:
    """The ztunnel scope a policy has in a mesh whose root namespace is `root_namespace`
    (what istiod would send ztunnel): Global, Namespace or WorkloadSelector."""
    if policy.scope is Scope.ROOT_OR_NAMESPACE:
        return Scope.GLOBAL if policy.namespace == root_namespace else Scope.NAMESPACE
    return policy.scope


def applies_to(policy: Policy, workload: PolicyTarget, root_namespace: str) -> bool:
    """Which policies apply to a destination workload (docs/policy.md), as ztunnel decides
    for its own scopes: Global applies mesh-wide whatever its namespace; Namespace to
    its own namespace only, root namespace included; WorkloadSelector only to the
    workloads that list it in `authorizationPolicies`. An Istio AuthorizationPolicy
    without a selector is Global in the root namespace, Namespace elsewhere; with one,
    it applies to the matching workloads of its namespace (of every namespace from
    the root namespace). A policy with targetRefs is a waypoint's (waypoint_policies),
    never a node's."""
    if policy.target_refs:
        return False
    if policy.key in workload.attached:
        return True
    if policy.selector is None:
        scope = resolved_scope(policy, root_namespace)
        if scope is Scope.GLOBAL:
            return True
        if scope is Scope.WORKLOAD_SELECTOR:
            return False        # ztunnel form: attached by name only
        return policy.namespace == workload.namespace
    if policy.namespace != workload.namespace and policy.namespace != root_namespace:
        return False
    labels = dict(workload.labels)
    return all(labels.get(k) == v for k, v in policy.selector)


def target_ref_problem(policy: Policy, root_namespace: str) -> str | None:
    """Why a mesh whose root namespace is `root_namespace` cannot take this policy, or
    None. A GatewayClass attachment reaches every waypoint, so only the root namespace
    may write one; istiod would ignore it elsewhere, and a policy silently enforced
    nowhere is worse than a refused one. Known only where the root namespace is."""
    for ref in policy.target_refs:
        if ref.kind == "GatewayClass" and policy.namespace != root_namespace:
            return (f"{ref.path or 'spec.targetRefs'}: a GatewayClass {ref.name} attachment applies to every "
                    f"waypoint and is taken from the root namespace {root_namespace} only, not from "
                    f"{policy.namespace}")
    return None


def attached_to_waypoint(policy: Policy, waypoint: tuple[str, str], service: tuple[str, str] | None,
                         root_namespace: str, service_kind: str = "Service") -> bool:
    """Whether a waypoint enforces this policy for traffic to `service`, as istiod
    attaches policies to a waypoint: a Gateway targetRef naming the waypoint, a Service
    (ServiceEntry) targetRef naming the service, both in the policy's namespace; a
    GatewayClass istio-waypoint targetRef from the root namespace. Selector and
    namespace-wide policies are never a waypoint's: they stay the destination node's."""
    for ref in policy.target_refs:
        if ref.kind == "GatewayClass":
            if ref.name == WAYPOINT_CLASS and policy.namespace == root_namespace:
                return True
        elif ref.kind == "Gateway":
            if (policy.namespace, ref.name) == tuple(waypoint):
                return True
        elif service is not None and ref.kind == service_kind:
            if (policy.namespace, ref.name) == tuple(service):
                return True
    return False


def waypoint_policies(policies, *, waypoint: tuple[str, str], service: tuple[str, str] | None,
                      root_namespace: str, service_kind: str = "Service") -> list[Policy]:
    """The policies a waypoint (namespace, name) enforces on a request to `service`
    (namespace, name; None for traffic addressed to a workload), in the order given."""
    return [p for p in policies
            if attached_to_waypoint(p, waypoint, service, root_namespace, service_kind)]
