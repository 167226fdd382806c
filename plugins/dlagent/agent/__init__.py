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
              store=None, resources: dict | None = None, **policy_kwargs):
    """Observe -> decide -> validate. Returns ``(plan, observation)``.

    ``policy`` is a name (``rules``, ``learning``), a dotted class path, or a ``Policy``
    instance. For ``learning`` without a ``store``, the state lives in MLflow
    (:class:`~dlagent.agent.policies.learning.MLflowStateStore` in ``experiment_id``).
    """
    from dlagent.agent.observe import observe
    from dlagent.agent.plan import validate_plan
    from dlagent.agent.policies.base import Policy, load_policy

    observation = observe(client, experiment_id, parent_run_id, champion_name, resources=resources)
    if not isinstance(policy, Policy):
        if store is None and policy == "learning":
            from dlagent.agent.policies.learning import MLflowStateStore

            store = MLflowStateStore(client, observation.experiment_id)
        policy = load_policy(policy, store=store, **policy_kwargs)
    plan = validate_plan(policy.decide(observation))
    return plan, observation


__all__ = ["run_agent"]
