"""The agent as Airflow tasks: decide a plan from MLflow, branch on it, turn it into a run's conf.

* :class:`AgentOperator` observes a pipeline run through the MLflow hook, lets a policy decide
  the plan (:mod:`dlagent.agent`), logs it as an ``agent`` child run (``decisions.json``) and
  in the task log, and returns it, so downstream tasks take ``agent.output["train"]``,
  ``agent.output["compress"]``... (each plan section is also its own XCom).
* :class:`PlanBranchOperator` follows ``plan["action"]``: deploy, retune or stop.
* :class:`PlanConfOperator` turns a plan into the ``conf`` of a ``dl_agent_pipeline`` run:
  the observed run's settings changed as the plan says, keeping only what the pipeline's
  Params accept (and validating it against them).

Nothing heavy is imported at module level: DAG files import this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from airflow.providers.standard.operators.branch import BaseBranchOperator

from dlagent.agent import PHASES
from dlagent.agent.plan import SECTIONS
from dlagent.errors import ConfigError
from dlagent.links import AgentDecisionsLink, MLflowRunLink
from dlagent.ml import mlflow_names as names
from dlagent.operators.base import DlagentOperator, airflow_ids
from dlagent.settings import redact_text, redact_url

POOL_NOTE = ("free Airflow pool slots are not readable from an Airflow 3 task (the Task SDK has no pool API and "
             "tasks have no metadata-database access): resources are this worker's CPUs and memory")


class AgentOperator(DlagentOperator):
    """Observe a pipeline run in MLflow, decide the next plan with a policy, log it, return it.

    :param phase: ``budget`` (before tuning: the tuning tasks take ``tune``, the first round the
        policy plans from ``request``), ``plan`` (after tuning: downstream tasks take ``train``, ``compress`` and
        ``controller`` from the plan; its ``action`` is provisional) or ``decide`` (after
        evaluation: the ``action`` deploy / retune / stop is final, and a learning policy is
        first rewarded for the plan it made in phase ``plan`` of the same pipeline run).
    :param policy: ``rules``, ``learning`` or the dotted path of a
        :class:`~dlagent.agent.policies.base.Policy` subclass (templated).
    :param policy_kwargs: constructor arguments of the policy, e.g. ``{"max_trials": 32}``
        or ``{"epsilon": 0.2, "seed": 1}`` (templated).
    :param champion_name: registered model whose ``champion`` alias the plan compares with
        (templated; empty: no comparison).
    :param observe_run_id: the MLflow run to observe instead of this DAG run's parent run: a
        pipeline parent run, or any run under one (its pipeline parent is used), e.g. the run
        of a champion a sensor watched (templated).
    :param request: phase ``budget``: the Params' tuning settings (``n_trials``, ``n_workers``,
        ``trial_epochs``, ``min_trial_epochs``, ``search_space``, ``seed_studies``) and ``data``,
        the validate task's data summary (templated); the task adds ``executor`` (Airflow's
        ``[core] executor``: workers are sized by this machine's memory only when they run on it).
    :param fixed_resources: the observation's ``resources`` as given, ``{"cpu_count",
        "cpus_free", ...}`` (replays, tests); empty: the worker's CPUs, load and memory are
        measured (free pool slots are not readable in Airflow 3; the task's pool is recorded).

    Returns the validated plan ``{"action", "train", "tune", "compress", "controller",
    "policy", "reasons"}``. Bad arguments or a malformed plan fail the task without retries
    (:class:`~dlagent.errors.ConfigError`); an unreachable MLflow fails it with a message
    naming the tracking URI (retried like any transient failure). There is no default plan.
    """

    template_fields: Sequence[str] = ("experiment_name", "phase", "policy", "policy_kwargs", "champion_name",
                                      "observe_run_id", "fixed_resources", "request")
    template_fields_renderers = {"policy_kwargs": "json", "fixed_resources": "json"}
    ui_color = "#fff4d6"
    step = names.STEP_AGENT
    output_keys = SECTIONS  # every plan section is its own XCom, read by a DAG or not
    operator_extra_links = (MLflowRunLink(), AgentDecisionsLink())

    def __init__(self, *, phase: str = "plan", policy: str = "rules", policy_kwargs: dict | None = None,
                 champion_name: str | None = None, observe_run_id: str | None = None, fixed_resources: dict | None = None,
                 request: dict | None = None, **kwargs):
        # multiple_outputs: a null section (``warm_start``, ``tune``) reaches a downstream
        # XComArg (``agent.output["warm_start"]``) as None; without it Airflow cannot tell a
        # None XCom from a missing one and fails the consumer with XComNotFound.
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.phase = phase
        self.policy = policy
        self.policy_kwargs = policy_kwargs
        self.champion_name = champion_name
        self.observe_run_id = observe_run_id
        self.fixed_resources = fixed_resources
        self.request = request

    # ------------------------------------------------------------------ run
    def uses_step_run(self) -> bool:
        return self.policy != "off"  # off: the Params run as given, no agent run, no MLflow read

    def run(self, context):
        if self.policy == "off":
            from dlagent.agent.plan import Plan

            plan = Plan.from_dict({"action": "deploy", "reasons": [  # tune: null, so the tuning tasks run the Params too
                {"decision": "no changes", "because": "agent_policy is 'off': the Params' settings run as given"}]})
            self.log.info("agent off: the plan changes nothing (deploy stays up to the gate)")
            return plan.to_dict()
        policy_kwargs, champion, resources = self._arguments()
        try:
            return self._decide(context, policy_kwargs, champion, resources)
        except ConfigError:
            raise
        except Exception as exc:
            if _is_mlflow_failure(exc):
                from airflow.sdk.exceptions import AirflowException

                raise AirflowException(
                    f"the agent made no decision: MLflow at {redact_url(self.hook.tracking_uri)} could not be read "
                    f"({type(exc).__name__}: {redact_text(_first_line(exc))}). Check that the tracking server is up and that the "
                    f"{self.mlflow_conn_id!r} Connection (or MLFLOW_TRACKING_URI) points at it; no default plan is used."
                ) from exc
            raise

    def _arguments(self):
        """Check every argument before MLflow is contacted (a bad policy name fails here)."""
        from dlagent.agent.policies.base import load_policy

        if self.phase not in PHASES:
            raise ConfigError("phase", f"must be one of {list(PHASES)}, got {self.phase!r}.",
                              "use 'budget' before tuning, 'plan' after tuning and 'decide' after evaluation.")
        if self.phase == "budget" and not isinstance(self.request, dict):
            raise ConfigError("request", f"phase 'budget' needs the Params' tuning settings as a JSON object, got {self.request!r}.",
                              'pass {"n_trials": ..., "n_workers": ..., "data": validate_inputs.output["data"], ...}.')
        kwargs = self.policy_kwargs
        if isinstance(kwargs, str):
            kwargs = _json_object("policy_kwargs", kwargs)
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise ConfigError("policy_kwargs", f"must be a JSON object of policy arguments, got {type(kwargs).__name__}.",
                              'give e.g. {"max_trials": 32}, or leave it empty.')
        champion = self.champion_name or None
        if champion is not None and not isinstance(champion, str):
            raise ConfigError("champion_name", f"must be a registered model name, got {champion!r}.", "give the model's name or leave it empty.")
        load_policy(self.policy, **kwargs)
        resources = self.fixed_resources
        if isinstance(resources, str):
            resources = _json_object("fixed_resources", resources) if resources.strip() else None
        if resources is not None and not isinstance(resources, dict):
            raise ConfigError("fixed_resources", f"must be a JSON object or empty, got {type(resources).__name__}.",
                              'give e.g. {"cpu_count": 4, "cpus_free": 2}, or leave it empty to measure.')
        return kwargs, champion, resources

    def _decide(self, context, policy_kwargs, champion, resources) -> dict:
        from dlagent.agent import run_agent
        from dlagent.agent.plan import log_plan, plan_params, summarize
        from dlagent.agent.resources import measure_resources
        from dlagent.agent.runs import pipeline_run_of
        from dlagent.ml import tracking

        ids = airflow_ids(context)
        client = self.hook.client
        with self.step_run(context) as agent_run_id:
            own_parent = self.parent_run_id(context)
            experiment_id, observed = pipeline_run_of(client, self.observe_run_id or own_parent, own_parent=own_parent)
            client.set_tag(agent_run_id, names.PHASE_TAG, self.phase)
            client.set_tag(agent_run_id, names.OBSERVED_TAG, observed)
            self.push_xcom(context, "observed_run_id", observed)  # for PlanConfOperator
            if resources is None:
                resources = {**measure_resources(), "pool": self.pool, "pool_slots": self.pool_slots}
                self.log.info("%s", POOL_NOTE)
            request = {**self.request, "executor": _executor()} if self.phase == "budget" else None
            outcome = run_agent(client, experiment_id, observed, policy=self.policy, phase=self.phase, champion_name=champion,
                                resources=resources, reward_key=f"{ids['dag_id']}/{ids['run_id']}", request=request,
                                **policy_kwargs)
            plan = outcome.plan
            tracking.log_params_safely(client, agent_run_id, plan_params(plan, phase=self.phase, policy=self.policy,
                                                                        champion=champion, observed=observed))
            log_plan(client, agent_run_id, plan, outcome.observation)
            metrics = {"reasons": len(plan.reasons), "compress_candidates": len(plan.compress),
                       "tune_trials": (plan.tune or {}).get("n_trials", 0)}
            if outcome.reward and outcome.reward["reward"] is not None:
                metrics["reward"] = outcome.reward["reward"]
                client.set_tag(agent_run_id, names.REWARD_RECORDED_TAG, str(outcome.reward["recorded"]).lower())
            tracking.log_metrics(client, agent_run_id, metrics)
        self.log.info("%s", summarize(plan, phase=self.phase, observed=observed, agent_run_id=agent_run_id,
                                      where=redact_url(self.hook.tracking_uri)))
        return plan.to_dict()


def _executor() -> str | None:
    """The configured executor (``[core] executor``): the budget phase sizes workers by this
    machine's memory only when they run on it."""
    try:
        from airflow.configuration import conf

        return conf.get("core", "executor", fallback=None)
    except Exception:  # noqa: BLE001 - unknown: the policy assumes the workers run here
        return None


class PlanBranchOperator(BaseBranchOperator):
    """Follow a plan's ``action``: run the deploy, retune or stop task, skip the others.

    :param plan: the plan, usually ``agent.output`` of an ``AgentOperator`` in phase
        ``decide`` (templated; a dict or its JSON text). A malformed plan fails the task
        without retries, naming the field.
    :param deploy_task_id, retune_task_id, stop_task_id: the task (or task group) to follow
        for each action; ``None`` skips every downstream task for that action.
    """

    template_fields: Sequence[str] = ("plan", "allow_retune")
    ui_color = "#fff4d6"

    def __init__(self, *, plan, deploy_task_id: str | None = "deploy", retune_task_id: str | None = "retune",
                 stop_task_id: str | None = "stop", allow_retune=True, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        self.allow_retune = allow_retune
        self.branches = {"deploy": deploy_task_id, "retune": retune_task_id, "stop": stop_task_id}
        for action, task_id in self.branches.items():
            if task_id is not None and (not isinstance(task_id, str) or not task_id):
                raise ConfigError(f"{action}_task_id", f"must be a task id or None, got {task_id!r}.",
                                  f"name the task to run when the plan says {action!r}.")

    def choose_branch(self, context):
        from airflow.sdk.exceptions import AirflowFailException

        from dlagent.agent.plan import Plan

        try:
            plan = Plan.from_dict(self.plan)  # an XCom: validated where it enters this task
        except ConfigError as exc:
            raise AirflowFailException(f"invalid plan, no branch taken: {exc}") from exc
        action = plan["action"]
        why = next((r["because"] for r in plan["reasons"] if r["decision"].startswith("action=")), "no reason given")
        if action == "retune" and self.allow_retune in (False, "False", "false", 0, "0"):
            self.log.info("plan action 'retune' (because: %s) turned into 'stop': the retune budget is spent", why)
            action, why = "stop", "retune budget spent"
        task_id = self.branches[action]
        # Branch operators push no XCom by default; the branch taken is worth keeping (the run summary shows it).
        context["ti"].xcom_push(key="return_value", value=task_id or "none")
        self.log.info("plan action %r -> %s, because: %s", action, task_id or "skip every branch", why)
        return task_id


# --------------------------------------------------------------------------- plan -> conf

class PlanConfOperator(DlagentOperator):
    """Turn a plan into the ``conf`` of a ``dl_agent_pipeline`` run (for ``TriggerDagRunOperator``).

    :param plan: the plan (``agent.output``; templated).
    :param observed_run_id: the pipeline run the plan was made from
        (``agent.output["observed_run_id"]``; templated): its training settings and data set
        (the params of its MLflow parent run) are the starting point, so what the plan does
        not change stays as it was, not as the Params' defaults say.
    :param base_conf: settings sent whatever was observed, e.g. the MLflow experiment
        (templated); the plan's values win over them.

    The conf is validated against the pipeline's Params (:func:`dlagent.params.pipeline_params`)
    here, so a value the trigger form would refuse fails this task naming the Param.
    Returns the conf.
    """

    template_fields: Sequence[str] = ("experiment_name", "plan", "observed_run_id", "base_conf")
    template_fields_renderers = {"base_conf": "json"}
    ui_color = "#fff4d6"

    def __init__(self, *, plan, observed_run_id: str | None = None, base_conf: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        self.observed_run_id = observed_run_id
        self.base_conf = base_conf

    def execute(self, context):
        result = super().execute(context)
        return result["conf"]

    def run(self, context):
        from dlagent.agent.plan import pipeline_conf
        from dlagent.params import check_pipeline_conf, pipeline_params

        base = self.base_conf
        if base is not None and not isinstance(base, dict):
            raise ConfigError("base_conf", f"must be a JSON object, got {type(base).__name__}.", "pass a mapping of pipeline Params.")
        observed = self._observed_settings()
        conf, notes = pipeline_conf(self.plan, pipeline_params(), {**observed, **(base or {})})
        check_pipeline_conf(conf, fix="fix the plan's value or the policy's limits.")
        for note in notes:
            self.log.info("%s", note)
        self.log.info("conf for dl_agent_pipeline: %s", json.dumps(conf, sort_keys=True))
        return {"conf": conf, "left_out": notes}

    def _observed_settings(self) -> dict:
        if not self.observed_run_id:
            return {}
        from mlflow.exceptions import MlflowException

        from dlagent.agent.run_views import train_params

        try:
            params = self.hook.client.get_run(self.observed_run_id).data.params
        except MlflowException as exc:
            if names.is_missing(exc):
                raise ConfigError("observed_run_id", f"no MLflow run {self.observed_run_id!r} at {redact_url(self.hook.tracking_uri)}.",
                                  "pass agent.output['observed_run_id'], or leave it empty.") from exc
            raise
        from dlagent.operators.pipeline import DATA_PARAM_PREFIX
        from dlagent.params import DATA_PARAM_NAMES

        settings = train_params(params)
        if params.get("dataset"):
            settings["dataset"] = params["dataset"]
        for name in DATA_PARAM_NAMES:  # the data options (task, metric, label column...) as the observed run had them
            text = params.get(f"{DATA_PARAM_PREFIX}{name}")
            if text is not None:
                settings[name] = int(text) if name == "max_samples" and text.isdigit() else text
        return settings


# --------------------------------------------------------------------------- helpers


def _json_object(field: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(field, f"is not valid JSON: {exc}.", "give a JSON object.") from exc
    if not isinstance(value, dict):
        raise ConfigError(field, f"must be a JSON object, got {type(value).__name__}.", "give a JSON object.")
    return value


def _is_mlflow_failure(exc: BaseException) -> bool:
    """True for errors reading or writing MLflow (unreachable server, broken store)."""
    from dlagent.agent.observe import ObservationError

    if isinstance(exc, ObservationError):
        return True
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        MlflowException = ()  # noqa: N806
    try:
        from requests.exceptions import RequestException
    except ImportError:  # pragma: no cover
        RequestException = ()  # noqa: N806
    return isinstance(exc, (MlflowException, RequestException, ConnectionError, TimeoutError))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
