"""The one rule that picks what ships: the smallest compression candidate within the limits.

"Within the limits" is one predicate (:func:`limit_checks`), shared by the gate (which reports
each check), the evaluate step (which picks the candidate to ship) and the rules policy (which
plans the next run's candidate): the primary metric (:mod:`dlagent.ml.metrics`; accuracy by
default) lost against the uncompressed model is at most ``max_metric_drop_points``, and, when
set, ``metric_threshold``, ``max_size_bytes`` and ``max_latency_ms_p95`` hold. Points are the
metric's own (:meth:`~dlagent.ml.metrics.Metric.gain_points`: 0.01 of accuracy, 1 % of an
RMSE). Among the candidates within the limits the smallest (gzip size when measured: pruning
shrinks only a compressed file) wins, then the better scoring, then the name.

Choosing reads the **validation** split (``val_<metric>``: :data:`SELECT_ON`), never the test
split: a choice made on the test split makes the shipped model's reported test score
optimistic. The test split is read by the final report and by the gate (:mod:`dlagent.ml.gate`
applies the same :func:`limit_checks` to the test scores), as TFX's Evaluator judges on its
evaluation split. :data:`DEFAULT_CANDIDATES` and :func:`validate_candidates` are the one candidate list and
the one candidate-list check.

``limits`` is anything with the four attributes above, e.g. a
:class:`~dlagent.ml.gate.GateThresholds`; ``None`` switches a limit off.
"""

from __future__ import annotations

import math

from dlagent.errors import ConfigError
from dlagent.ml.metrics import Metric, get_metric
from dlagent.validation import finite

ACCURACY = get_metric("accuracy")

#: The compression candidates tried when neither a person nor the agent lists any.
DEFAULT_CANDIDATES = (
    {"quantization": "dynamic"},
    {"quantization": "int8"},
    {"quantization": "int8", "sparsity": 0.5},
    {"quantization": "int8", "sparsity": 0.8},
)
MAX_CANDIDATES = 32
EPS = 1e-9
SELECT_ON = "val"  # the split every choice reads (see the module docstring)
SPLITS = ("val", "test")


def default_candidates() -> list[dict]:
    return [dict(c) for c in DEFAULT_CANDIDATES]


def validate_candidates(candidates, field: str = "compression_candidates", *, allow_empty: bool = False) -> list[dict]:
    """Check each candidate's settings (``CompressionConfig``); return them as given (keys sorted).

    Raises :class:`ConfigError` naming ``<field>[<i>].<setting>``.
    """
    from dlagent.ml.compression import CompressionConfig

    if not isinstance(candidates, list) or (not candidates and not allow_empty):
        raise ConfigError(field, f"must be a {'' if allow_empty else 'non-empty '}list of compression settings, got {candidates!r}.",
                          'give e.g. [{"quantization": "int8"}, {"sparsity": 0.8, "quantization": "int8"}].')
    if len(candidates) > MAX_CANDIDATES:
        raise ConfigError(field, f"has {len(candidates)} candidates; at most {MAX_CANDIDATES} are allowed.", "drop some.")
    out = []
    for index, candidate in enumerate(candidates):
        where = f"{field}[{index}]"
        if not isinstance(candidate, dict):
            raise ConfigError(where, f"must be a JSON object, got {candidate!r}.", 'give e.g. {"sparsity": 0.8, "quantization": "int8"}.')
        try:
            CompressionConfig.from_dict(dict(candidate))
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.field}", exc.problem, exc.fix) from exc
        except TypeError as exc:
            raise ConfigError(where, f"is not a valid compression setting: {exc}.", "check the value types.") from exc
        out.append({key: candidate[key] for key in sorted(candidate)})
    return out


def metric_of(metrics: dict, metric: Metric = ACCURACY, split: str = SELECT_ON) -> float | None:
    """The primary metric's value on ``split`` in ``metrics`` (``val_<metric>`` or ``test_<metric>``), or ``None``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    value = metrics.get(metric.val_key if split == "val" else metric.test_key)
    return float(value) if finite(value) else None


def size_of(metrics: dict) -> float:
    """gzip size when measured (pruning only shrinks a compressed file), else file size, else inf."""
    for key in ("gzip_size_bytes", "size_bytes"):
        if finite(metrics.get(key)):
            return float(metrics[key])
    return math.inf


def limit_checks(value: float, size: float | None, latency: float | None, reference: float | None, limits,
                 metric: Metric = ACCURACY) -> list[dict]:
    """Every limit check of one candidate whose primary ``metric`` is ``value``: ``[{"check",
    "passed", "detail"}]`` (see the module docstring); ``reference`` is the uncompressed model's."""
    checks: list[dict] = []

    def check(name: str, passed: bool, detail: str):
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    if limits.metric_threshold is not None:
        ok = metric.gain_points(value, limits.metric_threshold) >= -EPS
        relation = (">=" if ok else "<") if metric.higher_is_better else ("<=" if ok else ">")
        check("metric_threshold", ok, f"{metric.test_key} {value:.4f} {relation} metric_threshold {limits.metric_threshold:.4f}")
    if reference is not None:
        drop = -metric.gain_points(value, reference)
        if limits.max_metric_drop_points is not None:
            ok = drop <= limits.max_metric_drop_points + EPS
            check("max_metric_drop_points", ok,
                  f"{metric.name} lost versus the uncompressed model {drop:+.2f} points {'<=' if ok else '>'} "
                  f"{limits.max_metric_drop_points} allowed (1 point = {metric.point_unit()})")
    elif limits.max_metric_drop_points is not None:
        check("max_metric_drop_points", False, f"no reference (uncompressed) metrics to measure the {metric.name} lost against")
    for name, key, measured, limit, unit in (("max_size_bytes", "size_bytes", size, limits.max_size_bytes, "bytes"),
                                              ("max_latency_ms_p95", "latency_ms_p95", latency, limits.max_latency_ms_p95, "ms")):
        if limit is None:
            continue
        if measured is None:
            check(name, False, f"{key} was not measured, so the limit {limit} {unit} cannot be verified")
        else:
            ok = measured <= limit + EPS
            check(name, ok, f"{key} {measured:g} {unit} {'<=' if ok else '>'} limit {limit:g} {unit}")
    return checks


def within_limits(metrics: dict, reference: float | None, limits, metric: Metric = ACCURACY, split: str = SELECT_ON) -> bool:
    """Whether a candidate's measured ``metrics`` on ``split`` meet every limit (``reference``: the
    uncompressed model's score on the same split)."""
    value = metric_of(metrics, metric, split)
    if value is None:
        return False
    size = metrics.get("size_bytes") if finite(metrics.get("size_bytes")) else None
    latency = metrics.get("latency_ms_p95") if finite(metrics.get("latency_ms_p95")) else None
    return all(c["passed"] for c in limit_checks(value, size, latency, reference, limits, metric))


def name_of(candidate: dict) -> str:
    return str(candidate.get("name") or candidate.get("candidate") or "")


def select_candidate(candidates: list[dict], reference: float | None, limits, metric: Metric = ACCURACY) -> tuple[dict | None, list[dict]]:
    """``(chosen, qualified)``: the smallest candidate within the limits (``None`` when none is),
    and every candidate that is, judged on the validation split (``reference``: the uncompressed
    model's ``val_<metric>``). Each candidate is a dict with ``metrics`` and a ``name`` (or
    ``candidate``)."""
    measured = [c for c in candidates if metric_of(c["metrics"], metric) is not None]
    qualified = [c for c in measured if within_limits(c["metrics"], reference, limits, metric)]
    if not qualified:
        return None, []
    chosen = min(qualified, key=lambda c: (size_of(c["metrics"]), -metric.sort_key(metric_of(c["metrics"], metric)), name_of(c)))
    return chosen, qualified


def best_scoring(candidates: list[dict], metric: Metric = ACCURACY) -> dict:
    """The candidate with the best primary validation metric (then the smallest): what is judged when none is within the limits."""
    def key(c):
        value = metric_of(c["metrics"], metric)
        return (-math.inf if value is None else metric.sort_key(value), -size_of(c["metrics"]))

    return max(candidates, key=key)
