"""The one rule that picks what ships: the smallest compression candidate within the limits.

"Within the limits" is one predicate (:func:`limit_checks`), shared by the gate (which reports
each check), the evaluate step (which picks the candidate to ship) and the rules policy (which
plans the next run's candidate): the accuracy drop against the uncompressed model is at most
``max_accuracy_drop_points``, and, when set, ``min_accuracy``, ``max_size_bytes`` and
``max_latency_ms_p95`` hold. Among the candidates within the limits the smallest (gzip size
when measured: pruning shrinks only a compressed file) wins, then the more accurate, then the
name. :data:`DEFAULT_CANDIDATES` and :func:`validate_candidates` are the one candidate list and
the one candidate-list check.

``limits`` is anything with the four attributes above, e.g. a
:class:`~dlagent.ml.gate.GateThresholds`; ``None`` switches a limit off.
"""

from __future__ import annotations

import math

from dlagent.errors import ConfigError
from dlagent.validation import finite

#: The compression candidates tried when neither a person nor the agent lists any.
DEFAULT_CANDIDATES = (
    {"quantization": "dynamic"},
    {"quantization": "int8"},
    {"quantization": "int8", "sparsity": 0.5},
    {"quantization": "int8", "sparsity": 0.8},
)
MAX_CANDIDATES = 32
EPS = 1e-9


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


def accuracy_of(metrics: dict) -> float | None:
    value = metrics.get("test_accuracy", metrics.get("accuracy"))
    return float(value) if finite(value) else None


def size_of(metrics: dict) -> float:
    """gzip size when measured (pruning only shrinks a compressed file), else file size, else inf."""
    for key in ("gzip_size_bytes", "size_bytes"):
        if finite(metrics.get(key)):
            return float(metrics[key])
    return math.inf


def points(a: float, b: float) -> float:
    """``a - b`` in accuracy points (1 point = 0.01), rounded to 6 decimals."""
    return round((a - b) * 100.0, 6)


def limit_checks(accuracy: float, size: float | None, latency: float | None, reference_accuracy: float | None, limits) -> list[dict]:
    """Every limit check of one candidate: ``[{"check", "passed", "detail"}]`` (see the module docstring)."""
    checks: list[dict] = []

    def check(name: str, passed: bool, detail: str):
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

    if limits.min_accuracy is not None:
        ok = accuracy >= limits.min_accuracy - EPS
        check("min_accuracy", ok, f"test_accuracy {accuracy:.4f} {'>=' if ok else '<'} min_accuracy {limits.min_accuracy:.4f}")
    if reference_accuracy is not None:
        drop = points(reference_accuracy, accuracy)
        if limits.max_accuracy_drop_points is not None:
            ok = drop <= limits.max_accuracy_drop_points + EPS
            check("max_accuracy_drop_points", ok,
                  f"accuracy drop versus the uncompressed model {drop:+.2f} points {'<=' if ok else '>'} {limits.max_accuracy_drop_points} allowed")
    elif limits.max_accuracy_drop_points is not None:
        check("max_accuracy_drop_points", False, "no reference (uncompressed) metrics to measure the accuracy drop against")
    for name, metric, value, limit, unit in (("max_size_bytes", "size_bytes", size, limits.max_size_bytes, "bytes"),
                                              ("max_latency_ms_p95", "latency_ms_p95", latency, limits.max_latency_ms_p95, "ms")):
        if limit is None:
            continue
        if value is None:
            check(name, False, f"{metric} was not measured, so the limit {limit} {unit} cannot be verified")
        else:
            ok = value <= limit + EPS
            check(name, ok, f"{metric} {value:g} {unit} {'<=' if ok else '>'} limit {limit:g} {unit}")
    return checks


def within_limits(metrics: dict, reference_accuracy: float | None, limits) -> bool:
    """Whether a candidate's measured ``metrics`` meet every limit."""
    accuracy = accuracy_of(metrics)
    if accuracy is None:
        return False
    size = metrics.get("size_bytes") if finite(metrics.get("size_bytes")) else None
    latency = metrics.get("latency_ms_p95") if finite(metrics.get("latency_ms_p95")) else None
    return all(c["passed"] for c in limit_checks(accuracy, size, latency, reference_accuracy, limits))


def name_of(candidate: dict) -> str:
    return str(candidate.get("name") or candidate.get("candidate") or "")


def select_candidate(candidates: list[dict], reference_accuracy: float | None, limits) -> tuple[dict | None, list[dict]]:
    """``(chosen, qualified)``: the smallest candidate within the limits (``None`` when none is),
    and every candidate that is. Each candidate is a dict with ``metrics`` and a ``name`` (or
    ``candidate``)."""
    measured = [c for c in candidates if accuracy_of(c["metrics"]) is not None]
    qualified = [c for c in measured if within_limits(c["metrics"], reference_accuracy, limits)]
    if not qualified:
        return None, []
    chosen = min(qualified, key=lambda c: (size_of(c["metrics"]), -accuracy_of(c["metrics"]), name_of(c)))
    return chosen, qualified


def most_accurate(candidates: list[dict]) -> dict:
    """The most accurate candidate (then the smallest): what is judged when none is within the limits."""
    return max(candidates, key=lambda c: (accuracy_of(c["metrics"]) or -math.inf, -size_of(c["metrics"])))
