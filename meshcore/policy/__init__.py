"""Authorization: Istio AuthorizationPolicy semantics (docs/policy.md) compiled to lookup tables.

    from meshcore.policy import PolicyEngine, PolicyTarget, load_authorization_policies
    engine = PolicyEngine(load_authorization_policies(text, "policy.yaml"))
    decision = engine.evaluate(PolicyTarget.of("shop", {"app": "web"}), principal, src_ip, dst_ip, port)
"""
from meshcore.policy.istio import authorization_policy, load_authorization_policies
from meshcore.policy.layers import l4_reductions
from meshcore.policy.model import (Action, Match, Policy, PolicyTarget, Scope, StringMatch, TargetRef, applies_to,
                                   resolved_scope, waypoint_policies)
from meshcore.policy.ztunnel import ztunnel_policy



def __getattr__(name: str):
    # the compiled engine imports this package's modules, so it is reached lazily
    if name in ("PolicyEngine", "Decision"):
        from meshcore._core import policy
        return getattr(policy, name)
    raise AttributeError(f"module 'meshcore.policy' has no attribute {name!r}")

__all__ = ["Action", "Decision", "Match", "Policy", "PolicyEngine", "PolicyTarget", "Scope", "StringMatch",
           "applies_to", "authorization_policy", "l4_reductions", "load_authorization_policies",
           "resolved_scope", "TargetRef", "waypoint_policies", "ztunnel_policy"]
