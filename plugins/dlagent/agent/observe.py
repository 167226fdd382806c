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
* **evaluations** (``dlagent.step = evaluate``): their metrics (``val_<metric>``,
  ``test_<metric>``...); the primary metric is the ``metric`` param the runs logged (accuracy
  when none did).
* **compression candidates** (``dlagent.step = compress``): metrics ``val_<metric>`` (the
  primary one is read), ``test_<metric>``, ``size_bytes``, ``latency_ms_p95``; config from the
  params that are compression settings (``sparsity``, ``quantization``, ...).
* **gate**: the most recent run with a ``dlagent.gate.blessed`` tag (``true``/``false``), its
  metrics, the champion version it measured and the gate's limits (``thresholds``, from the
  ``dlagent.gate.thresholds`` tag; ``None`` for a run logged before it existed).
* **champion**: the version under alias ``champion`` of ``champion_name`` (absent model or
  alias: ``None``); metrics from its ``dlagent.metric.*`` tags, then its run's metrics.
* **compute**: number of runs, summed run durations (finished runs), summed ``epochs_run``.
* **resources**: CPUs of this process (affinity), 1-minute load, free CPUs, free memory.
  Only this part changes between two observations of the same MLflow history; pass
  ``resources=`` to fix it (tests, replays).

Every score a policy decides or is rewarded on is a **validation** score (the views below:
:attr:`Observation.reference_score`, :attr:`Observation.champion_score`, the candidates'
``val_<metric>``); test scores are observed for the record only, so the test split a run
reports on never steers it (``tests/agent/test_no_selection_on_test.py``).

An unreachable MLflow raises :class:`ObservationError` (never a silent empty observation);
a parent run that does not exist raises :class:`~dlagent.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from dlagent.agent.curves import rounded
from dlagent.agent.resources import measure_resources
from dlagent.agent.run_views import (
    better,
    candidate_view,
    curve_view,
    finite_metrics,
    is_trial,
    read_champion,
    train_params,
    trial_direction,
    trial_view,
)
from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.settings import client_location
from dlagent.validation import finite

MAX_DEPTH = 3


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
    metric: str = "accuracy"  # the run's primary metric (dlagent.ml.metrics): what every comparison uses

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
    def primary(self):
        """The primary metric (:class:`dlagent.ml.metrics.Metric`)."""
        from dlagent.ml.metrics import get_metric

        return get_metric(self.metric)

    @property
    def reference_score(self) -> float | None:
        """Best validation primary metric (``val_<metric>``) of an uncompressed model (evaluation runs)."""
        key = self.primary.val_key
        return self.primary.best(e["metrics"].get(key) for e in self.evaluations)

    @property
    def champion_score(self) -> float | None:
        """The champion's validation primary metric: measured on this run's validation split by the
        evaluate step (``champion_val_<metric>``; on the rows it never trained on where it trained on
        another split: compare it with :meth:`versus_champion`) when that step measured *this* champion version
        (the alias may have moved since: another run deployed, or this run produced the champion),
        else the one stored with its version (its own run's validation split), else ``None`` (no
        champion, or one registered before validation scores were stored)."""
        from dlagent.ml.selection import metric_of

        if self.champion is None:
            return None
        measured = self._measured_with_this_champion(f"champion_{self.primary.val_key}")
        if measured is not None:
            return measured
        return metric_of(self.champion.get("metrics") or {}, self.primary)

    def versus_champion(self, model: str) -> float | None:
        """This run's ``model`` (``"shipped"``: the gated candidate; ``"reference"``: the
        uncompressed model) validation score on the rows :attr:`champion_score` was measured on,
        where those are not the whole validation split: when the champion trained on another
        split of the same data, the evaluate step scored it, and this run's models, on the
        validation rows it never trained on (``unseen_by_champion_*`` metrics), so the two
        compare like with like. ``None``: compare with the whole split's scores."""
        from dlagent.ml import mlflow_names as names

        keys = {"reference": self.primary.val_key, "shipped": f"shipped_{self.primary.val_key}"}
        if model not in keys:
            raise ValueError(f"versus_champion: model must be one of {sorted(keys)}, got {model!r}")
        key = keys[model]
        return self._measured_with_this_champion(names.UNSEEN_BY_CHAMPION_PREFIX + key)

    @property
    def reward_scores(self) -> tuple[float | None, float | None]:
        """``(value, baseline)`` a learning policy's reward compares: this run's uncompressed
        model's validation score and the champion's (:attr:`champion_score`), on the same rows
        (:meth:`versus_champion`, else the whole split's :attr:`reference_score`)."""
        fair = self.versus_champion("reference")
        return (self.reference_score if fair is None else fair), self.champion_score

    def shipped_leaner(self) -> tuple[bool, bool] | None:
        """``(smaller, faster)``: whether the gated candidate's size and p95 latency are below the
        champion's by the gate's ``min_efficiency_gain`` (:func:`dlagent.ml.gate.leaner`), as the
        evaluate run measured them with *this* champion; ``None`` where it did not."""
        from dlagent.ml.gate import LATENCY, SIZE, GateThresholds, leaner

        gate = self.gate or {}
        gain = (gate.get("thresholds") or {}).get("min_efficiency_gain", GateThresholds().min_efficiency_gain)
        mine = [gate.get("metrics", {}).get(f"shipped_{key}") for key in (SIZE, LATENCY)]
        theirs = [self._measured_with_this_champion(f"champion_{key}") for key in (SIZE, LATENCY)]
        if all(v is None for v in theirs):
            return None
        return leaner(mine[0], mine[1], theirs[0], theirs[1], gain)

    def _measured_with_this_champion(self, key: str) -> float | None:
        """The evaluate run's metric ``key`` when that run measured *this* champion version."""
        if self.champion is None:
            return None
        gate = self.gate or {}
        value = gate.get("metrics", {}).get(key)
        if finite(value) and str(gate.get("champion_version")) == str(self.champion.get("version")):
            return float(value)
        return None


# --------------------------------------------------------------------------- observe


def observe(client, experiment_id: str, parent_run_id: str, champion_name: str | None = None, *,
            resources: dict | None = None) -> Observation:
    """Read the DAG run under ``parent_run_id`` from MLflow (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(parent_run_id, str) or not parent_run_id:
        raise ConfigError("parent_run_id", f"must be an MLflow run id, got {parent_run_id!r}.", "pass the DAG run's parent run id.")
    uri = client_location(client)
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
        frontier = [r.info.run_id for r in children if not is_trial(r) and r.data.tags.get(names.STEP_TAG) not in names.LEAF_STEPS]
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


def _thresholds(text: str | None) -> dict | None:
    """The gate's limits from its tag; a tag that is not a JSON object reads as none."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _build(client, experiment_id, parent, runs, champion_name) -> Observation:
    by_step: dict[str, list] = {}
    trials_runs = []
    for run in runs:
        tags = run.data.tags
        step = tags.get(names.STEP_TAG, "")
        if is_trial(run):
            trials_runs.append(run)
        else:
            by_step.setdefault(step, []).append(run)

    trials = sorted((trial_view(run) for run in trials_runs), key=lambda t: (t["number"] if t["number"] is not None else 10**9, t["run_id"]))
    completed = [t for t in trials if t["state"] == "COMPLETE" and finite(t["value"])]
    metric = next((r.data.params["metric"] for r in runs if r.data.params.get("metric")), "accuracy")
    direction = trial_direction(parent, trials_runs, completed)
    best_trial = None
    history = []
    for trial in completed:  # in trial-number order; a tie keeps the earlier trial
        if best_trial is None or better(trial["value"], best_trial["value"], direction):
            best_trial = trial
        history.append(best_trial["value"])

    curves = []
    for run in by_step.get("train", []):
        curves.append(curve_view(client, run, "train"))
    if best_trial is not None:
        best_run = next(r for r in trials_runs if r.info.run_id == best_trial["run_id"])
        curve = curve_view(client, best_run, "trial")
        if curve["epochs"]:
            curves.append(curve)

    evaluations = [{"run_id": r.info.run_id, "metrics": finite_metrics(r)} for r in by_step.get("evaluate", [])]
    candidates = [candidate_view(r) for r in by_step.get("compress", [])]
    gate = None
    for run in reversed(runs):
        value = run.data.tags.get(names.GATE_BLESSED_TAG)
        if value is not None:
            gate = {"run_id": run.info.run_id, "blessed": value.strip().lower() in ("true", "1", "yes"), "metrics": finite_metrics(run),
                    "champion_version": run.data.tags.get(names.GATE_CHAMPION_VERSION_TAG),
                    "thresholds": _thresholds(run.data.tags.get(names.GATE_THRESHOLDS_TAG))}
            break

    seconds = sum((r.info.end_time - r.info.start_time) / 1000.0 for r in runs if r.info.end_time and r.info.start_time)
    epochs = sum(int(r.data.metrics.get("epochs_run", 0) or 0) for r in runs if finite(r.data.metrics.get("epochs_run")))
    compute = {
        "runs": len(runs),
        "finished_runs": sum(1 for r in runs if r.info.status == "FINISHED"),
        "run_seconds": rounded(seconds),
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
        metric=metric,
    )
