"""dlagent.ml.splits gives scikit-learn's train_test_split indices without importing it: every
seeded figure the project recorded was made on those splits."""

import subprocess
import sys

import numpy as np
import pytest
from dlagent.ml.splits import split_indices, train_test_split
from sklearn.model_selection import train_test_split as sklearn_split


def _cases():
    rng = np.random.default_rng(7)
    for case in range(60):
        n = int(rng.integers(20, 400))
        classes = int(rng.integers(2, 9))
        weights = rng.dirichlet(np.full(classes, 0.7 if case % 3 else 5.0))
        y = rng.choice(classes, size=n, p=weights)
        y[:classes * 2] = np.repeat(np.arange(classes), 2)  # every class at least twice
        n_test = int(rng.integers(classes, n // 2))
        yield n, y, n_test, int(rng.integers(0, 10_000))


@pytest.mark.parametrize("stratified", [True, False])
def test_indices_equal_scikit_learns_on_random_shapes_seeds_and_balances(stratified):
    for n, y, n_test, seed in _cases():
        x = np.arange(n)
        expected = sklearn_split(x, y, test_size=n_test, stratify=y if stratified else None, random_state=seed)
        got = train_test_split(x, y, test_size=n_test, stratify=y if stratified else None, seed=seed)
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_array_equal(have, want)
        n_train = n - n_test
        expected = sklearn_split(x, y, train_size=n_train, stratify=y if stratified else None, random_state=seed)
        got = train_test_split(x, y, train_size=n_train, stratify=y if stratified else None, seed=seed)
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_array_equal(have, want)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_three_way_split_is_scikit_learns_two_splits(task):
    """``split_dataset`` (indices first, each row copied once) gives what two scikit-learn splits
    give: the test part off the whole, then the validation part off the rest."""
    from dlagent.ml.data import split_dataset

    for n, y, _, seed in list(_cases())[:20]:
        x = np.arange(n * 2).reshape(n, 2)
        target = y if task == "classification" else y.astype(np.float32)[:, None] + np.arange(n)[:, None] / n
        stratify = task == "classification"
        n_test = max(int(y.max()) + 1 if stratify else 2, round(0.2 * n))
        n_val = max(int(y.max()) + 1 if stratify else 2, round(0.15 * n))
        x_rest, x_test, y_rest, y_test = sklearn_split(x, target, test_size=n_test, stratify=target if stratify else None, random_state=seed)
        x_train, x_val, y_train, y_val = sklearn_split(x_rest, y_rest, test_size=n_val, stratify=y_rest if stratify else None,
                                                       random_state=seed)
        got = split_dataset(x, target, seed=seed, val_fraction=0.15, test_fraction=0.2, task=task)
        for want, have in zip((x_train, y_train, x_val, y_val, x_test, y_test), got, strict=True):
            np.testing.assert_array_equal(have, want)


def test_ties_in_class_shares_are_broken_like_scikit_learn():
    """Equal classes leave equal remainders: the random tie-break must draw the same classes."""
    y = np.repeat(np.arange(6), 7)
    x = np.arange(len(y)).reshape(-1, 1) * 1.5
    for seed in range(40):
        expected = sklearn_split(x, y, test_size=9, stratify=y, random_state=seed)
        got = train_test_split(x, y, test_size=9, stratify=y, seed=seed)
        for want, have in zip(expected, got, strict=True):
            np.testing.assert_array_equal(have, want)


def test_impossible_splits_are_refused():
    with pytest.raises(ValueError, match="2 samples per class"):
        split_indices(5, n_train=3, n_test=2, seed=0, stratify=[0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="cannot split"):
        split_indices(5, n_train=4, n_test=2, seed=0)
    with pytest.raises(ValueError, match="exactly one"):
        train_test_split(np.arange(4), np.arange(4), seed=0)


def test_loading_and_splitting_a_data_set_does_not_import_scikit_learn(tmp_path):
    """The point of the module: a task that loads a CSV pays no scikit-learn import."""
    table = tmp_path / "table.csv"
    rows = ["a,b,label"] + [f"{i},{i % 7},{i % 3}" for i in range(90)]
    table.write_text("\n".join(rows) + "\n")
    code = ("import sys; from dlagent.ml.data import load_dataset; "
            f"s = load_dataset('csv:{table}', seed=3, max_samples=60, allowed_roots=['{tmp_path}']); "
            "print(len(s.y_train), len(s.y_val), len(s.y_test), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["42", "9", "9", "False"]


def test_rows_not_in_marks_the_rows_another_split_never_had():
    from dlagent.ml.splits import rows_not_in

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 0, 1])
    mask = rows_not_in(x, y, x[[1, 3]], y[[1, 3]])
    assert mask.tolist() == [True, False, True, False, True, True]
    assert rows_not_in(x[:1], np.array([1]), x[:1], y[:1]).tolist() == [True]  # the same features with another label: not seen
