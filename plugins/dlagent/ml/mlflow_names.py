"""The MLflow vocabulary of dlagent: every tag, param, artifact and alias name it writes or reads.

Writers (operators, the tuner, the registry) and readers (the agent's observation, the web
pages, the sensor's conditions, the CLI summary) import these names, so a renamed tag changes
in one place. Next to them: the one helper that quotes a value inside an MLflow search filter
(:func:`quote`), the one way to find a run by its idempotency key (:func:`find_run`) and the one
reader of a registered model's champion (:func:`read_champion`).

Nothing here imports MLflow at module level: the plugin, DAG files and web views import it.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- MLflow's own tags
PARENT_TAG = "mlflow.parentRunId"

# --------------------------------------------------------------------------- Airflow identity
#: Tags ``airflow.<name>`` that say which DAG run / task (instance) a run belongs to.
AIRFLOW_DAG_ID_TAG = "airflow.dag_id"
AIRFLOW_RUN_ID_TAG = "airflow.run_id"
AIRFLOW_TASK_ID_TAG = "airflow.task_id"
AIRFLOW_MAP_INDEX_TAG = "airflow.map_index"


def airflow_tag(name: str) -> str:
    """``airflow.<name>`` for ``dag_id``, ``run_id``, ``task_id``, ``map_index``."""
    return f"airflow.{name}"


# --------------------------------------------------------------------------- run structure
RUN_KEY_TAG = "dlagent.key"  # idempotency key of a run: a retried task finds its run again
KIND_TAG = "dlagent.kind"  # what a top-level run is
KIND_PIPELINE = "pipeline"  # one DAG run's parent run
KIND_POLICY_STATE = "agent-policy-state"  # the learning policy's reward store
STEP_TAG = "dlagent.step"  # what a child run does: tune-trial, train, compress, evaluate, deploy, agent
STEP_TRAIN = "train"
STEP_COMPRESS = "compress"
STEP_EVALUATE = "evaluate"
STEP_DEPLOY = "deploy"
STEP_AGENT = "agent"
TRIAL_STEPS = ("tune-trial", "trial")
LEAF_STEPS = ("train", "evaluate", "compress", "gate", "deploy", "agent")

# --------------------------------------------------------------------------- step results
MODEL_URI_TAG = "dlagent.model_uri"  # the model a train / compress run logged
CANDIDATE_TAG = "dlagent.candidate"  # a compression candidate's name (compress, evaluate runs)
WARM_START_TAG = "dlagent.warm_start"  # the checkpoint a training continued from
GATE_BLESSED_TAG = "dlagent.gate.blessed"  # "true" / "false" on the evaluate run
GATE_REASONS_TAG = "dlagent.gate.reasons"
GATE_CHAMPION_VERSION_TAG = "dlagent.gate.champion_version"  # the champion version the evaluate run measured (champion_* metrics)
GATE_THRESHOLDS_TAG = "dlagent.gate.thresholds"  # the gate's limits as JSON (GateThresholds.to_dict): the agent reads its tie rule
GATE_CHAMPION_SPLIT_TAG = "dlagent.gate.champion_split"  # same | other | unknown: did the champion train on this run's split
# On the evaluate run, where the champion trained on another split of the same data: this run's models' validation
# scores on the rows the champion never trained on (``<prefix>shipped_val_<metric>``, ``<prefix>val_<metric>`` for the
# uncompressed model), the rows its ``champion_val_<metric>`` was measured on then; what the agent compares.
UNSEEN_BY_CHAMPION_PREFIX = "unseen_by_champion_"
GATE_DECISION_ARTIFACT = "gate"  # folder of decision.json on the evaluate run
GATE_DECISION_FILE = "decision.json"
CANDIDATES_PLOT_FILE = "compression_candidates.png"  # in the evaluate run's evaluation/: size against validation score
REGISTERED_VERSION_TAG = "dlagent.registered_version"  # "<name>/<version>" on the deploy run
CONTROLLER_CHANGES_FILE = "controller_changes.json"  # what the in-training controller changed
SCALING_FILE = "preprocessing/feature_scaling.json"  # a table's per-column mean and std (training split), applied inside the model
#: A finished step's XCom result, with a digest of the task's rendered inputs: a cleared task
#: whose inputs are unchanged returns it instead of training, compressing or deciding again.
RESULT_FILE = "dlagent/result.json"
RESULT_INPUTS_TAG = "dlagent.result_inputs"  # the digest; set last, once RESULT_FILE is uploaded

#: The pipeline's parent run keeps its headline figures as metrics and these string tags
#: ``dlagent.<name>`` (written by the finish task, read by the CLI summary and the web pages).
SUMMARY_TAG_PREFIX = "dlagent."
DEPLOY_TAG = "dlagent.deploy"  # "deployed <name> version <v>" / "skipped: ..." / "refused: ..."


def summary_tag(name: str) -> str:
    """The parent run's tag for a headline string (``dlagent.model_uri``, ``dlagent.agent_action``...)."""
    return f"{SUMMARY_TAG_PREFIX}{name}"


# --------------------------------------------------------------------------- the agent
PHASE_TAG = "dlagent.phase"  # budget | plan | decide
OBSERVED_TAG = "dlagent.observed_run_id"
ACTION_TAG = "dlagent.action"
POLICY_TAG = "dlagent.policy"
ARM_TAG = "dlagent.arm"
REWARD_RECORDED_TAG = "dlagent.reward_recorded"
REWARD_KEY_TAG_PREFIX = "dlagent.reward_key."  # + sha1 of the key: a reward counted once
REWARD_METRIC_PREFIX = "reward/"  # reward/<context>/<arm> on the policy-state run
POLICY_STATE_RUN_NAME = "agent-policy-state"
DECISIONS_FILE = "decisions.json"  # the plan with its reasons, on each agent run
OBSERVATION_FILE = "observation.json"

# --------------------------------------------------------------------------- tuning (Optuna)
STUDY_TAG = "optuna.study"
TRIAL_NUMBER_TAG = "optuna.trial_number"
TRIAL_STATE_TAG = "optuna.state"
TRIAL_REASON_TAG = "optuna.reason"
TRIAL_RETRY_OF_TAG = "optuna.retry_of"
DIRECTION_TAG = "optuna.direction"
PLOT_SKIPPED_TAG_PREFIX = "optuna.plot_skipped."
OPTUNA_ARTIFACT_DIR = "optuna"  # plots and study_summary.json on the parent run
STUDY_SUMMARY_FILE = "study_summary.json"
TRIAL_NUMBER_TAGS = (TRIAL_NUMBER_TAG, "optuna.number", "number")  # Optuna's MLflow callback wrote optuna.number
OPTUNA_VALUE_TAG = "optuna.value"  # read only: what Optuna's own MLflow callback writes
CHECKPOINT_TAG = "dlagent.checkpoint"  # artifact path of a new best trial's saved model
CHECKPOINT_PATH = "checkpoint/model.keras"

# --------------------------------------------------------------------------- the registry
CHAMPION = "champion"  # alias of the deployed version
PREVIOUS = "previous"  # alias of the one before (rollback target)
IDEMPOTENCY_TAG = "dlagent.idempotency_key"
PREVIOUS_VERSION_TAG = "dlagent.previous_version"
PROMOTED_TAG = "dlagent.promoted_at"
ROLLED_BACK_TAG = "dlagent.rolled_back_at"
SOURCE_MODEL_TAG = "dlagent.source_model_uri"
TFLITE_TAG = "dlagent.tflite_artifact"
TFLITE_SHA_TAG = "dlagent.tflite_sha256"
DATA_DIGEST_TAG = "dlagent.data.digest"  # the data a version was evaluated (and trained) on: content digest ...
DATA_SEED_TAG = "dlagent.data.seed"  # ... and split seed, so a later gate knows whether its test rows were this version's training rows
METRIC_TAG_PREFIX = "dlagent.metric."  # a version's gate metrics: dlagent.metric.test_accuracy
TFLITE_DIR = "tflite"  # inside a logged model: tflite/model.tflite, tflite/labels.json
TFLITE_FILE = "model.tflite"
LABELS_FILE = "labels.json"
METADATA_FILE = "metadata.json"  # in a serving bundle
ENCODING_FILE = "encoding.json"  # a table's categorical encoding (dlagent.ml.tabular): run artifact, logged model, serving bundle

#: MLflow error codes that mean "not there" (a missing model, alias or run).
MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def metric_tag(metric: str) -> str:
    return f"{METRIC_TAG_PREFIX}{metric}"


def version_metrics(tags: dict | None) -> dict[str, float]:
    """The ``dlagent.metric.*`` tags of a model version as ``{metric: value}`` (unreadable ones skipped)."""
    metrics = {}
    for key, text in (tags or {}).items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                metrics[key[len(METRIC_TAG_PREFIX):]] = float(text)
            except (TypeError, ValueError):
                continue
    return metrics


# --------------------------------------------------------------------------- search helpers


def quote(value) -> str:
    """``value`` as a string literal's inside for an MLflow search filter (``... = '<here>'``)."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def tag_equals(tag: str, value) -> str:
    """The filter clause ``tags.`<tag>` = '<value>'``."""
    return f"tags.`{tag}` = '{quote(value)}'"


def find_run(client, experiment_id: str, key: str):
    """The (first) run of ``experiment_id`` tagged ``dlagent.key = key``, or ``None``."""
    runs = client.search_runs([experiment_id], filter_string=tag_equals(RUN_KEY_TAG, key), max_results=1,
                              order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def is_missing(exc) -> bool:
    """Whether an ``MlflowException`` says the thing asked for does not exist."""
    return getattr(exc, "error_code", "") in MISSING_CODES


def read_champion(client, name: str, *, with_run_metrics: bool = False) -> dict | None:
    """The version under alias ``champion`` of registered model ``name``, or ``None``.

    Returns ``{"name", "version", "model_uri", "source", "run_id", "model_id", "aliases", "tags",
    "idempotency_key", "previous_version", "tflite_artifact", "metrics"}``: ``metrics`` are
    the gate metrics stored on the version (``dlagent.metric.*``); with ``with_run_metrics``
    the source run's metrics fill in the ones the version does not store (what the agent
    observes). A missing model or alias is ``None``, any other MLflow failure is raised.
    """
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise
    info = version_info(version)
    if with_run_metrics and version.run_id:
        try:
            run_metrics = dict(client.get_run(version.run_id).data.metrics)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
            run_metrics = {}
        info["metrics"] = dict(sorted({**run_metrics, **info["metrics"]}.items()))
    return info


def version_info(version, *, aliases=None, created: bool | None = None) -> dict:
    """A model version as small JSON (see :func:`read_champion`)."""
    tags = dict(version.tags or {})
    info = {
        "name": version.name,
        "version": str(version.version),
        "model_uri": f"models:/{version.name}/{version.version}",
        "source": version.source,
        "run_id": version.run_id,
        "model_id": model_id_of(version),
        "aliases": sorted(aliases if aliases is not None else (getattr(version, "aliases", None) or [])),
        "tags": tags,
        "idempotency_key": tags.get(IDEMPOTENCY_TAG),
        "previous_version": tags.get(PREVIOUS_VERSION_TAG),
        "tflite_artifact": tags.get(TFLITE_TAG),
        "metrics": version_metrics(tags),
    }
    if created is not None:
        info["created"] = created
    return info


def model_id_of(version) -> str | None:
    """The logged-model id behind a version (the SQL store does not keep ``model_id``)."""
    if getattr(version, "model_id", None):
        return version.model_id
    for uri in (version.source, (version.tags or {}).get(SOURCE_MODEL_TAG)):
        if isinstance(uri, str) and uri.startswith("models:/m-"):
            return uri[len("models:/"):].strip("/")
    return None

# --------------------------------------------------------------------------- federated training
STEP_FEDERATED_SETUP = "federated-setup"  # builds the round-0 global model
STEP_FEDERATED_LOCAL = "federated-local"  # one site's update in one round
STEP_FEDERATED_AGGREGATE = "federated-aggregate"  # one round's average
FEDERATED_ROUND_TAG = "dlagent.federated.round"
FEDERATED_SITE_TAG = "dlagent.federated.site"
FEDERATED_WEIGHTS_FILE = "federated/weights.npz"  # a model's weights (arr_0..), on a setup, local or aggregate run
FEDERATED_HISTORY_FILE = "federated/history.json"  # every round so far, on each aggregate run
FEDERATED_SETTINGS_FILE = "federated/settings.json"  # the settings and the sites' row counts, on the setup run


def federated_plan_file(round_number: int) -> str:
    """The agent's plan of one round, with its reasons, on the parent run."""
    return f"federated/round-{round_number:03d}/round_plan.json"
