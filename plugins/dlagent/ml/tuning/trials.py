"""Tuning in MLflow: one child run per trial, and the study's summary and plots on the parent run.

Each trial's run is found again by a key from study name + trial number, so a retried worker
continues it. Logging never kills tuning: a failure to log is reported, not raised (except
where a missing record would lose work, which says so).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from dlagent.ml import mlflow_names as names
from dlagent.ml import tracking
from dlagent.ml.config import TrainConfig
from dlagent.ml.tuning.plots import plot_study
from dlagent.ml.tuning.study import summary_of

log = logging.getLogger(__name__)


class TrialTracker:
    """One MLflow child run per trial (params, per-epoch metrics, state tag, best checkpoints)."""

    def __init__(self, client, experiment_id: str, parent_run_id: str | None, study_name: str, worker_tags: dict | None = None):
        self.client = client
        self.experiment_id, self.parent_run_id, self.study_name = experiment_id, parent_run_id, study_name
        self.worker_tags = {str(k): str(v) for k, v in (worker_tags or {}).items()}

    def key(self, number: int) -> str:
        return tracking.run_key("optuna", self.study_name, "trial", number)

    def start(self, trial, config: TrainConfig, retry_of, *, splits=None) -> str | None:
        tags = {**self.worker_tags, names.STUDY_TAG: self.study_name, names.TRIAL_NUMBER_TAG: str(trial.number),
                names.TRIAL_STATE_TAG: "RUNNING", names.DIRECTION_TAG: trial.study.direction.name.lower()}
        if retry_of is not None:
            tags[names.TRIAL_RETRY_OF_TAG] = str(retry_of)
        try:
            run_id, _ = tracking.find_or_create_run(
                self.client, self.experiment_id, self.key(trial.number), run_name=f"trial-{trial.number}",
                tags=tags, parent_run_id=self.parent_run_id,
            )
            problem = {"task": splits.task, "metric": splits.metric} if splits is not None else {}
            tracking.log_params_safely(self.client, run_id, {**config.to_params(), **problem})
            if splits is not None:
                from dlagent.ml.lineage import TUNING, log_dataset_input

                log_dataset_input(self.client, run_id, splits, TUNING)
            trial.set_user_attr("mlflow_run_id", run_id)
            return run_id
        except Exception as exc:  # noqa: BLE001 - logging never kills training
            log.warning("could not open an MLflow run for trial %d: %s", trial.number, exc)
            return None

    def save_checkpoint(self, run_id: str, model) -> None:
        """Keep the weights of a new best trial as artifact ``checkpoint/model.keras`` (tag
        ``dlagent.checkpoint``): a final training can start from them instead of from scratch.
        Only new bests are saved, so a study stores a handful of small files, not one per trial."""
        try:
            with tempfile.TemporaryDirectory(prefix="dlagent-checkpoint-") as folder:
                path = Path(folder) / Path(names.CHECKPOINT_PATH).name
                model.save(path)
                self.client.log_artifact(run_id, str(path), str(Path(names.CHECKPOINT_PATH).parent))
            self.client.set_tag(run_id, names.CHECKPOINT_TAG, names.CHECKPOINT_PATH)
        except Exception as exc:  # noqa: BLE001 - a missing checkpoint only means a final training from scratch
            log.warning("could not save the checkpoint of run %s: %s", run_id, exc)

    def epoch_logger(self, run_id: str):
        from dlagent.ml.callbacks import MLflowEpochLogger

        return MLflowEpochLogger(self.client, run_id)

    def finish(self, run_id: str, state: str, value, epochs_run: int, reason: str | None) -> None:
        try:
            tracking.log_metrics(self.client, run_id, {"objective": value if state == "COMPLETE" else None, "epochs_run": epochs_run})
            self.client.set_tag(run_id, names.TRIAL_STATE_TAG, state)
            if reason:
                self.client.set_tag(run_id, names.TRIAL_REASON_TAG, reason[:500])
            self.client.set_terminated(run_id, status="FAILED" if state == "FAIL" else "FINISHED")
        except Exception as exc:  # noqa: BLE001
            log.warning("could not close MLflow run %s: %s", run_id, exc)

    def close_stale(self, study, trial) -> None:
        """The run of a trial whose worker died: tag it FAIL and end it FAILED."""
        try:
            run = names.find_run(self.client, self.experiment_id, self.key(trial.number))
            if run is not None:
                self.client.set_tag(run.info.run_id, names.TRIAL_STATE_TAG, "FAIL")
                self.client.set_tag(run.info.run_id, names.TRIAL_REASON_TAG, "worker died (heartbeat stale); trial re-queued")
                self.client.set_terminated(run.info.run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001
            log.warning("could not close the MLflow run of stale trial %d: %s", trial.number, exc)


def log_study_to_mlflow(study, client, run_id: str) -> dict:
    """Log a study on the (parent) MLflow run ``run_id``; return its summary JSON.

    Params ``best_<name>``; metrics ``best_value``, ``trials_<state>``, ``epochs_total``;
    PNG plots under ``optuna/`` (optimization history, parameter importances, intermediate
    values) and ``optuna/study_summary.json``. A plot that cannot be drawn (e.g. importances
    with fewer than 2 complete trials) is skipped with the reason as tag
    ``optuna.plot_skipped.<plot>``. Logging problems are reported, not raised.
    """
    summary = summary_of(study)
    if summary["best_params"]:
        tracking.log_params_safely(client, run_id, {f"best_{k}": v for k, v in summary["best_params"].items()})
    metrics = {f"trials_{state.lower()}": n for state, n in summary["n_trials"].items()}
    metrics["epochs_total"] = summary["epochs_total"]
    if summary["best_value"] is not None:
        metrics["best_value"] = summary["best_value"]
        metrics["best_trial_number"] = summary["best_trial_number"]
    tracking.log_metrics(client, run_id, metrics)
    client.set_tag(run_id, names.STUDY_TAG, study.study_name)
    with tempfile.TemporaryDirectory(prefix="dlagent-optuna-") as folder:
        path = Path(folder) / names.STUDY_SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2, default=str))
        _log_artifact(client, run_id, path)
        for name, reason in plot_study(study, Path(folder)).items():
            if reason is None:
                _log_artifact(client, run_id, Path(folder) / f"{name}.png")
            else:
                log.info("plot %s skipped: %s", name, reason)
                client.set_tag(run_id, f"{names.PLOT_SKIPPED_TAG_PREFIX}{name}", reason[:500])
    return summary


def _log_artifact(client, run_id: str, path: Path) -> None:
    try:
        client.log_artifact(run_id, str(path), artifact_path=names.OPTUNA_ARTIFACT_DIR)
    except Exception as exc:  # noqa: BLE001 - a lost plot must not fail the tuning step
        log.warning("could not log %s to MLflow run %s: %s", path.name, run_id, exc)
