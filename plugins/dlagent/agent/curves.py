"""Learning curves: what a run's per-epoch history says (best epoch, gap, plateau, divergence...).

Pure functions of Keras-style histories (``{"loss": [...], "val_loss": [...], ...}``): the agent's
observation summarises every curve it reads with :func:`analyze_curve`, and the policies decide
from that summary.
"""

from __future__ import annotations

import math

from dlagent.validation import finite as _is_finite

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
        "best_val_loss": rounded(at(monitored, best_epoch)),
        "best_val_accuracy": rounded(at(val_acc, best_epoch) if at(val_acc, best_epoch) is not None else (max(finite_val_acc) if finite_val_acc else None)),
        "final_accuracy": rounded(final_accuracy),
        "gap": rounded(gap),
        "loss_gap": rounded(loss_gap),
        "epochs_since_best": since_best,
        "still_improving": bool(still_improving),
        "plateau": bool(plateau),
        "diverged": bool(diverged),
        "divergence_epoch": divergence_epoch,
        "overfitting": bool(overfitting),
        "underfitting": bool(underfitting),
        "learning_rates": [rounded(lrs[0]), rounded(lrs[-1])] if lrs else None,
    }


def rounded(value, digits: int = 6):
    """A metric value as the observation keeps it: ``digits`` decimals (more for tiny values), ``None`` if not finite."""
    if value is None or not _is_finite(value):
        return None
    return float(f"{float(value):.{digits + 3}g}") if abs(value) < 1e-3 else round(float(value), digits)
