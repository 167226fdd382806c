"""Seeded train/test index splits, index for index the ones scikit-learn's ``train_test_split``
gives (plain and stratified), without importing scikit-learn.

Why not call scikit-learn: ``import sklearn.model_selection`` costs about 1.5 s of a task
process's start, and the validate, train, tune and every compress task each load and split the
data once (``bench/overhead.py --services`` measured the floor). Why the same indices: every
seeded figure, test and champion comparison the project has recorded was made on those splits;
a different shuffle would move them all. ``tests/ml/test_splits.py`` checks the equality against
scikit-learn (a dev dependency) on many shapes, seeds and class balances.

The algorithm is scikit-learn 1.9's ``ShuffleSplit`` / ``StratifiedShuffleSplit`` first split
with ``numpy.random.RandomState(seed)``.
"""

from __future__ import annotations

import numpy as np


def split_indices(n_samples: int, *, n_train: int, n_test: int, seed: int, stratify=None) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` index arrays of one seeded split of ``n_samples`` rows, stratified by
    the labels ``stratify`` when given (each class keeps its share, ties broken at random)."""
    if n_train < 1 or n_test < 1 or n_train + n_test > n_samples:
        raise ValueError(f"cannot split {n_samples} samples into {n_train} train and {n_test} test samples")
    rng = np.random.RandomState(seed)
    if stratify is None:
        permutation = rng.permutation(n_samples)
        return permutation[n_test:n_test + n_train], permutation[:n_test]
    _, y_indices, class_counts = np.unique(np.asarray(stratify), return_inverse=True, return_counts=True)
    n_classes = len(class_counts)
    if class_counts.min() < 2 or n_train < n_classes or n_test < n_classes:
        raise ValueError(f"a stratified split of {n_classes} classes needs 2 samples per class and "
                         f"{n_classes} per side (got {int(class_counts.min())}, {n_train} train, {n_test} test)")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list = []  # one index array per class, joined once: a list of numpy scalars costs ~40 B a row
    test: list = []
    for i in range(n_classes):
        shuffled = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.append(shuffled[:n_i[i]])
        test.append(shuffled[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class draws closest to the classes' shares of ``n_draws``: floors first, then one
    more for the largest remainders, ties broken by ``rng`` (scikit-learn's ``_approximate_mode``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def train_test_split(x, y, *, seed: int, test_size: int | None = None, train_size: int | None = None, stratify=None):
    """``(x_train, x_test, y_train, y_test)`` with counts as integers: ``test_size`` rows held out
    (the rest trains) or ``train_size`` rows kept (the rest is the test side)."""
    n_samples = len(y)
    if (test_size is None) == (train_size is None):
        raise ValueError("give exactly one of test_size and train_size")
    n_test = test_size if test_size is not None else n_samples - train_size
    n_train = n_samples - n_test
    train, test = split_indices(n_samples, n_train=n_train, n_test=n_test, seed=seed, stratify=stratify)
    return x[train], x[test], y[train], y[test]


def rows_not_in(x: np.ndarray, y: np.ndarray, x_other: np.ndarray, y_other: np.ndarray) -> np.ndarray:
    """A boolean mask over the rows of ``(x, y)``: True where no row of ``(x_other, y_other)`` has
    the same features and label, byte for byte (a duplicate counts as seen). Used to find the test
    rows a model trained on another split of the same data never saw."""
    def keys(features, labels):
        features, labels = np.ascontiguousarray(features), np.ascontiguousarray(labels)
        rows, targets = features.reshape(len(features), -1), labels.reshape(len(labels), -1)
        return [row.tobytes() + b"|" + target.tobytes() for row, target in zip(rows, targets, strict=True)]

    seen = set(keys(x_other, y_other))
    return np.array([key not in seen for key in keys(x, y)], dtype=bool)
