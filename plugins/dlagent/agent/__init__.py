"""The agent: observe a pipeline run in MLflow, decide the next plan, say why.

Nothing here imports Airflow (the operators call in; notebooks and benchmarks can too).

Typical use (what ``AgentOperator`` does)::

    from dlagent.agent import run_agent
    from dlagent.agent.plan import log_plan

    plan, observation = run_agent(client, experiment_id, parent_run_id, policy="learning",
                                  champion_name="dlagent-digits")
    log_plan(client, agent_run_id, plan, observation)   # decisions.json + observation.json
"""

from __future__ import annotations


def run_agent(client, experiment_id: str, parent_run_id: str, *, policy="rules", champion_name: str | None = None,
              store=None, resources: dict | None = None, observation=None, **policy_kwargs):
    """Observe -> decide -> validate. Returns ``(plan, observation)``.

    ``policy`` is a name (``rules``, ``learning``), a dotted class path, or a ``Policy``
    instance. For ``learning`` without a ``store``, the state lives in MLflow
    (:class:`~dlagent.agent.policies.learning.MLflowStateStore` in ``experiment_id``).
    An ``observation`` already read (e.g. to reward the run first, see :func:`reward_run`)
    is used as is instead of reading MLflow again.
    """
    from dlagent.agent.observe import observe
    from dlagent.agent.plan import validate_plan
    from dlagent.agent.policies.base import Policy, load_policy

    if observation is None:
        observation = observe(client, experiment_id, parent_run_id, champion_name, resources=resources)
    if not isinstance(policy, Policy):
        if store is None and policy == "learning":
            from dlagent.agent.policies.learning import MLflowStateStore

            store = MLflowStateStore(client, observation.experiment_id)
        policy = load_policy(policy, store=store, **policy_kwargs)
    plan = validate_plan(policy.decide(observation))
    return plan, observation


def reward_run(policy, observation, planned: dict | None, *, key: str | None = None) -> dict:
    """Credit the reward of a finished pipeline run to the plan that steered it.

    For policies that learn (those with ``reward_from_observation``, e.g. ``learning``):
    ``R = a * (accuracy - baseline) - b * seconds - c * compute`` with ``accuracy`` the run's
    best evaluated ``test_accuracy`` (:attr:`Observation.reference_accuracy`), ``baseline``
    the champion's ``test_accuracy`` before the run (no champion: no gain), ``seconds`` and
    ``compute`` the run's ``compute.run_seconds`` and ``compute.epochs``. ``planned`` is the
    plan made for this run (its ``policy.arm`` and ``policy.context`` say what to credit);
    ``key`` (``dag_id/run_id``) makes it idempotent.

    Returns ``{"recorded": bool, "reward": float | None, "accuracy", "baseline", "because"}``;
    when nothing can be credited, ``because`` says why (never a made-up reward).
    """
    from dlagent.agent.observe import Observation

    obs = observation if isinstance(observation, Observation) else Observation.from_dict(observation)
    out = {"recorded": False, "reward": None, "accuracy": obs.reference_accuracy, "baseline": None, "because": ""}
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
    if out["accuracy"] is None:
        out["because"] = "no evaluated test_accuracy in this run: nothing to reward"
        return out
    champion = (obs.champion or {}).get("metrics") or {}
    baseline = champion.get("test_accuracy", champion.get("accuracy"))
    out["baseline"] = baseline
    reward = policy.reward_from_observation(obs, out["accuracy"], baseline)
    out["reward"] = reward
    out["recorded"] = bool(policy.update(reward, plan=planned, key=key))
    gain = f"test_accuracy {out['accuracy']:.4f} vs champion {baseline:.4f}" if baseline is not None else \
        f"test_accuracy {out['accuracy']:.4f}, no champion (no gain counted)"
    cost = f"{obs.compute.get('run_seconds') or 0:g} s, {obs.compute.get('epochs') or 0:g} epochs"
    out["because"] = (f"{gain}; {cost}; arm {section['arm']} in context {section.get('context')!r}"
                      + ("" if out["recorded"] else f"; already rewarded under key {key!r}, not counted twice"))
    return out


__all__ = ["reward_run", "run_agent"]
