"""Agent policies: ``rules`` (transparent defaults) and ``learning`` (a contextual bandit)."""

from dlagent.agent.policies.base import BUILTIN_POLICIES, Policy, load_policy

__all__ = ["BUILTIN_POLICIES", "Policy", "load_policy"]
