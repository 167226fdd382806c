"""The deployment gate: bless a candidate only when it is measured better than the champion.

:func:`decide` compares three sets of measurements taken on the same held-out test split:

* ``candidate_metrics``: the model that would ship (e.g. the int8 TFLite candidate);
* ``reference_metrics``: the uncompressed model it came from (to bound what compression lost);
* ``champion_metrics``: the model deployed now (``None`` when nothing is deployed).

All of them are judged on the run's primary metric (:mod:`dlagent.ml.metrics`: ``test_<metric>``,
accuracy by default, rmse for regression), in its direction, and differences are in its
points: 0.01 for accuracy, auc, f1_macro and r2; 1 % of the reference value for rmse and mae.

A candidate is blessed when every check passes:

1. the metric reaches ``metric_threshold`` (when set; at least for accuracy, at most for rmse),
   and beats the trivial predictor (``baseline_test_<metric>`` among the candidate's metrics:
   the training split's most frequent class, or its mean target) by more than 0 and at least
   ``min_gain_over_baseline_points`` (when both are set);
2. the metric lost versus the reference ``<= max_metric_drop_points`` (when set);
3. ``size_bytes <= max_size_bytes`` and ``latency_ms_p95 <= max_latency_ms_p95`` (when set);
4. versus the champion: **better** by more than 0 and at least ``min_improvement_points``, or
   **as good** (within ``tie_tolerance_points``) **and** smaller or faster by at least
   ``min_efficiency_gain`` (a fraction of the champion's size or p95 latency).

A candidate worse than the champion by more than :data:`MAX_REGRESSION_POINTS` (0.5 points)
is never blessed, whatever the thresholds say.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dlagent.errors import ConfigError
from dlagent.ml.metrics import BASELINE_PREFIX, REGRESSION, Metric, get_metric
from dlagent.ml.selection import EPS, limit_checks
from dlagent.validation import bounded, check_fields, field_bounds, settings_from_dict

MAX_REGRESSION_POINTS = 0.5
SIZE = "size_bytes"
LATENCY = "latency_ms_p95"


@dataclass(frozen=True)
class GateThresholds:
    """Limits a candidate must meet; ``None`` switches a limit off. Validated on creation; each
    limit is declared once (the trigger form's Params are generated from these fields)."""

    metric_threshold: float | None = bounded(None, "number", low=-1e12, high=1e12, optional=True, title="Gate: required test metric",
                                             description="The primary metric the shipped model must reach on the test split: at "
                                                         "least this for accuracy, auc, f1_macro, r2 (fractions, e.g. 0.9), at "
                                                         "most this for rmse, mae (the target's units); empty for none.",
                                             fix="give e.g. 0.9 for 90% accuracy (or an RMSE in the target's units), or null.")
    max_metric_drop_points: float | None = bounded(1.0, "number", low=0.0, high=100.0, optional=True,
                                                   title="Gate: maximum compression loss (points)",
                                                   description="Points of the primary metric the compressed model may lose against "
                                                               "the uncompressed one: 0.01 of accuracy, or 1% of an RMSE or MAE.",
                                                   fix="give points in [0, 100], e.g. 1.0, or null for no limit.")
    max_size_bytes: int | None = bounded(None, "int", low=1, optional=True, title="Gate: maximum size (bytes)",
                                         description="Largest model file that may ship; empty for no limit.",
                                         fix="give a whole number of bytes, e.g. 500000, or null for no limit.")
    max_latency_ms_p95: float | None = bounded(None, "number", low=0.0, high=1e9, low_open=True, optional=True,
                                               title="Gate: maximum p95 latency (ms)",
                                               description="Slowest single-sample p95 latency that may ship; empty for no limit.",
                                               fix="give milliseconds > 0, e.g. 5.0, or null for no limit.")
    min_gain_over_baseline_points: float | None = bounded(0.0, "number", low=0.0, high=100.0, optional=True,
                                                          title="Gate: minimum gain over the trivial predictor (points)",
                                                          description="Points of the primary metric the shipped model must beat, on "
                                                                      "the test split, a predictor that never reads the features "
                                                                      "(the training split's most frequent class, or its mean "
                                                                      "target) by: 0 means strictly better; null ships a model "
                                                                      "that is not.",
                                                          fix="give points in [0, 100], e.g. 0, or null for no such check.")
    min_improvement_points: float = bounded(0.0, "number", low=0.0, high=100.0, fix="give points in [0, 100], e.g. 0.")
    tie_tolerance_points: float = bounded(MAX_REGRESSION_POINTS, "number", low=0.0, high=MAX_REGRESSION_POINTS,
                                          fix=f"give points in [0, {MAX_REGRESSION_POINTS}]: a model worse by more is never blessed.")
    min_efficiency_gain: float = bounded(0.05, "number", low=0.0, high=1.0, high_open=True,
                                         fix="give a fraction in [0, 1), e.g. 0.05 for 5% smaller or faster.")

    def __post_init__(self):
        check_fields(self, prefix="thresholds.")

    @classmethod
    def bounds(cls, name: str):
        return field_bounds(cls, name)

    @classmethod
    def from_dict(cls, values: dict | None) -> GateThresholds:
        """Build from a dict (Params); unknown keys are refused."""
        if values is None:
            return cls()
        return settings_from_dict(cls, values, section="thresholds", prefix="thresholds.", what="gate threshold")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _metric(metrics: dict | None, key: str, where: str, *, required: bool = False, fraction: bool = False) -> float | None:
    if metrics is None:
        return None
    if not isinstance(metrics, dict):
        raise ConfigError(where, f"must be a mapping of metric names to numbers, got {type(metrics).__name__}.", "pass the metrics dict from the evaluation.")
    value = metrics.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}", "is missing.", f"measure {key} on the test split first.")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}.{key}", f"must be a finite number, got {value!r}.", "pass measured values.")
    if fraction and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}.{key}", f"must be a fraction in [0, 1], got {value}.", "pass the metric as a fraction, not a percentage.")
    return float(value)


FRACTIONS = ("accuracy", "auc", "f1_macro")  # metrics that live in [0, 1] (r2 can be negative)


def decide(candidate_metrics: dict, reference_metrics: dict | None, champion_metrics: dict | None,
           thresholds: GateThresholds | dict | None = None, metric: Metric | str | None = None, *,
           candidate_vs_champion: float | None = None, test_samples: int | None = None) -> dict:
    """Decide whether the candidate ships.

    ``metric``: the primary metric (a :class:`~dlagent.ml.metrics.Metric` or its name; accuracy
    when empty). Returns ``{"blessed": bool, "reasons": [str], "checks": [{"check", "passed",
    "detail"}], "metric": str, "metric_drop_points": float|None, "delta_vs_champion_points":
    float|None}``: ``reasons`` holds the failed checks when rejected and what earned the blessing
    otherwise; ``checks`` holds every check. Bad input (thresholds of the wrong type, a metric that
    is not a number, a candidate without ``test_<metric>``, a champion measured on another
    metric) raises :class:`ConfigError`.

    ``candidate_vs_champion``: the candidate's score on the rows the champion's score was measured
    on, when those are not the whole test split (the rows the champion never trained on,
    :func:`champion_split`); the comparison with the champion uses it, the limits keep the whole split's.

    ``test_samples``: how many test samples the accuracy is counted on. Where one of them weighs
    more than ``max_metric_drop_points`` (68 samples: 1.47 points), a failed drop check says so:
    one flipped sample fails it, and the fix is a larger limit or more data, not another model.
    """
    if not isinstance(thresholds, GateThresholds):
        thresholds = GateThresholds.from_dict(thresholds)
    metric = metric if isinstance(metric, Metric) else get_metric(metric)
    key, fraction = metric.test_key, metric.name in FRACTIONS
    value = _metric(candidate_metrics, key, "candidate_metrics", required=True, fraction=fraction)
    size = _metric(candidate_metrics, SIZE, "candidate_metrics")
    latency = _metric(candidate_metrics, LATENCY, "candidate_metrics")
    reference = _metric(reference_metrics, key, "reference_metrics", required=reference_metrics is not None, fraction=fraction)
    # The limits: the same rule the evaluate step and the rules policy pick candidates with.
    checks = limit_checks(value, size, latency, reference, thresholds, metric)
    drop = -metric.gain_points(value, reference) if reference is not None else None
    _explain_a_coarse_split(checks, thresholds, metric, test_samples)
    baseline = _metric(candidate_metrics, BASELINE_PREFIX + key, "candidate_metrics", fraction=fraction)
    if baseline is not None and thresholds.min_gain_over_baseline_points is not None:
        checks.append(_baseline_check(value, baseline, thresholds.min_gain_over_baseline_points, metric))

    def check(name: str, passed: bool, detail: str):
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    delta = None
    if champion_metrics is not None and champion_metrics.get(key) is None:
        measured = sorted(k for k in champion_metrics if k.startswith("test_") and k != "test_loss")
        raise ConfigError("model_name", f"the deployed champion has no {key} (it was measured on {measured}): it was trained for "
                          "another task or metric, so the two cannot be compared.",
                          "register this model under a model_name of its own, or use the champion's metric.")
    champion_value = _metric(champion_metrics, key, "champion_metrics", required=champion_metrics is not None, fraction=fraction)
    if champion_value is None:
        check("champion", True, "no champion deployed: the first model that meets the limits ships")
    else:
        compared = value if candidate_vs_champion is None else _metric({key: candidate_vs_champion}, key, "candidate_vs_champion",
                                                                         fraction=fraction)
        delta = metric.gain_points(compared, champion_value)
        champion_size = _metric(champion_metrics, SIZE, "champion_metrics")
        champion_latency = _metric(champion_metrics, LATENCY, "champion_metrics")
        gain = thresholds.min_efficiency_gain
        smaller, faster = leaner(size, latency, champion_size, champion_latency, gain)
        versus = f"{key} {compared:.4f} vs the champion's {champion_value:.4f}" + (
            "" if candidate_vs_champion is None else ", on the test rows the champion never trained on")
        if delta < -MAX_REGRESSION_POINTS - EPS:
            check("champion", False, f"worse than the champion by {-delta:.2f} points ({versus}; more than {MAX_REGRESSION_POINTS}): "
                  "never blessed")
        elif delta > EPS and delta >= thresholds.min_improvement_points - EPS:
            check("champion", True, f"better than the champion by {delta:+.2f} points ({versus}; min_improvement_points "
                  f"{thresholds.min_improvement_points})")
        elif delta >= -thresholds.tie_tolerance_points - EPS and (smaller or faster):
            what = " and ".join(
                part for part, flag in (
                    (f"smaller ({size:g} vs {champion_size:g} bytes)" if smaller else "", smaller),
                    (f"faster (p95 {latency:.3f} vs {champion_latency:.3f} ms)" if faster else "", faster),
                ) if flag
            )
            check("champion", True, f"as good as the champion ({delta:+.2f} points, tolerance {thresholds.tie_tolerance_points}) and {what}")
        else:
            why = (f"{delta:+.2f} points versus the champion is not an improvement of at least "
                   f"{max(thresholds.min_improvement_points, 0.0)} points")
            if delta >= -thresholds.tie_tolerance_points - EPS:
                why += f", and it is not at least {gain:.0%} smaller or faster than the champion"
            else:
                why += f", and it is outside the {thresholds.tie_tolerance_points}-point tie tolerance"
            check("champion", False, why)

    blessed = all(c["passed"] for c in checks)
    reasons = [c["detail"] for c in checks if c["passed"] == blessed] if blessed else [c["detail"] for c in checks if not c["passed"]]
    return {
        "blessed": blessed,
        "reasons": reasons,
        "checks": checks,
        "metric": metric.name,
        "metric_drop_points": drop,
        "delta_vs_champion_points": delta,
        "thresholds": thresholds.to_dict(),
    }


def _baseline_check(value: float, baseline: float, min_gain: float, metric: Metric) -> dict:
    """Whether the candidate beats the trivial predictor (:func:`dlagent.ml.metrics.trivial_outputs`)
    by more than 0 and at least ``min_gain`` points: the first model of a name ships on the limits
    alone, and a model that answers the majority class every time meets them on imbalanced data."""
    gain = metric.gain_points(value, baseline)
    ok = gain > EPS and gain >= min_gain - EPS
    trivial = ("always predicting the training split's mean target" if metric.task == REGRESSION
               else "always answering the training split's most frequent class")
    detail = f"{metric.test_key} {value:.4f} against {baseline:.4f} for {trivial}: {gain:+.2f} points"
    if ok:
        return {"check": "baseline", "passed": True, "detail": f"{detail} (min_gain_over_baseline_points {min_gain})"}
    hint = "the model learned nothing from the features that shows on this split: train longer or on more data" + (
        "" if metric.task == REGRESSION else "; for imbalanced classes use metric 'f1_macro' (or 'auc') and class_weight 'balanced'")
    needed = "more than 0" if min_gain <= EPS else f"at least {min_gain}"
    return {"check": "baseline", "passed": False, "detail": f"{detail}, where {needed} is needed: {hint} "
                                                          "(thresholds.min_gain_over_baseline_points null ships it anyway)"}


def _explain_a_coarse_split(checks: list[dict], thresholds: GateThresholds, metric: Metric, test_samples: int | None) -> None:
    """Add to a failed ``max_metric_drop_points`` check that one test sample outweighs the limit."""
    limit = thresholds.max_metric_drop_points
    if metric.name != "accuracy" or not test_samples or limit is None or 100.0 / test_samples <= limit:
        return
    for entry in checks:
        if entry["check"] == "max_metric_drop_points" and not entry["passed"]:
            entry["detail"] += (f"; one of the {test_samples} test samples is {100.0 / test_samples:.2f} points, more than the limit: "
                                "a candidate that flips a single test sample fails it (raise max_metric_drop_points, or give "
                                "more test data)")


def leaner(size, latency, champion_size, champion_latency, min_efficiency_gain: float) -> tuple[bool, bool]:
    """``(smaller, faster)``: whether a candidate's size and p95 latency are at least
    ``min_efficiency_gain`` (a fraction) below the champion's; unmeasured is neither. Size and
    latency do not depend on a split: the gate and the agent's deploy decision share this rule."""
    def below(mine, theirs) -> bool:
        return mine is not None and theirs is not None and mine <= theirs * (1 - min_efficiency_gain) + EPS
    return below(size, champion_size), below(latency, champion_latency)


def champion_split(version_tags: dict, digest: str, seed) -> dict:
    """Whether the champion's score on this run's test split is a fair one to gate against.

    The gate measures the champion on *this* run's test rows. When the champion's own run split
    the same data with the same seed (its version's data tags, set at deployment), those rows
    were its test rows too: it never trained on them. Another seed, or data that changed (a
    grown table), moves rows the champion trained on into this test split, and its score there
    is optimistic: the evaluate step then compares both models on the rows the champion never
    trained on where it can rebuild the champion's split (the same data), and says so where it
    cannot. Returns ``{"split": "same" | "other" | "unknown", "detail": str}``.
    """
    from dlagent.ml.mlflow_names import DATA_DIGEST_TAG, DATA_SEED_TAG

    their_digest, their_seed = (version_tags or {}).get(DATA_DIGEST_TAG), (version_tags or {}).get(DATA_SEED_TAG)
    if not their_digest or their_seed is None:
        return {"split": "unknown", "detail": "the champion version records no data digest and seed (deployed before dlagent recorded "
                                              "them, or by hand): whether it trained on this run's test rows is unknown"}
    if their_digest == digest and str(their_seed) == str(seed):
        return {"split": "same", "detail": f"the champion's run split this data (digest {digest}) with this seed ({seed}): "
                                           "this run's test rows were its test rows, never its training rows"}
    theirs = f"this data (digest {digest}) with seed {their_seed}" if their_digest == digest else \
        f"other data (digest {their_digest}, seed {their_seed})"
    return {"split": "other", "detail": f"the champion was trained on a split of {theirs}; this run's test rows (seed {seed}) may "
                                        "include rows it trained on, where its score is optimistic"}
