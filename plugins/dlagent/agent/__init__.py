"""The agent: observe a pipeline run in MLflow, decide the next plan, say why.

Nothing here imports Airflow (the operators call in; notebooks and benchmarks can too).

:func:`run_agent` is the whole decision, end to end: it opens the policy's state store,
loads the policy, observes the run, rewards the plan that steered it (phase ``decide``),
asks the policy for the next plan and validates it once (a :class:`~dlagent.agent.plan.Plan`)::

    from dlagent.agent import run_agent
    from dlagent.agent.plan import log_plan

    outcome = run_agent(client, experiment_id, parent_run_id, policy="learning", champion_name="dlagent-digits")
    log_plan(client, agent_run_id, outcome.plan, outcome.observation)   # decisions.json + observation.json
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("budget", "plan", "decide")


@dataclass(frozen=True)
class AgentOutcome:
    """What :func:`run_agent` decided: the plan, what it saw, and the reward it credited (``decide``)."""

    plan: object  # dlagent.agent.plan.Plan
    observation: object  # dlagent.agent.observe.Observation
    reward: dict | None = None

    def __iter__(self):
        """``plan, observation = run_agent(...)`` still reads naturally."""
        return iter((self.plan, self.observation))


def run_agent(client, experiment_id: str, parent_run_id: str, *, policy="rules", phase: str = "plan",
              champion_name: str | None = None, store=None, resources: dict | None = None, observation=None,
              reward_key: str | None = None, request: dict | None = None, **policy_kwargs) -> AgentOutcome:
    """Observe -> (reward) -> decide -> validate once. Returns an :class:`AgentOutcome`.

    ``policy`` is a name (``rules``, ``learning``), a dotted class path, or a ``Policy``
    instance. A policy that keeps state gets a ``store``; without one, the state lives in MLflow
    (:class:`~dlagent.agent.policies.learning.MLflowStateStore` in ``experiment_id``, one per
    policy name). ``observation``: one already read, used as is. In phase ``decide`` the plan
    made in phase ``plan`` of the same run is read back from MLflow and the policy is rewarded
    for it first (:func:`reward_run`, idempotent under ``reward_key``, e.g. ``dag_id/run_id``);
    the plan's reasons then say what was credited. In phase ``budget`` (before tuning) the
    policy plans the first tuning round (:meth:`~dlagent.agent.policies.base.Policy.budget`)
    from ``request`` (the Params' tuning settings and the data set's summary) and the
    champion's history (``observation.champion["history"]``,
    :func:`~dlagent.agent.run_views.champion_history`).
    """
    from dlagent.agent.observe import observe
    from dlagent.agent.plan import Plan
    from dlagent.agent.policies.base import Policy, load_policy
    from dlagent.agent.runs import read_planned

    if phase not in PHASES:
        from dlagent.errors import ConfigError

        raise ConfigError("phase", f"must be one of {list(PHASES)}, got {phase!r}.",
                          "use 'budget' before tuning, 'plan' after tuning and 'decide' after evaluation.")
    if observation is None:
        observation = observe(client, experiment_id, parent_run_id, champion_name, resources=resources)
        if phase == "budget" and observation.champion is not None:  # how the champion was tuned, on which data
            from dlagent.agent.run_views import champion_history

            observation.champion["history"] = champion_history(client, observation.champion)
    if not isinstance(policy, Policy):
        if store is None and _keeps_state(policy):
            from dlagent.agent.policies.state import MLflowStateStore

            store = MLflowStateStore(client, observation.experiment_id, policy_key=_store_key(policy))
        policy = load_policy(policy, store=store, **policy_kwargs)
    reward = None
    if phase == "decide":
        planned = read_planned(client, observation.experiment_id, observation.parent_run_id)
        reward = reward_run(policy, observation, planned, key=reward_key)
    decided = policy.budget(observation, dict(request or {})) if phase == "budget" else policy.decide(observation)
    plan = Plan.from_dict(decided).with_reasons(phase_reasons(phase, reward))
    return AgentOutcome(plan=plan, observation=observation, reward=reward)


def _keeps_state(policy) -> bool:
    from dlagent.agent.policies.base import policy_class

    return bool(getattr(policy_class(policy), "uses_store", False))


def _store_key(policy: str) -> str:
    """The state store of a policy name: ``learning`` for the built-in, else its (tail of the) dotted path."""
    name = policy.strip()
    return "learning" if name == "learning" else name[-200:]


def phase_reasons(phase: str, reward: dict | None) -> list[dict]:
    """The reasons a phase adds to the policy's own: what phase ``plan`` means, what was rewarded."""
    if phase == "budget":
        return [{"decision": "phase=budget",
                 "because": "made before tuning, from the Params, the data set's size, the free memory and the champion's history: the tuning tasks "
                            "run this plan's tune section; agent_policy 'off' runs the Params as given"}]
    if phase == "plan":
        return [{"decision": "phase=plan",
                 "because": "made after tuning: downstream tasks take train, compress and controller from this plan; "
                            "its action is provisional and is decided again after evaluation (phase decide)"}]
    if reward is None:
        return []
    if reward["reward"] is None:
        return [{"decision": "reward: none recorded", "because": reward["because"]}]
    verb = "recorded" if reward["recorded"] else "already recorded"
    return [{"decision": f"reward {reward['reward']:.6g} {verb}", "because": reward["because"]}]


def reward_run(policy, observation, planned, *, key: str | None = None) -> dict:
    """Credit the reward of a finished pipeline run to the plan that steered it.

    For policies that learn (those with ``reward_from_observation``, e.g. ``learning``):
    ``R = a * gain - b * seconds - c * compute`` with ``gain`` the run's best evaluated primary
    metric on the validation split (:attr:`Observation.reference_score`, ``val_<metric>``; on the
    rows the champion never trained on where it trained on another split,
    :meth:`Observation.versus_champion`) over
    ``baseline``, the champion's on the same rows (:attr:`Observation.champion_score`; no
    champion: no gain), in the metric's points over 100 (a
    fraction of accuracy; for rmse a fraction of the champion's), ``seconds`` and
    ``compute`` the run's ``compute.run_seconds`` and ``compute.epochs``. ``planned`` is the
    plan made for this run (its ``policy.arm`` and ``policy.context`` say what to credit);
    ``key`` (``dag_id/run_id``) makes it idempotent.

    Returns ``{"recorded": bool, "reward": float | None, "value", "baseline", "because"}``;
    when nothing can be credited, ``because`` says why (never a made-up reward).
    """
    from dlagent.agent.observe import Observation

    obs = observation if isinstance(observation, Observation) else Observation.from_dict(observation)
    metric = obs.primary
    out = {"recorded": False, "reward": None, "value": obs.reference_score, "baseline": None, "because": ""}
    if not callable(getattr(policy, "reward_from_observation", None)):
        out["because"] = f"policy {getattr(policy, 'name', policy)!r} does not learn from rewards"
        return out
    section = (planned or {}).get("policy") or {}
    if planned is None:
        out["because"] = "no plan made for this run was found (no agent run of phase 'plan' under it): nothing to credit"
        return out
    if section.get("name") != policy.name or not section.get("arm"):
        out["because"] = (f"the plan of this run was made by policy {section.get('name')!r} without an arm of policy "
                          f"{policy.name!r}: nothing to credit")
        return out
    if out["value"] is None:
        out["because"] = f"no evaluated {metric.val_key} in this run: nothing to reward"
        return out
    out["value"], baseline = obs.reward_scores  # on the same rows: those the champion never trained on, where it trained on others
    out["baseline"] = baseline
    fair = obs.versus_champion("reference") is not None
    reward = policy.reward_from_observation(obs, out["value"], baseline)
    out["reward"] = reward
    out["recorded"] = bool(policy.update(reward, plan=planned, key=key))
    gain = f"{metric.val_key} {out['value']:.4f} vs champion {baseline:.4f}" + (
        " (both on the validation rows the champion never trained on)" if fair else "") if baseline is not None else \
        f"{metric.val_key} {out['value']:.4f}, no champion measured on validation (no gain counted)"
    cost = f"{obs.compute.get('run_seconds') or 0:g} s, {obs.compute.get('epochs') or 0:g} epochs"
    out["because"] = (f"{gain}; {cost}; arm {section['arm']} in context {section.get('context')!r}"
                      + ("" if out["recorded"] else f"; already rewarded under key {key!r}, not counted twice"))
    return out


__all__ = ["PHASES", "AgentOutcome", "phase_reasons", "reward_run", "run_agent"]
