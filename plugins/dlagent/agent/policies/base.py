"""The policy interface, in Optuna's pluggable shape: one base class, one abstract method.

A policy turns an :class:`~dlagent.agent.observe.Observation` into a plan (a dict valid for
:func:`~dlagent.agent.plan.validate_plan`), saying why for every decision. Policies that learn
from outcomes also implement :meth:`Policy.update`.

:func:`load_policy` accepts ``"rules"``, ``"learning"`` or the dotted path of any
:class:`Policy` subclass (``"my_pkg.policies.MyPolicy"``).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

from dlagent.errors import ConfigError

BUILTIN_POLICIES = {
    "rules": "dlagent.agent.policies.rules.RulesPolicy",
    "learning": "dlagent.agent.policies.learning.LearningPolicy",
}


class Policy(ABC):
    """Decide the next plan from an observation.

    Subclasses validate their arguments in ``__init__`` (``ConfigError`` naming the argument
    and the value) and keep ``decide`` deterministic for a given observation and state.
    """

    #: the name recorded in ``plan["policy"]["name"]``
    name: str = "policy"
    #: True when the policy keeps state across DAG runs and takes a ``store`` argument
    uses_store: bool = False

    @abstractmethod
    def decide(self, observation) -> dict:
        """Return a plan (see :mod:`dlagent.agent.plan`) with a reason for every decision."""

    def budget(self, observation, request: dict) -> dict:
        """The first tuning round's plan, made before any trial (phase ``budget``).

        ``request`` holds the Params' tuning settings (``n_trials``, ``n_workers``,
        ``trial_epochs``, ``min_trial_epochs``, ``search_space``, ``seed_studies``) and ``data``
        (the validate task's summary of the data set: sizes, input shape, classes). Returns a
        plan whose ``tune`` section the tuning tasks run. This default keeps the Params as
        given; :class:`~dlagent.agent.policies.rules.RulesPolicy` plans the round."""
        from dlagent.agent.plan import TUNE_KEYS

        tune = {key: None if request.get(key) == "" else request.get(key) for key in TUNE_KEYS}
        return {"action": "deploy", "tune": tune, "policy": {"name": self.name, "arm": None, "context": None},
                "reasons": [{"decision": "tune: as the Params say", "because": f"policy {self.name!r} plans no first round"}]}

    def update(self, reward: float, *, plan: dict | None = None, key: str | None = None) -> bool:
        """Learn from the reward of a finished run; stateless policies ignore it (False)."""
        return False


def policy_class(name_or_class_path: str) -> type[Policy]:
    """The :class:`Policy` subclass a name (``rules``, ``learning``) or dotted class path names."""
    if not isinstance(name_or_class_path, str) or not name_or_class_path.strip():
        raise ConfigError("policy", f"must be a policy name or dotted class path, got {name_or_class_path!r}.",
                          f"use one of {sorted(BUILTIN_POLICIES)} or 'package.module.ClassName'.")
    name = name_or_class_path.strip()
    path = BUILTIN_POLICIES.get(name)
    if path is None:
        if "." not in name:
            raise ConfigError("policy", f"unknown policy {name!r}.", f"use one of {sorted(BUILTIN_POLICIES)} or 'package.module.ClassName'.")
        path = name
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("policy", f"cannot import module {module_name!r} for policy {name!r}: {exc}.", "check the dotted path and that the package is installed.") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise ConfigError("policy", f"{path!r} is not a dlagent Policy class (got {cls!r}).", "point at a subclass of dlagent.agent.policies.Policy.")
    return cls


def load_policy(name_or_class_path: str, *, store=None, **kwargs) -> Policy:
    """Instantiate a policy by name (``rules``, ``learning``) or dotted class path.

    ``store`` (a :mod:`~dlagent.agent.policies.learning` state store) is passed only to
    policies with ``uses_store = True``; other ``kwargs`` go to the constructor, whose
    ``ConfigError``/``TypeError`` for a bad argument is reported under field ``policy``.
    """
    cls = policy_class(name_or_class_path)
    if cls.uses_store:
        kwargs["store"] = store
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"policy.{exc.field}", exc.problem, exc.fix) from exc
    except TypeError as exc:
        raise ConfigError("policy", f"bad arguments for {cls.__module__}.{cls.__name__}: {exc}.", "pass only the arguments the policy documents.") from exc
