"""Deploy through the MLflow Model Registry (aliases ``champion`` / ``previous``), and roll back.

:class:`DeployOperator` ships only a blessed candidate: it re-runs the gate on the evaluate
task's measurements (so a hand-edited ``blessed: true`` cannot push a worse model), registers
the candidate's logged model (Keras + TFLite + labels, with signature and input example) as a
new version, moves ``champion`` to it and ``previous`` to the former champion, and writes the
serving bundle into the deploy folder by atomic rename. The idempotency key is the DAG run,
so a retried or cleared deploy task never creates a second version.

An unblessed candidate makes the task *skipped*, with the gate's reasons in the task log,
on the MLflow parent run (tag ``dlagent.deploy``) and in the skip message the UI shows.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.links import REGISTERED_MODEL_XCOM, MLflowRunLink, RegisteredModelLink
from dlagent.ml import mlflow_names as names
from dlagent.operators.base import DlagentOperator, airflow_ids, airflow_tags
from dlagent.operators.evaluate import DEFAULT_MODEL_NAME


def _deploy_dir(value) -> str:
    from dlagent import settings

    return str(value) if value not in (None, "") else str(settings.deploy_dir())


class DeployOperator(DlagentOperator):
    """Register and promote the evaluate task's candidate when the gate blesses it.

    :param evaluation: the evaluate task's result (templated, e.g. ``evaluate.output``).
    :param model_name: the registered model (default ``dlagent-classifier``).
    :param thresholds: the gate limits the evaluate task used (re-checked here).
    :param deploy_dir: where serving bundles go (default ``$DLAGENT_HOME/deploy``).
    :param optuna_conn_id: the coordination database (the Optuna study storage): a lock per
        model there serialises gate and promotion, so two runs deploying at once are judged
        one after the other and keep the ``previous`` chain whole.

    Returns ``{"name", "version", "model_uri", "champion_uri", "previous_version", "bundle", "created"}``.
    """

    template_fields: Sequence[str] = ("experiment_name", "evaluation", "model_name", "thresholds", "deploy_dir")
    ui_color = "#d6f5ff"
    step = names.STEP_DEPLOY
    operator_extra_links = (MLflowRunLink(), RegisteredModelLink())

    def __init__(self, *, evaluation, model_name: str = DEFAULT_MODEL_NAME, thresholds: dict | None = None,
                 deploy_dir: str | None = None, optuna_conn_id: str = "optuna_default", **kwargs):
        super().__init__(**kwargs)
        self.optuna_conn_id = optuna_conn_id
        self.evaluation = evaluation
        self.model_name = model_name
        self.thresholds = thresholds
        self.deploy_dir = deploy_dir

    def run(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        from dlagent.hooks.optuna import OptunaHook
        from dlagent.ml import registry, serving
        from dlagent.ml.gate import GateThresholds
        from dlagent.ml.locks import named_lock

        evaluation = self.evaluation
        if not isinstance(evaluation, dict) or not {"blessed", "candidate", "reference"} <= set(evaluation):
            raise ConfigError("evaluation", f"is not an evaluate task result: {evaluation!r}.", "pass the evaluate task's output (evaluate.output).")
        name = registry.check_model_name(self.model_name)
        thresholds = GateThresholds.from_dict(self.thresholds)
        ids = airflow_ids(context)
        parent = self.parent_run_id(context)
        if not evaluation["blessed"]:
            reasons = "; ".join(evaluation.get("reasons") or ["no reason given"])
            self.hook.client.set_tag(parent, names.DEPLOY_TAG, f"skipped: {reasons}"[:5000])
            self.log.info("not deployed: the gate did not bless %s: %s", evaluation["candidate"].get("candidate"), reasons)
            raise AirflowSkipException(f"not deployed, the gate did not bless the candidate: {reasons}")

        candidate = evaluation["candidate"]
        champion = evaluation.get("champion")
        with self.step_run(context) as run_id:
            outcome = registry.deploy_if_blessed(
                self.hook.client, name, candidate["model_uri"],
                candidate_metrics=candidate["metrics"], reference_metrics=evaluation["reference"]["metrics"],
                champion_metrics=champion["metrics"] if champion else None, thresholds=thresholds,
                idempotency_key=f"{ids['dag_id']}/{ids['run_id']}", run_id=candidate.get("run_id"),
                tags={**airflow_tags(ids), names.CANDIDATE_TAG: str(candidate.get("candidate")), **_data_tags(evaluation.get("data"))},
                evaluated_champion=champion["version"] if champion else None, metric=evaluation.get("metric"),
                candidate_vs_champion=(champion or {}).get("candidate_on_unseen_rows"),
                lock=named_lock(OptunaHook(optuna_conn_id=self.optuna_conn_id).storage_url, f"dlagent.deploy/{name}"),
            )
            version = outcome["version"]
            if version is None:
                reasons = "; ".join(outcome["decision"]["reasons"])
                self.hook.client.set_tag(parent, names.DEPLOY_TAG, f"refused: {reasons}"[:5000])
                raise AirflowSkipException(f"not deployed, the gate re-check refused the candidate: {reasons}")
            bundle = serving.deploy_champion_bundle(self.hook.client, name, _deploy_dir(self.deploy_dir),
                                                     extra_metadata={"airflow": ids, "candidate": candidate.get("candidate"),
                                                                     "metric": evaluation.get("metric") or "accuracy"})
            self.hook.client.set_tag(run_id, names.REGISTERED_VERSION_TAG, f"{name}/{version['version']}")
            self.push_xcom(context, REGISTERED_MODEL_XCOM, {"name": name, "version": str(version["version"])})
        self.hook.client.set_tag(parent, names.DEPLOY_TAG, f"deployed {name} version {version['version']}")
        self.log.info("%s %s version %s as %r (previous: %s); serving bundle %s -> %s",
                      "registered" if version.get("created") else "already registered", name, version["version"],
                      names.CHAMPION, version.get("previous_version"), bundle, bundle.resolve())
        return {"name": name, "version": version["version"], "model_uri": version["model_uri"],
                "champion_uri": f"models:/{name}@{names.CHAMPION}", "previous_version": version.get("previous_version"),
                "bundle": str(bundle.resolve()), "created": bool(version.get("created"))}


class RollbackOperator(DlagentOperator):
    """Move ``champion`` back to ``previous`` and re-point the serving bundle to it."""

    template_fields: Sequence[str] = ("experiment_name", "model_name", "deploy_dir")
    ui_color = "#ffe0e0"
    operator_extra_links = (RegisteredModelLink(),)

    def __init__(self, *, model_name: str = DEFAULT_MODEL_NAME, deploy_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.deploy_dir = deploy_dir

    def run(self, context):
        result = rollback_champion(self.hook.client, self.model_name, self.deploy_dir, log=self.log)
        self.push_xcom(context, REGISTERED_MODEL_XCOM, {"name": str(self.model_name), "version": str(result["champion"])})
        return result


def rollback_champion(client, model_name: str, deploy_dir=None, *, log=None) -> dict:
    """Roll the registry back one version and redeploy the bundle (shared by the operator and CLI)."""
    from dlagent.ml import registry, serving

    name = registry.check_model_name(model_name)
    try:
        moved = registry.rollback(client, name)
    except registry.RegistryError as exc:
        raise ConfigError("model_name", str(exc), "deploy at least two versions before rolling back.") from exc
    bundle = serving.deploy_champion_bundle(client, name, _deploy_dir(deploy_dir), extra_metadata={"rolled_back_from": moved["rolled_back_from"]})
    if log is not None:
        log.info("rolled %s back from version %s to %s; serving bundle %s -> %s", name, moved["rolled_back_from"],
                 moved["champion"], bundle, bundle.resolve())
    return {**moved, "bundle": str(bundle.resolve())}


def _data_tags(data) -> dict:
    """The version's data tags (:func:`dlagent.ml.gate.champion_split` reads them at a later gate): the
    digest and split seed of the evaluation that blessed it; none from an older evaluate result."""
    if not isinstance(data, dict) or not data.get("digest") or data.get("seed") is None:
        return {}
    return {names.DATA_DIGEST_TAG: str(data["digest"]), names.DATA_SEED_TAG: str(data["seed"])}
