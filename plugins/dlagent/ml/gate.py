"""The deployment gate: bless a candidate only when it is measured better than the champion.

:func:`decide` compares three sets of measurements taken on the same held-out test split:

* ``candidate_metrics``: the model that would ship (e.g. the int8 TFLite candidate);
* ``reference_metrics``: the uncompressed model it came from (to bound what compression lost);
* ``champion_metrics``: the model deployed now (``None`` when nothing is deployed).

A candidate is blessed when every check passes:

1. ``test_accuracy >= min_accuracy`` (when set);
2. accuracy drop versus the reference ``<= max_accuracy_drop_points`` (when set);
3. ``size_bytes <= max_size_bytes`` and ``latency_ms_p95 <= max_latency_ms_p95`` (when set);
4. versus the champion: **better** by more than 0 and at least ``min_improvement_points``, or
   **as good** (within ``tie_tolerance_points``) **and** smaller or faster by at least
   ``min_efficiency_gain`` (a fraction of the champion's size or p95 latency).

A candidate worse than the champion by more than :data:`MAX_REGRESSION_POINTS` (0.5
accuracy points) is never blessed, whatever the thresholds say. Accuracies are fractions in
[0, 1]; differences are reported in points (1 point = 0.01).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dlagent.errors import ConfigError
from dlagent.ml.selection import EPS, limit_checks, points
from dlagent.validation import bounded, check_fields, field_bounds, settings_from_dict

MAX_REGRESSION_POINTS = 0.5
ACCURACY = "test_accuracy"
SIZE = "size_bytes"
LATENCY = "latency_ms_p95"


@dataclass(frozen=True)
class GateThresholds:
    """Limits a candidate must meet; ``None`` switches a limit off. Validated on creation; each
    limit is declared once (the trigger form's Params are generated from these fields)."""

    min_accuracy: float | None = bounded(None, "number", low=0.0, high=1.0, optional=True, title="Gate: minimum accuracy",
                                         description="Test accuracy (fraction) the shipped model must reach; empty for none.",
                                         fix="give a fraction in [0, 1], e.g. 0.9 for 90%, or null for no minimum.")
    max_accuracy_drop_points: float | None = bounded(1.0, "number", low=0.0, high=100.0, optional=True,
                                                     title="Gate: maximum compression loss",
                                                     description="Accuracy points the compressed model may lose against the uncompressed one.",
                                                     fix="give accuracy points in [0, 100], e.g. 1.0, or null for no limit.")
    max_size_bytes: int | None = bounded(None, "int", low=1, optional=True, title="Gate: maximum size (bytes)",
                                         description="Largest model file that may ship; empty for no limit.",
                                         fix="give a whole number of bytes, e.g. 500000, or null for no limit.")
    max_latency_ms_p95: float | None = bounded(None, "number", low=0.0, high=1e9, low_open=True, optional=True,
                                               title="Gate: maximum p95 latency (ms)",
                                               description="Slowest single-sample p95 latency that may ship; empty for no limit.",
                                               fix="give milliseconds > 0, e.g. 5.0, or null for no limit.")
    min_improvement_points: float = bounded(0.0, "number", low=0.0, high=100.0, fix="give accuracy points in [0, 100], e.g. 0.")
    tie_tolerance_points: float = bounded(MAX_REGRESSION_POINTS, "number", low=0.0, high=MAX_REGRESSION_POINTS,
                                          fix=f"give accuracy points in [0, {MAX_REGRESSION_POINTS}]: a model worse by more is never blessed.")
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


def _metric(metrics: dict | None, key: str, where: str, *, required: bool = False) -> float | None:
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
    if key == ACCURACY and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}.{key}", f"must be a fraction in [0, 1], got {value}.", "pass accuracy as a fraction, not a percentage.")
    return float(value)


def decide(candidate_metrics: dict, reference_metrics: dict | None, champion_metrics: dict | None,
           thresholds: GateThresholds | dict | None = None) -> dict:
    """Decide whether the candidate ships.

    Returns ``{"blessed": bool, "reasons": [str], "checks": [{"check", "passed", "detail"}],
    "accuracy_drop_points": float|None, "delta_vs_champion_points": float|None}``: ``reasons``
    holds the failed checks when rejected and what earned the blessing otherwise; ``checks``
    holds every check. Bad input (thresholds of the wrong type, a metric that is not a number,
    a candidate without ``test_accuracy``) raises :class:`ConfigError`.
    """
    if not isinstance(thresholds, GateThresholds):
        thresholds = GateThresholds.from_dict(thresholds)
    accuracy = _metric(candidate_metrics, ACCURACY, "candidate_metrics", required=True)
    size = _metric(candidate_metrics, SIZE, "candidate_metrics")
    latency = _metric(candidate_metrics, LATENCY, "candidate_metrics")
    reference_accuracy = _metric(reference_metrics, ACCURACY, "reference_metrics", required=reference_metrics is not None)
    # The limits: the same rule the evaluate step and the rules policy pick candidates with.
    checks = limit_checks(accuracy, size, latency, reference_accuracy, thresholds)
    drop = points(reference_accuracy, accuracy) if reference_accuracy is not None else None

    def check(name: str, passed: bool, detail: str):
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    delta = None
    champion_accuracy = _metric(champion_metrics, ACCURACY, "champion_metrics", required=champion_metrics is not None)
    if champion_accuracy is None:
        check("champion", True, "no champion deployed: the first model that meets the limits ships")
    else:
        delta = points(accuracy, champion_accuracy)
        champion_size = _metric(champion_metrics, SIZE, "champion_metrics")
        champion_latency = _metric(champion_metrics, LATENCY, "champion_metrics")
        gain = thresholds.min_efficiency_gain
        smaller = size is not None and champion_size is not None and size <= champion_size * (1 - gain) + EPS
        faster = latency is not None and champion_latency is not None and latency <= champion_latency * (1 - gain) + EPS
        if delta < -MAX_REGRESSION_POINTS - EPS:
            check("champion", False, f"worse than the champion by {-delta:.2f} points (more than {MAX_REGRESSION_POINTS}): never blessed")
        elif delta > EPS and delta >= thresholds.min_improvement_points - EPS:
            check("champion", True, f"better than the champion by {delta:+.2f} points (min_improvement_points {thresholds.min_improvement_points})")
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
        "accuracy_drop_points": drop,
        "delta_vs_champion_points": delta,
        "thresholds": thresholds.to_dict(),
    }
