"""Authorization: Istio AuthorizationPolicy semantics (POLICY.md) compiled to lookup tables."""
from meshcore.policy.istio import authorization_policy, load_authorization_policies
from meshcore.policy.model import Action, Match, Policy, Scope, StringMatch, Workload, applies_to
from meshcore.policy.ztunnel import ztunnel_policy

__all__ = ["Action", "Match", "Policy", "Scope", "StringMatch", "Workload", "applies_to",
           "authorization_policy", "load_authorization_policies", "ztunnel_policy"]
