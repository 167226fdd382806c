"""EvaluateOperator: measure the trained model, its compressed candidates and the champion on the
held-out splits, pick the candidate to ship, and gate it.

The candidate is picked on the **validation** split (each candidate's ``val_<metric>`` against
the uncompressed model's, :mod:`dlagent.ml.selection`), never on the test split, so the test
score reported for what ships is not optimistic. Then everything is measured in this task on
the same test split (same data set, options and seed as training): the uncompressed Keras
model (the reference), the chosen TFLite candidate and the current champion (its TFLite file
from the registry, alias ``champion``). The champion is measured on the validation split too
(``champion_val_<metric>``: what the agent compares with; where the champion trained on another
split of the same data, both this run's models and the champion are measured on the rows it never
trained on, for the gate on the test split and for the agent on the validation split). The gate
(:func:`dlagent.ml.gate.decide`) then says ``blessed: true/false`` with its reasons, which go
to MLflow (tags, ``gate/decision.json``) and to the task log.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.operators.base import DlagentOperator

DEFAULT_MODEL_NAME = "dlagent-classifier"
MEASURED_HERE = "measured on this split"  # a champion's source when its TFLite file ran on this run's split
MIN_UNSEEN_ROWS = 30  # fewer test rows the champion never trained on than this: compare on the whole split, with the note
SUMMARY_METRICS = (  # besides every test_<metric> (dlagent.ml.metrics)
    "macro_f1", "size_bytes", "gzip_size_bytes", "latency_ms_p50", "latency_ms_p95",
    "predict_latency_ms_p50", "throughput_samples_per_s", "sparsity", "num_params",
)


def pick_candidate(candidates: list[dict], reference: float, thresholds, metric=None) -> dict:
    """The most compressed candidate within the gate's limits on the validation split
    (:func:`dlagent.ml.selection.select_candidate`, the rule the gate and the agent use too;
    ``reference``: the uncompressed model's ``val_<metric>``); when none qualifies, the best
    scoring one on the primary ``metric``, and the gate says why it fails."""
    from dlagent.ml.selection import ACCURACY, best_scoring, select_candidate

    metric = metric or ACCURACY
    chosen, _ = select_candidate(candidates, reference, thresholds, metric)
    return chosen if chosen is not None else best_scoring(candidates, metric)


def _summary(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if (k in SUMMARY_METRICS or k.startswith(("test_", "val_", "baseline_test_")))
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class EvaluateOperator(DlagentOperator):
    """Evaluate, compare with the champion, and gate.

    :param model_uri: the trained (uncompressed) model, the reference (templated).
    :param candidates: the compress task's results (a list of ``{"candidate", "model_uri", "metrics"}``,
        templated, e.g. ``compress.output``); empty or ``None`` evaluates the Keras model alone.
    :param model_name: the registered model whose ``champion`` alias is compared with.
    :param thresholds: gate limits (``dlagent.ml.gate.GateThresholds`` fields), validated before any compute.
    :param explain: write an integrated-gradients (images) or permutation-importance (tables) plot.

    Returns small JSON: ``blessed``, ``reasons``, ``candidate`` (name, model URI, metrics),
    ``reference`` and ``champion`` metrics, ``metric`` (the primary metric's name), ``test_metric``
    (its value), ``test_<metric>`` and ``test_loss`` of what would ship.
    """

    template_fields: Sequence[str] = ("experiment_name", "model_uri", "candidates", "dataset", "data_options", "seed",
                                      "model_name", "thresholds", "explain")
    ui_color = "#e3f6e3"
    step = names.STEP_EVALUATE

    def __init__(self, *, model_uri: str, candidates: list | None = None, dataset: str = "digits", data_options: dict | None = None,
                 seed: int = 42, model_name: str = DEFAULT_MODEL_NAME, thresholds: dict | None = None, explain: bool = True,
                 latency_runs: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.model_uri = model_uri
        self.candidates = candidates
        self.dataset = dataset
        self.data_options = data_options
        self.seed = seed
        self.model_name = model_name
        self.thresholds = thresholds
        self.explain = explain
        self.latency_runs = latency_runs

    def _check_inputs(self):
        from dlagent.ml.gate import GateThresholds
        from dlagent.ml.model_store import resolve_logged_model
        from dlagent.ml.registry import check_model_name

        thresholds = GateThresholds.from_dict(self.thresholds)
        if not isinstance(self.model_uri, str) or not self.model_uri:
            raise ConfigError("model_uri", f"must be an MLflow model URI, got {self.model_uri!r}.", "pass the train task's model_uri.")
        if not isinstance(self.explain, bool):
            raise ConfigError("explain", f"must be true or false, got {self.explain!r}.", "give a boolean.")
        # One slice reads a mapped task's results at once; iterating would read them one by one until
        # Airflow answers "not found" (an error-level log line in every successful run).
        candidates = list(self.candidates[:]) if self.candidates else []
        for index, candidate in enumerate(candidates):
            if not isinstance(candidate, dict) or not {"model_uri", "metrics", "candidate"} <= set(candidate):
                raise ConfigError(f"candidates[{index}]", f"is not a compress task result: {candidate!r}.",
                                  "pass the compress task's output (compress.output).")
        resolve_logged_model(self.hook.client, self.model_uri)
        return thresholds, candidates, check_model_name(self.model_name)

    def run(self, context):
        import json
        import tempfile
        from pathlib import Path

        from dlagent import settings
        from dlagent.ml import tracking
        from dlagent.ml.data import load_dataset_with_options
        from dlagent.ml.evaluation import evaluate_keras, evaluate_tflite, keras_score, log_evaluation
        from dlagent.ml.gate import LATENCY, SIZE, decide
        from dlagent.ml.lineage import EVALUATION, log_dataset_input
        from dlagent.ml.metrics import BASELINE_PREFIX, baseline_scores
        from dlagent.ml.model_store import load_keras_model, read_tflite
        from dlagent.ml.models import keras_predict
        from dlagent.ml.plotting import plot_candidates
        from dlagent.ml.tflite import TFLiteModel

        thresholds, candidates, model_name = self._check_inputs()
        splits = load_dataset_with_options(self.dataset, self.data_options, seed=int(self.seed), allowed_roots=settings.data_roots())
        primary = splits.primary
        for index, c in enumerate(candidates):  # the choice reads validation scores: a candidate without one cannot be judged
            if not isinstance(c["metrics"].get(primary.val_key), (int, float)):
                raise ConfigError(f"candidates[{index}].metrics", f"has no {primary.val_key} (candidate {c['candidate']!r}): "
                                  "candidates are chosen on the validation split, never on the test split.",
                                  "pass the compress task's output (compress.output) of this dlagent version.")
        runs = int(self.latency_runs)
        with self.step_run(context) as run_id, tempfile.TemporaryDirectory(prefix="dlagent-eval-") as tmp:
            client = self.hook.client
            log_dataset_input(client, run_id, splits, EVALUATION)
            tracking.log_params_safely(client, run_id, {"model_uri": self.model_uri, "dataset": self.dataset, "seed": self.seed,
                                                       "task": splits.task, "metric": primary.name,
                                                       "model_name": model_name, "candidates": len(candidates),
                                                       **{f"gate.{k}": v for k, v in thresholds.to_dict().items()}})
            model = load_keras_model(client, self.model_uri)
            reference = evaluate_keras(model, splits, out_dir=Path(tmp) / "keras", explain=self.explain, latency_runs=runs)
            reference.metrics[primary.val_key] = keras_score(model, splits, "val")
            log_evaluation(client, run_id, reference, prefix="keras_")
            tracking.log_metrics(client, run_id, {k: v for k, v in reference.metrics.items() if k.startswith(("test_", "val_"))})
            self.log.info("reference Keras model: %s", _describe(reference.metrics, primary))

            if candidates:
                chosen = pick_candidate(candidates, reference.metrics[primary.val_key], thresholds, primary)
                for c in candidates:
                    self.log.info("candidate %-24s %s%s", c["candidate"], _describe(c["metrics"], primary), "  <- chosen" if c is chosen else "")
                try:  # a picture of the choice: never a reason for the gate not to run
                    client.log_artifact(run_id, str(plot_candidates(candidates, reference.metrics[primary.val_key],
                                                                    thresholds.max_metric_drop_points, primary, chosen["candidate"],
                                                                    Path(tmp) / names.CANDIDATES_PLOT_FILE)), "evaluation")
                except Exception as exc:  # noqa: BLE001 - logged; the decision below does not depend on it
                    self.log.warning("the compression candidates' plot was not drawn: %s: %s", type(exc).__name__, exc)
                tflite = read_tflite(client, chosen["model_uri"])
                report = evaluate_tflite(tflite, splits, out_dir=Path(tmp) / "tflite", explain=False, latency_runs=runs)
                log_evaluation(client, run_id, report, prefix="tflite_")
                shipped = {**chosen["metrics"], **report.metrics}  # val_<metric>, sparsity... from compress, the rest measured here
                candidate = {"candidate": chosen["candidate"], "model_uri": chosen["model_uri"], "run_id": chosen.get("run_id")}
            else:
                shipped = dict(reference.metrics)
                candidate = {"candidate": "keras", "model_uri": self.model_uri, "run_id": None}
            client.set_tag(run_id, names.CANDIDATE_TAG, candidate["candidate"])
            # what a model that never reads the features scores here: the gate's floor
            shipped.update(baseline_scores(splits.task, splits.y_train, splits.y_test, splits.num_classes, primary))
            tracking.log_metrics(client, run_id, {k: v for k, v in shipped.items() if k.startswith(BASELINE_PREFIX)})
            self.log.info("trivial predictor (%s): test %s %.4f", "the training mean" if splits.is_regression else
                          "the most frequent training class", primary.name, shipped[BASELINE_PREFIX + primary.test_key])
            # what the gate judges, for readers of this run (the agent among them)
            tracking.log_metrics(client, run_id, {f"shipped_{key}": shipped[key] for key in (primary.test_key, primary.val_key, SIZE, LATENCY)
                                                  if key in shipped})

            predict_reference = lambda x: keras_predict(model, x)  # noqa: E731 - one name for the uncompressed model's predictions
            predict_shipped = TFLiteModel(tflite).predict if candidates else predict_reference
            champion = self._measure_champion(client, model_name, splits, runs, Path(tmp), predict_shipped, predict_reference)
            if champion is not None:
                tracking.log_metrics(client, run_id, {f"champion_{k}": v for k, v in champion["metrics"].items()})
                tracking.log_metrics(client, run_id, {f"{names.UNSEEN_BY_CHAMPION_PREFIX}{k}": v
                                                      for k, v in champion.get("val_on_unseen_rows", {}).get("metrics", {}).items()})
                client.set_tag(run_id, names.GATE_CHAMPION_VERSION_TAG, str(champion["version"]))
                client.set_tag(run_id, names.GATE_CHAMPION_SPLIT_TAG, champion["split"])
            decision = decide(shipped, reference.metrics, champion["metrics"] if champion else None, thresholds, primary,
                              candidate_vs_champion=(champion or {}).get("candidate_on_unseen_rows"), test_samples=len(splits.y_test))
            if champion is not None and champion["split"] == "other" and champion["source"] == MEASURED_HERE:
                decision["reasons"].append(f"note: {champion['split_detail']}")
            client.set_tag(run_id, names.GATE_BLESSED_TAG, str(decision["blessed"]).lower())
            client.set_tag(run_id, names.GATE_REASONS_TAG, "; ".join(decision["reasons"])[:5000])
            client.set_tag(run_id, names.GATE_THRESHOLDS_TAG, json.dumps(decision["thresholds"], sort_keys=True))
            decision_path = Path(tmp) / names.GATE_DECISION_FILE
            decision_path.write_text(json.dumps({**decision, "candidate": candidate, "champion": champion}, indent=2, default=str))
            client.log_artifact(run_id, str(decision_path), names.GATE_DECISION_ARTIFACT)

        for check in decision["checks"]:
            self.log.info("gate %s %-26s %s", "PASS" if check["passed"] else "FAIL", check["check"], check["detail"])
        self.log.info("gate: %s (%s)", "BLESSED" if decision["blessed"] else "NOT blessed", "; ".join(decision["reasons"]))
        return {
            "run_id": run_id,
            "blessed": decision["blessed"],
            "reasons": decision["reasons"],
            "candidate": {**candidate, "metrics": _summary(shipped)},
            "reference": {"model_uri": self.model_uri, "metrics": _summary(reference.metrics)},
            "champion": champion,
            "metric": primary.name,
            "metric_drop_points": decision["metric_drop_points"],
            "delta_vs_champion_points": decision["delta_vs_champion_points"],
            "test_metric": shipped[primary.test_key],
            "reference_test_metric": reference.metrics[primary.test_key],
            "baseline_test_metric": shipped[BASELINE_PREFIX + primary.test_key],
            primary.test_key: shipped[primary.test_key],
            "test_loss": shipped["test_loss"],
            "data": {"digest": splits.digest, "seed": int(self.seed)},  # the deploy step tags the version with them
        }

    def _measure_champion(self, client, model_name, splits, runs, tmp, predict_shipped, predict_reference):
        """The champion's metrics on *this* split, or the ones stored at its registration when
        its TFLite file cannot run on this data (another input shape): said in the log.

        When the champion was trained on another split of the same data (another seed), some of
        these test rows were its training rows: its test score is then measured on the rows it
        never trained on, and so is the candidate's (``predict_shipped``), for the gate to compare
        (``candidate_on_unseen_rows``; :func:`dlagent.ml.gate.champion_split`). Its validation
        score likewise, on the validation rows it never trained on, with the shipped candidate's
        and the uncompressed model's (``predict_reference``) there (``val_on_unseen_rows``), for
        the agent to compare like with like."""
        from dlagent.ml.evaluation import evaluate_tflite
        from dlagent.ml.gate import champion_split
        from dlagent.ml.serving import read_champion_tflite
        from dlagent.ml.tflite import TFLiteModel

        found = read_champion_tflite(client, model_name)
        if found is None:
            self.log.info("no champion for %s yet: the first model that meets the limits ships", model_name)
            return None
        content, info = found
        try:
            # a table's champion may have learned another vocabulary: its own encoding of the raw rows
            champion_splits = dataclasses.replace(splits, x_test=splits.inputs_for(info.get("encoding"), "test"),
                                                  x_val=splits.inputs_for(info.get("encoding"), "val"))
            report = evaluate_tflite(content, champion_splits, out_dir=tmp / "champion", explain=False, latency_runs=runs)
            source = MEASURED_HERE
            primary = splits.primary
            predict_champion = TFLiteModel(content).predict  # one interpreter for every score of the champion below
            val_score = primary.score(splits.y_val, predict_champion(champion_splits.x_val))
            metrics = {**_summary(report.metrics), primary.val_key: val_score}
        except Exception as exc:  # noqa: BLE001 - e.g. the champion was trained on other input shapes
            if not info["metrics"]:
                raise ConfigError("model_name", f"the champion of {model_name!r} (version {info['version']}) cannot run on this "
                                  f"data set ({exc}) and has no stored metrics.", "use another model_name for this data set.") from exc
            self.log.warning("champion version %s cannot run on this split (%s): comparing with its stored metrics", info["version"], exc)
            source, metrics = "stored at registration", _summary(info["metrics"])
        self.log.info("champion %s version %s (%s): %s", model_name, info["version"], source, _describe(metrics, splits.primary))
        split = champion_split(info.get("tags"), splits.digest, int(self.seed))
        champion = {"version": info["version"], "source": source, "metrics": metrics, "split": split["split"], "split_detail": split["detail"]}
        if split["split"] != "other" or source != MEASURED_HERE:
            self.log.info("champion version %s: %s", info["version"], split["detail"])
            return champion
        masks = self._rows_the_champion_never_trained_on(splits, info.get("tags"))
        if masks is not None:
            self._compare_on_unseen_validation_rows(champion, masks["val"], splits, champion_splits, predict_champion, predict_shipped,
                                                    predict_reference)
        unseen = None if masks is None else masks["test"]
        if unseen is None or int(unseen.sum()) < MIN_UNSEEN_ROWS:
            why = ("its split cannot be rebuilt here, so the whole test and validation splits are compared" if unseen is None else
                   f"only {int(unseen.sum())} test rows (< {MIN_UNSEEN_ROWS}), so the whole test split is compared")
            champion["split_detail"] += f"; the rows it never trained on: {why} and the comparison favours the champion"
            self.log.warning("champion version %s: %s", info["version"], champion["split_detail"])
            return champion
        # Both models on the same rows, the ones the champion never trained on: a fair comparison.
        primary, rows = splits.primary, int(unseen.sum())
        all_rows = metrics[primary.test_key]
        champion_score, ours = _scores_on_rows(primary, splits.y_test, unseen, champion_splits.x_test, splits.x_test, predict_champion,
                                               {"shipped": predict_shipped})
        candidate_score = ours["shipped"]
        champion.update(metrics={**champion["metrics"], primary.test_key: champion_score}, unseen_rows=rows, candidate_on_unseen_rows=candidate_score,
                        metrics_on_all_test_rows={primary.test_key: all_rows})
        champion["split_detail"] += (f"; compared on the {rows} of {len(splits.y_test)} test rows it never trained on: the champion "
                                     f"{champion_score:.4f} there ({all_rows:.4f} on all), this run's candidate {candidate_score:.4f}")
        self.log.info("champion version %s: %s", info["version"], champion["split_detail"])
        return champion

    def _compare_on_unseen_validation_rows(self, champion, unseen, splits, champion_splits, predict_champion, predict_shipped,
                                           predict_reference):
        """The champion's, the shipped candidate's and the uncompressed model's validation scores on
        the validation rows the champion never trained on (``unseen``, a mask), into ``champion``
        (its ``metrics`` and ``val_on_unseen_rows``); with fewer than :data:`MIN_UNSEEN_ROWS`, its
        whole-split score stays, and the detail says it favours the champion."""
        primary, rows = splits.primary, int(unseen.sum())
        if rows < MIN_UNSEEN_ROWS:
            champion["split_detail"] += (f"; its validation score is on the whole validation split (only {rows} rows it never "
                                         f"trained on, < {MIN_UNSEEN_ROWS}): the agent's comparison favours it")
            return
        theirs, ours = _scores_on_rows(primary, splits.y_val, unseen, champion_splits.x_val, splits.x_val, predict_champion,
                                       {f"shipped_{primary.val_key}": predict_shipped, primary.val_key: predict_reference})
        champion["metrics_on_all_val_rows"] = {primary.val_key: champion["metrics"][primary.val_key]}
        champion["metrics"] = {**champion["metrics"], primary.val_key: theirs}
        champion["val_on_unseen_rows"] = {"rows": rows, "metrics": ours}
        champion["split_detail"] += (f"; on the {rows} of {len(splits.y_val)} validation rows it never trained on (what the agent "
                                     f"compares): the champion {theirs:.4f}, this run's candidate {ours[f'shipped_{primary.val_key}']:.4f}")

    def _rows_the_champion_never_trained_on(self, splits, version_tags):
        """Masks over this run's test and validation rows (``{"test": ..., "val": ...}``), True
        where the champion's own split (the same data, re-split with its seed) had no such row in
        its training split; ``None`` where that split
        cannot be rebuilt here: data that changed, a streamed folder, a table with categorical
        columns (its rows are encoded with a vocabulary learned per split)."""
        import numpy as np

        from dlagent import settings
        from dlagent.ml.data import load_dataset_with_options
        from dlagent.ml.splits import rows_not_in

        tags = version_tags or {}
        if tags.get(names.DATA_DIGEST_TAG) != splits.digest or splits.encoding is not None or not isinstance(splits.x_test, np.ndarray):
            return None
        theirs = load_dataset_with_options(self.dataset, self.data_options, seed=int(tags[names.DATA_SEED_TAG]),
                                           allowed_roots=settings.data_roots())
        if not isinstance(theirs.x_train, np.ndarray):
            return None
        return {"test": rows_not_in(splits.x_test, splits.y_test, theirs.x_train, theirs.y_train),
                "val": rows_not_in(splits.x_val, splits.y_val, theirs.x_train, theirs.y_train)}


def _scores_on_rows(metric, y, rows, champion_x, x, predict_champion, predictors: dict) -> tuple[float, dict]:
    """The champion's score (on ``champion_x``: its own encoding of the rows) and each of
    ``predictors``' (on ``x``) on the same rows, those the mask ``rows`` selects."""
    y = y[rows]
    return (metric.score(y, predict_champion(champion_x[rows])),
            {name: metric.score(y, predict(x[rows])) for name, predict in predictors.items()})


def _describe(m: dict, metric) -> str:
    value, val = m.get(metric.test_key), m.get(metric.val_key)
    parts = [f"test {metric.name} {value:.4f}" if isinstance(value, (int, float)) else f"test {metric.name} not measured"]
    if isinstance(val, (int, float)):
        parts.append(f"validation {val:.4f}")
    if "size_bytes" in m:
        parts.append(f"{m['size_bytes']:,} bytes")
    if "gzip_size_bytes" in m:
        parts.append(f"gzip {m['gzip_size_bytes']:,}")
    if "latency_ms_p50" in m:
        parts.append(f"p50 {m['latency_ms_p50']:.3f} ms")
    if "latency_ms_p95" in m:
        parts.append(f"p95 {m['latency_ms_p95']:.3f} ms")
    return ", ".join(parts)
