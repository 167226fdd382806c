"""One data set split into shards, each standing for a site, for federated experiments.

In production each site reads its own data and nothing here runs; splitting one data set is
how a person measures what federated training costs against training on the pooled data, and
how skewed sites (each seeing mostly a few classes) hurt and FedProx helps.
"""

from __future__ import annotations

import numpy as np

from dlagent.errors import ConfigError

MIN_SHARD_SAMPLES = 10  # a shard smaller than this cannot fill a batch or say anything in a round
_DRAWS = 100  # label skew: Dirichlet draws tried before giving up on shards of MIN_SHARD_SAMPLES


def partition(y: np.ndarray, n_shards: int, mode: str = "iid", *, seed: int = 0, alpha: float = 0.5,
              regression: bool = False) -> list[np.ndarray]:
    """Disjoint, seeded index arrays (sorted), one per shard, that together cover every row of ``y``.

    ``iid``: each class's rows are shuffled and dealt out evenly, so every shard has the data
    set's class mix (for regression, the rows themselves are dealt). ``label_skew``: each
    class's rows are divided among the shards in proportions drawn from Dirichlet(``alpha``),
    the usual non-IID benchmark split (Hsu et al. 2019); small ``alpha`` gives each shard a few
    classes.
    """
    y = np.asarray(y)
    if n_shards < 2:
        raise ConfigError("n_shards", f"federated training needs at least 2 shards, got {n_shards}.", "use 2 or more.")
    if len(y) < n_shards * MIN_SHARD_SAMPLES:
        raise ConfigError("n_shards", f"{len(y)} training rows cannot make {n_shards} shards of at least {MIN_SHARD_SAMPLES} rows.",
                          f"use at most {len(y) // MIN_SHARD_SAMPLES} shards, or more data.")
    rng = np.random.default_rng(seed)
    if regression:
        if mode != "iid":
            raise ConfigError("partition", f"{mode!r} skews the sites' classes; this task is regression.", "use partition 'iid'.")
        return [np.sort(part) for part in np.array_split(rng.permutation(len(y)), n_shards)]
    by_class = [rng.permutation(np.flatnonzero(y == label)) for label in np.unique(y)]
    if mode == "iid":
        shards = [[] for _ in range(n_shards)]
        offset = 0
        for rows in by_class:  # deal each class out starting where the last one stopped, so sizes stay even
            for position, row in enumerate(rows):
                shards[(offset + position) % n_shards].append(row)
            offset += len(rows)
        return [np.sort(np.asarray(rows, dtype=np.int64)) for rows in shards]
    if mode != "label_skew":
        raise ConfigError("partition", f"unknown partition {mode!r}.", "use 'iid' or 'label_skew'.")
    for _ in range(_DRAWS):
        shards = [[] for _ in range(n_shards)]
        for rows in by_class:
            shares = rng.dirichlet(np.full(n_shards, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for shard, part in zip(shards, np.split(rows, cuts), strict=True):
                shard.extend(part.tolist())
        if min(len(shard) for shard in shards) >= MIN_SHARD_SAMPLES:
            return [np.sort(np.asarray(rows, dtype=np.int64)) for rows in shards]
    raise ConfigError("skew_alpha", f"{_DRAWS} label-skewed draws with alpha {alpha} all left a shard under {MIN_SHARD_SAMPLES} rows.",
                      "raise skew_alpha, or use fewer shards.")


def label_counts(y: np.ndarray, shards: list[np.ndarray], num_classes: int) -> list[list[int]]:
    """Rows of each class in each shard: the counts a site may share (never the rows)."""
    return [np.bincount(np.asarray(y)[rows], minlength=num_classes).astype(int).tolist() for rows in shards]
