"""The coordinator's side: draw the sites of a round, average their weights, keep weights on disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlagent.errors import ConfigError

WEIGHTS_FILE = "weights.npz"  # a model's weights as arrays arr_0..arr_n-1 in get_weights() order


def select_sites(n_shards: int, per_round: int, round_number: int, seed: int) -> list[int]:
    """The sites that train in ``round_number`` (from 1): all of them, or a seeded draw of
    ``per_round`` without replacement, a different draw each round and the same on a rerun."""
    if per_round <= 0 or per_round >= n_shards:
        return list(range(n_shards))
    rng = np.random.default_rng([seed, round_number])
    return sorted(int(site) for site in rng.choice(n_shards, size=per_round, replace=False))


def weighted_average(updates: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """FedAvg's aggregate: each layer's arrays averaged with weights proportional to the sites'
    sample counts, computed in float64 and returned in each array's own dtype.

    Every update must have the same arrays (count and shapes); a site with no samples, or a
    non-finite weight, is refused rather than averaged, since one NaN would poison the global model.
    """
    if not updates:
        raise ConfigError("updates", "no site returned an update this round.", "check the round's local-training tasks.")
    shapes = [tuple(np.shape(a) for a in weights) for weights, _ in updates]
    for index, (shape, (weights, count)) in enumerate(zip(shapes, updates, strict=True)):
        if shape != shapes[0]:
            raise ConfigError(f"updates[{index}]", f"has arrays {shape}, the first update {shapes[0]}.",
                              "every site must train the same model architecture.")
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count <= 0:
            raise ConfigError(f"updates[{index}].samples", f"must be a positive number of samples, got {count!r}.",
                              "return the number of rows the site trained on.")
        if not all(np.all(np.isfinite(np.asarray(a, dtype=np.float64))) for a in weights):
            raise ConfigError(f"updates[{index}]", "holds NaN or infinite weights (the site's training diverged).",
                              "lower the learning rate or the local epochs.")
    total = float(sum(int(count) for _, count in updates))
    averaged = []
    for layer in range(len(updates[0][0])):
        acc = np.zeros(np.shape(updates[0][0][layer]), dtype=np.float64)
        for weights, count in updates:
            acc += np.asarray(weights[layer], dtype=np.float64) * (int(count) / total)
        averaged.append(acc.astype(np.asarray(updates[0][0][layer]).dtype))
    return averaged


def save_weights(weights: Sequence[np.ndarray], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, *[np.asarray(w) for w in weights])
    return path


def load_weights(path: str | Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def update_bytes(weights: Sequence[np.ndarray]) -> int:
    """Bytes of one model's weights: what one site sends (and receives) per round."""
    return int(sum(np.asarray(w).nbytes for w in weights))
