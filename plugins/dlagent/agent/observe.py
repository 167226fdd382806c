"""Observe a pipeline run through MLflow: what was tried, how training went, what it cost.

:func:`observe` reads, through an ``MlflowClient``, the child runs of a DAG run's parent run
(and their children: trials may sit under a ``tune`` run) and returns an :class:`Observation`,
a plain dataclass that turns into JSON with :meth:`Observation.to_dict`.

What is read, by the conventions of ``dlagent.operators`` (tag ``dlagent.step`` on each
child run, ``mlflow.parentRunId`` linking it to its parent):

* **tuning trials**: runs with ``dlagent.step`` in ``{"tune-trial", "trial"}`` or an
  ``optuna.trial_number`` / ``optuna.number`` / ``optuna.state`` tag (what
  :mod:`dlagent.ml.tuning` and Optuna's MLflow callback write). Number: tag
  ``optuna.trial_number`` (else ``optuna.number``, ``number``); state: tag ``optuna.state``
  (else ``state``, else the run status); value: metric ``objective`` (dlagent's tuner), else
  ``value`` (Optuna's callback), ``best_val_accuracy``, ``val_accuracy``; direction: tag
  ``optuna.direction`` (or ``direction``) on a trial or the parent run, else inferred from the
  parent's ``best_value`` metric (the tuning summary), else ``maximize``; params: the run
  params that are ``TrainConfig`` fields, typed as the field. ``tuned_params`` lists the
  parameters whose values differ between trials (what the search space varied). ``study``: tag
  ``optuna.study``; ``checkpoint``: ``runs:/<run>/<path>`` when the trial saved its weights (tag
  ``dlagent.checkpoint``, written for each new best trial), else ``None``.
* **training curves** (``dlagent.step = train``, and the best trial): the metric histories
  ``loss``, ``val_loss``, ``accuracy``, ``val_accuracy``, ``learning_rate``, summarised by
  :func:`analyze_curve` (best epoch, train/validation gap, plateau, divergence...).
* **evaluations** (``dlagent.step = evaluate``): their metrics (``test_accuracy``...).
* **compression candidates** (``dlagent.step = compress``): metrics ``accuracy`` (or
  ``test_accuracy``), ``size_bytes``, ``latency_ms_p95``; config from the params that are
  compression settings (``sparsity``, ``quantization``, ...).
* **gate**: the most recent run with a ``dlagent.gate.blessed`` tag (``true``/``false``).
* **champion**: the version under alias ``champion`` of ``champion_name`` (absent model or
  alias: ``None``); metrics from its ``dlagent.metric.*`` tags, then its run's metrics.
* **compute**: number of runs, summed run durations (finished runs), summed ``epochs_run``.
* **resources**: CPUs of this process (affinity), 1-minute load, free CPUs, free memory.
  Only this part changes between two observations of the same MLflow history; pass
  ``resources=`` to fix it (tests, replays).

An unreachable MLflow raises :class:`ObservationError` (never a silent empty observation);
a parent run that does not exist raises :class:`~dlagent.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.validation import finite

CURVE_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "learning_rate")
VALUE_METRICS = ("objective", "value", "best_val_accuracy", "val_accuracy")
MAX_DEPTH = 3
MAX_PARENT_HOPS = 3


class ObservationError(RuntimeError):
    """MLflow could not be read (unreachable server, broken store)."""


@dataclass
class Observation:
    """What the agent knows about one pipeline run. JSON-able through :meth:`to_dict`."""

    experiment_id: str
    parent_run_id: str
    config: dict = field(default_factory=dict)
    direction: str = "maximize"
    trials: list = field(default_factory=list)
    best_trial: dict | None = None
    best_value_history: list = field(default_factory=list)
    tuned_params: list = field(default_factory=list)
    curves: list = field(default_factory=list)
    evaluations: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    gate: dict | None = None
    champion: dict | None = None
    compute: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False, default=str)

    @classmethod
    def from_dict(cls, values: dict) -> Observation:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"observation.{unknown[0]}", f"unknown field (known: {sorted(known)}).", "remove it.")
        return cls(**values)

    # Convenience views used by the policies.
    @property
    def completed_trials(self) -> list:
        return [t for t in self.trials if t["state"] == "COMPLETE" and finite(t["value"])]

    def curve_of(self, run_id: str | None) -> dict | None:
        for curve in self.curves:
            if run_id is not None and curve["run_id"] == run_id:
                return curve
        return None

    @property
    def main_curve(self) -> dict | None:
        """The best trial's curve when there is one, else the latest training run's."""
        if self.best_trial is not None:
            curve = self.curve_of(self.best_trial["run_id"])
            if curve is not None:
                return curve
        trains = [c for c in self.curves if c["step"] == "train"]
        return trains[-1] if trains else None

    @property
    def reference_accuracy(self) -> float | None:
        """Best held-out accuracy of an uncompressed model (evaluation runs)."""
        values = [e["metrics"]["test_accuracy"] for e in self.evaluations if finite(e["metrics"].get("test_accuracy"))]
        return max(values) if values else None


# --------------------------------------------------------------------------- observe


def observe(client, experiment_id: str, parent_run_id: str, champion_name: str | None = None, *,
            resources: dict | None = None) -> Observation:
    """Read the DAG run under ``parent_run_id`` from MLflow (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(parent_run_id, str) or not parent_run_id:
        raise ConfigError("parent_run_id", f"must be an MLflow run id, got {parent_run_id!r}.", "pass the DAG run's parent run id.")
    uri = _tracking_uri(client)
    try:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException as exc:
            if names.is_missing(exc):
                raise ConfigError("parent_run_id", f"no MLflow run {parent_run_id!r} at {uri}.", "pass the parent run id the pipeline created.") from exc
            raise
        experiment_id = str(experiment_id or parent.info.experiment_id)
        runs = _descendants(client, experiment_id, parent_run_id)
        observation = _build(client, experiment_id, parent, runs, champion_name)
    except (ConfigError, ObservationError):
        raise
    except Exception as exc:  # noqa: BLE001 - any store/network failure is reported as such
        raise ObservationError(f"could not read the pipeline run {parent_run_id} from MLflow at {uri}: {type(exc).__name__}: {exc}") from exc
    observation.resources = dict(resources) if resources is not None else measure_resources()
    return observation


def _tracking_uri(client) -> str:
    """The client's tracking URI for a message: credentials never printed."""
    from dlagent.settings import redact_url

    tracking = getattr(client, "_tracking_client", None)
    return redact_url(str(getattr(tracking, "tracking_uri", None) or getattr(client, "tracking_uri", "") or "<unknown>"))


def _descendants(client, experiment_id: str, root: str) -> list:
    """Every run below ``root`` (children, grandchildren...), in a deterministic order."""
    found, frontier = [], [root]
    for _ in range(MAX_DEPTH):
        children = []
        for parent_id in frontier:
            children.extend(_search_all(client, experiment_id, f"tags.`{names.PARENT_TAG}` = '{parent_id}'"))
        if not children:
            break
        found.extend(children)
        # Trials and single-step runs have no children: only container runs (a tune run that
        # holds its trials, say) are searched one level deeper, to keep the queries few.
        frontier = [r.info.run_id for r in children if not _is_trial(r) and r.data.tags.get(names.STEP_TAG) not in names.LEAF_STEPS]
    found.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return found


def _search_all(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def _build(client, experiment_id, parent, runs, champion_name) -> Observation:
    by_step: dict[str, list] = {}
    trials_runs = []
    for run in runs:
        tags = run.data.tags
        step = tags.get(names.STEP_TAG, "")
        if _is_trial(run):
            trials_runs.append(run)
        else:
            by_step.setdefault(step, []).append(run)

    trials = sorted((_trial(run) for run in trials_runs), key=lambda t: (t["number"] if t["number"] is not None else 10**9, t["run_id"]))
    completed = [t for t in trials if t["state"] == "COMPLETE" and finite(t["value"])]
    direction = _direction(parent, trials_runs, completed)
    best_trial = None
    history = []
    for trial in completed:  # in trial-number order; a tie keeps the earlier trial
        if best_trial is None or _better(trial["value"], best_trial["value"], direction):
            best_trial = trial
        history.append(best_trial["value"])

    curves = []
    for run in by_step.get("train", []):
        curves.append(_curve(client, run, "train"))
    if best_trial is not None:
        best_run = next(r for r in trials_runs if r.info.run_id == best_trial["run_id"])
        curve = _curve(client, best_run, "trial")
        if curve["epochs"]:
            curves.append(curve)

    evaluations = [{"run_id": r.info.run_id, "metrics": _metrics(r)} for r in by_step.get("evaluate", [])]
    candidates = [_candidate(r) for r in by_step.get("compress", [])]
    gate = None
    for run in reversed(runs):
        value = run.data.tags.get(names.GATE_BLESSED_TAG)
        if value is not None:
            gate = {"run_id": run.info.run_id, "blessed": value.strip().lower() in ("true", "1", "yes"), "metrics": _metrics(run)}
            break

    seconds = sum((r.info.end_time - r.info.start_time) / 1000.0 for r in runs if r.info.end_time and r.info.start_time)
    epochs = sum(int(r.data.metrics.get("epochs_run", 0) or 0) for r in runs if finite(r.data.metrics.get("epochs_run")))
    compute = {
        "runs": len(runs),
        "finished_runs": sum(1 for r in runs if r.info.status == "FINISHED"),
        "run_seconds": _round(seconds),
        "epochs": epochs,
        "trials": len(trials),
    }
    varied = sorted({k for t in trials for k in t["params"] if len({repr(u["params"].get(k)) for u in trials}) > 1})
    if len(trials) < 2 and best_trial is not None:
        config = train_params(parent.data.params)
        varied = sorted(k for k, v in best_trial["params"].items() if k in config and config[k] != v)
    return Observation(
        experiment_id=experiment_id,
        parent_run_id=parent.info.run_id,
        config=train_params(parent.data.params),
        direction=direction,
        trials=trials,
        best_trial=best_trial,
        best_value_history=history,
        tuned_params=varied,
        curves=curves,
        evaluations=evaluations,
        candidates=candidates,
        gate=gate,
        champion=read_champion(client, champion_name) if champion_name else None,
        compute=compute,
    )


def _is_trial(run) -> bool:
    tags = run.data.tags
    return tags.get(names.STEP_TAG) in names.TRIAL_STEPS or names.TRIAL_STATE_TAG in tags or any(tag in tags for tag in names.TRIAL_NUMBER_TAGS[:2])


def _direction(parent, trial_runs, completed) -> str:
    for run in [*trial_runs, parent]:
        value = (run.data.tags.get(names.DIRECTION_TAG) or run.data.tags.get("direction") or "").lower()
        if value in ("maximize", "minimize"):
            return value
    best = parent.data.metrics.get("best_value")
    values = [t["value"] for t in completed]
    if finite(best) and values and min(values) != max(values):
        if math.isclose(best, min(values), rel_tol=1e-6, abs_tol=1e-9):
            return "minimize"
    return "maximize"


def _trial(run) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    number = next((tags[tag] for tag in names.TRIAL_NUMBER_TAGS if tags.get(tag) is not None), None)
    try:
        number = int(number) if number is not None else None
    except ValueError:
        number = None
    value = None
    for key in VALUE_METRICS:
        if key in metrics:
            value = metrics[key]
            break
    if value is None and tags.get(names.OPTUNA_VALUE_TAG) is not None:
        try:
            value = float(tags[names.OPTUNA_VALUE_TAG])
        except ValueError:
            value = None
    state = (tags.get(names.TRIAL_STATE_TAG) or tags.get("state") or "").upper()
    if not state:
        state = {"FINISHED": "COMPLETE" if value is not None else "FAIL", "RUNNING": "RUNNING", "SCHEDULED": "RUNNING"}.get(run.info.status, "FAIL")
    return {
        "number": number,
        "state": state,
        "value": _round(value) if finite(value) else None,
        "params": train_params(run.data.params),
        "run_id": run.info.run_id,
        "epochs_run": int(metrics["epochs_run"]) if finite(metrics.get("epochs_run")) else None,
        "study": tags.get(names.STUDY_TAG),
        # a new best trial's saved weights (dlagent.ml.tuning), a warm start for the final training
        "checkpoint": f"runs:/{run.info.run_id}/{tags[names.CHECKPOINT_TAG]}" if tags.get(names.CHECKPOINT_TAG) else None,
    }


def _curve(client, run, step: str) -> dict:
    history = {}
    for key in CURVE_METRICS:
        if key not in run.data.metrics:
            continue
        points = client.get_metric_history(run.info.run_id, key)
        points = sorted(points, key=lambda m: (m.step, m.timestamp))
        # One value per step (a retried epoch logs its step again: the later value wins).
        per_step = {}
        for m in points:
            per_step[m.step] = m.value
        history[key] = [per_step[s] for s in sorted(per_step)]
    summary = analyze_curve(history)
    return {"run_id": run.info.run_id, "step": step, "params": train_params(run.data.params), **summary}


def _candidate(run) -> dict:
    from dlagent.ml.compression import CompressionConfig

    declared = {f.name: str(f.type) for f in dataclasses.fields(CompressionConfig)}
    config = {}
    for key, text in sorted(run.data.params.items()):
        if key in declared:
            config[key] = _typed(text, declared[key])
    metrics = _metrics(run)
    if "accuracy" not in metrics and "test_accuracy" in metrics:
        metrics["accuracy"] = metrics["test_accuracy"]
    return {"run_id": run.info.run_id, "name": run.data.tags.get(names.CANDIDATE_TAG) or run.info.run_name or run.info.run_id,
            "config": config, "metrics": metrics}


def read_champion(client, name: str) -> dict | None:
    """The champion of registered model ``name`` as the agent sees it: ``{"name", "version", "run_id",
    "metrics"}`` (the version's gate metrics over its run's), or ``None``
    (:func:`dlagent.ml.mlflow_names.read_champion`)."""
    champion = names.read_champion(client, name, with_run_metrics=True)
    if champion is None:
        return None
    metrics = {k: _round(v) for k, v in champion["metrics"].items() if finite(v)}
    return {"name": name, "version": champion["version"], "run_id": champion["run_id"], "metrics": dict(sorted(metrics.items()))}


def pipeline_run_of(client, run_id: str, *, own_parent: str | None = None) -> tuple[str, str]:
    """``(experiment_id, run_id)`` of the pipeline run ``run_id`` belongs to.

    ``run_id`` itself when it is a pipeline's parent run (or ``own_parent``), else the first
    ancestor that is (at most :data:`MAX_PARENT_HOPS` up): e.g. the run of a champion a sensor
    watched. A run that does not exist is a :class:`ConfigError` (field ``observe_run_id``).
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(run_id, str) or not run_id:
        raise ConfigError("observe_run_id", f"must be an MLflow run id, got {run_id!r}.", "pass a run id, or leave it empty.")
    for _ in range(MAX_PARENT_HOPS + 1):
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if names.is_missing(exc):
                raise ConfigError("observe_run_id", f"no MLflow run {run_id!r} at {_tracking_uri(client)}.",
                                  "pass the id of a pipeline run (or of a run under one), or leave it empty.") from exc
            raise
        parent = run.data.tags.get(names.PARENT_TAG)
        if run_id == own_parent or run.data.tags.get(names.KIND_TAG) == names.KIND_PIPELINE or not parent:
            return run.info.experiment_id, run.info.run_id
        run_id = parent
    return run.info.experiment_id, run.info.run_id


def read_planned(client, experiment_id: str, pipeline_run_id: str):
    """The plan the agent made in phase ``plan`` of a pipeline run (the latest finished one: a
    failed decision has no ``decisions.json``), as a :class:`~dlagent.agent.plan.Plan`, or ``None``."""
    import tempfile
    from pathlib import Path

    from dlagent.agent.plan import Plan

    where = " and ".join((names.tag_equals(names.PARENT_TAG, pipeline_run_id), names.tag_equals(names.STEP_TAG, names.STEP_AGENT),
                          names.tag_equals(names.PHASE_TAG, "plan"), "attributes.status = 'FINISHED'"))
    runs = client.search_runs([experiment_id], filter_string=where, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    with tempfile.TemporaryDirectory(prefix="dlagent-agent-") as folder:
        path = Path(client.download_artifacts(runs[0].info.run_id, names.DECISIONS_FILE, folder))
        try:
            return Plan.from_dict(path.read_text())
        except ConfigError as exc:
            raise ConfigError(f"{names.DECISIONS_FILE} of run {runs[0].info.run_id}: {exc.field}", exc.problem, exc.fix) from exc


# --------------------------------------------------------------------------- curves


def analyze_curve(history: dict, *, plateau_window: int = 3, plateau_tolerance: float = 0.01,
                  divergence_factor: float = 2.0, gap_threshold: float = 0.05) -> dict:
    """Summarise Keras-style histories (``{"loss": [...], "val_loss": [...], ...}``).

    Returns ``epochs``, ``best_epoch`` (0-based, lowest ``val_loss``, else ``loss``),
    ``best_val_loss``, ``best_val_accuracy``, ``final_accuracy``, ``gap`` (training minus
    validation accuracy at the best epoch; > 0 means over-fitting), ``loss_gap``,
    ``epochs_since_best``, ``still_improving`` (best epoch is the last), ``plateau`` (the
    monitored loss improved by less than ``plateau_tolerance`` relative over the last
    ``plateau_window`` epochs), ``diverged`` (a non-finite loss, or the training loss above
    ``divergence_factor`` x its best so far *and* having given back more than half of what it
    had gained since the first epoch: near zero, 0.01 -> 0.025 is noise, not divergence),
    ``overfitting``, ``underfitting``, and
    ``learning_rates`` (first/last logged).
    """
    loss = [float(v) for v in history.get("loss", [])]
    val_loss = [float(v) for v in history.get("val_loss", [])]
    acc = [float(v) for v in history.get("accuracy", [])]
    val_acc = [float(v) for v in history.get("val_accuracy", [])]
    lrs = [float(v) for v in history.get("learning_rate", [])]
    epochs = max((len(v) for v in history.values()), default=0)
    monitored = val_loss or loss
    diverged = any(not math.isfinite(v) for v in loss + val_loss)
    divergence_epoch = None
    best_so_far = math.inf
    first = next((v for v in loss if math.isfinite(v)), math.inf)
    for i, value in enumerate(loss):
        if not math.isfinite(value) or (best_so_far < math.inf and best_so_far > 0 and value > divergence_factor * best_so_far
                                        and value > best_so_far + 0.5 * (first - best_so_far)):
            diverged = True
            divergence_epoch = i if divergence_epoch is None else divergence_epoch
        elif value < best_so_far:
            best_so_far = value
    finite = [(v, i) for i, v in enumerate(monitored) if math.isfinite(v)]
    best_epoch = min(finite)[1] if finite else None

    def at(values, i):
        return values[i] if i is not None and i < len(values) and math.isfinite(values[i]) else None

    gap = None
    if best_epoch is not None and at(acc, best_epoch) is not None and at(val_acc, best_epoch) is not None:
        gap = acc[best_epoch] - val_acc[best_epoch]
    loss_gap = None
    if best_epoch is not None and at(loss, best_epoch) is not None and at(val_loss, best_epoch) is not None:
        loss_gap = val_loss[best_epoch] - loss[best_epoch]
    plateau = False
    if len(monitored) > plateau_window and all(math.isfinite(v) for v in monitored[-plateau_window - 1:]):
        before = monitored[-plateau_window - 1]
        gain = before - min(monitored[-plateau_window:])
        plateau = gain <= plateau_tolerance * abs(before)
    since_best = (len(monitored) - 1 - best_epoch) if best_epoch is not None else None
    still_improving = best_epoch is not None and since_best == 0 and not plateau and not diverged
    finite_val_acc = [v for v in val_acc if math.isfinite(v)]
    final_accuracy = next((v for v in reversed(acc) if math.isfinite(v)), None)
    overfitting = (gap is not None and gap > gap_threshold) or (
        since_best is not None and since_best >= 2 and len(loss) == len(monitored) and best_epoch is not None
        and math.isfinite(loss[-1]) and loss[-1] < loss[best_epoch])
    underfitting = (not overfitting and not diverged and final_accuracy is not None and final_accuracy < 0.9)
    return {
        "epochs": epochs,
        "best_epoch": best_epoch,
        "best_val_loss": _round(at(monitored, best_epoch)),
        "best_val_accuracy": _round(at(val_acc, best_epoch) if at(val_acc, best_epoch) is not None else (max(finite_val_acc) if finite_val_acc else None)),
        "final_accuracy": _round(final_accuracy),
        "gap": _round(gap),
        "loss_gap": _round(loss_gap),
        "epochs_since_best": since_best,
        "still_improving": bool(still_improving),
        "plateau": bool(plateau),
        "diverged": bool(diverged),
        "divergence_epoch": divergence_epoch,
        "overfitting": bool(overfitting),
        "underfitting": bool(underfitting),
        "learning_rates": [_round(lrs[0]), _round(lrs[-1])] if lrs else None,
    }


# --------------------------------------------------------------------------- resources


def measure_resources() -> dict:
    """CPUs usable by this process, the 1-minute load, free CPUs and free memory (GiB)."""
    try:
        cpu_count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpu_count = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    memory_free_gb = None
    try:
        import psutil

        memory_free_gb = round(psutil.virtual_memory().available / 2**30, 2)
        if load is None:
            load = psutil.getloadavg()[0]
    except Exception:  # noqa: BLE001 - psutil is optional
        pass
    cpus_free = max(0, int(cpu_count - math.ceil(load))) if load is not None else cpu_count
    return {"cpu_count": cpu_count, "load_1m": round(load, 2) if load is not None else None,
            "cpus_free": cpus_free, "memory_free_gb": memory_free_gb}


# --------------------------------------------------------------------------- helpers


def train_params(params: dict) -> dict:
    """The MLflow params of a run that are training settings, typed as the settings (str -> int/float)."""
    from dlagent.ml.config import TrainConfig

    declared = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key in sorted(params):
        if key in declared:
            value = _typed(params[key], declared[key])
            if value is not None:
                out[key] = value
    return out


def _typed(text, declared: str):
    try:
        if declared == "int":
            return int(float(text))
        if declared == "float":
            return float(text)
        if declared == "bool":
            return str(text).strip().lower() in ("true", "1", "yes")
        if declared.startswith("float | None") or declared.startswith("int | None"):
            return None if text in ("None", "") else float(text)
    except ValueError:
        return None
    return str(text)


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def _metrics(run) -> dict:
    return {k: _round(v) for k, v in sorted(run.data.metrics.items()) if finite(v)}


def _round(value, digits: int = 6):
    if value is None or not finite(value):
        return None
    return float(f"{float(value):.{digits + 3}g}") if abs(value) < 1e-3 else round(float(value), digits)
