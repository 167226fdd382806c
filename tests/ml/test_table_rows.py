"""CSV tables streamed from a scratch file (``cache: stream``, or ``auto`` past the budget): the
same data set as in memory (rows, split, digest, encoding, statistics), epochs that cover every
row once in a seeded block-shuffled order, bad values refused while reading, and training,
compression and evaluation on the streamed splits."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml import streaming
from dlagent.ml.data import load_dataset
from dlagent.ml.table_rows import TableRows


def _table(path, rows: int = 900, seed: int = 0, *, gaps: bool = True):
    """Columns on very different scales, a categorical column, empty cells; the class follows
    ``area`` and ``colour``; ``id`` numbers the rows so a test can tell which row it holds."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "area", "ratio", "colour", "label"])
        for i in range(rows):
            area, colour = rng.normal(2000, 600), ["red", "green", "blue"][rng.integers(0, 3)]
            label = int(area > 2000) + int(colour == "red")
            out.writerow([i, "" if gaps and i % 19 == 4 else f"{area:.2f}", f"{rng.random() * 0.1:.4f}",
                          "" if gaps and i % 23 == 7 else colour, label])
    return f"csv:{path}"


def _by_id(x: np.ndarray, y: np.ndarray):
    """The rows and labels of a split in ``id`` order (the first raw column): a streamed split is
    in file order, an in-memory one in the split's order; both hold the same rows."""
    order = np.argsort(x[:, 0])
    return x[order], y[order]


@pytest.mark.parametrize("missing", ["impute", "refuse"])
def test_a_streamed_table_is_the_same_data_set_as_in_memory(tmp_path, missing):
    uri = _table(tmp_path / "t.csv", gaps=missing == "impute")
    memory = load_dataset(uri, seed=4, missing=missing, cache="memory")
    streamed = load_dataset(uri, seed=4, missing=missing, cache="stream")
    assert isinstance(streamed.x_train, TableRows) and isinstance(memory.x_train, np.ndarray)
    assert streamed.summary() == {**memory.summary(), "streamed": True}
    assert streamed.digest == memory.digest and streamed.encoding == memory.encoding
    assert streamed.impute == memory.impute == (missing == "impute")
    for part in ("train", "val", "test"):
        mine, theirs = getattr(streamed, f"x_{part}"), getattr(memory, f"x_{part}")
        ids = np.asarray(mine[:][:, 0])
        assert np.all(np.diff(ids) > 0)  # file order: reads go forward
        for a, b in zip(_by_id(mine[:], getattr(streamed, f"y_{part}")), _by_id(theirs, getattr(memory, f"y_{part}")), strict=True):
            np.testing.assert_array_equal(a, b)
    # rows by position, slices and masks read only what is asked, as an array would give them
    rows = streamed.x_test[:]
    np.testing.assert_array_equal(streamed.x_test[[5, 1, 5]], rows[[5, 1, 5]])
    np.testing.assert_array_equal(streamed.x_test[3], rows[3])
    np.testing.assert_array_equal(streamed.x_test[-4:], rows[-4:])
    np.testing.assert_array_equal(streamed.x_test.subset(rows[:, 0] > 450)[:], rows[rows[:, 0] > 450])
    # the raw rows a server would be sent encode (the serving function) to the loader's rows
    np.testing.assert_array_equal(streamed.encoding.encode(list(streamed.raw_x_test)), rows)


def test_every_process_gets_the_same_streamed_rows(tmp_path):
    """Each task loads the table in its own process (another hash seed): the rows of each split agree."""
    import json
    import subprocess
    import sys

    from tests.conftest import PROJECT_DIR

    uri = _table(tmp_path / "t.csv")
    code = ("import json, sys; from dlagent.ml.data import load_dataset; s = load_dataset(sys.argv[1], seed=2, missing='impute', "
            "cache='stream'); print(json.dumps([p.positions.tolist() for p in (s.x_train, s.x_val, s.x_test)]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, check=True, cwd=PROJECT_DIR,
                                      env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout) for seed in ("1", "2")]
    here = load_dataset(uri, seed=2, missing="impute", cache="stream")
    assert runs[0] == runs[1] == [p.positions.tolist() for p in (here.x_train, here.x_val, here.x_test)]


def test_auto_streams_a_table_past_the_cache_budget_into_a_file_without_a_name(tmp_path, monkeypatch):
    uri = _table(tmp_path / "t.csv", rows=300)
    assert isinstance(load_dataset(uri, seed=0, missing="impute").x_train, np.ndarray)
    held = 300 * 4 * (8 + 4)  # float32: 8 encoded columns (3 numbers, colour's 3 values, <other>, was-missing) and the 4 loaded ones
    monkeypatch.setattr(streaming, "CACHE_BUDGET_BYTES", held)
    in_memory = load_dataset(uri, seed=0, missing="impute")
    assert isinstance(in_memory.x_train, np.ndarray) and in_memory.encoding.width == 8
    monkeypatch.setattr(streaming, "CACHE_BUDGET_BYTES", held - 1)
    splits = load_dataset(uri, seed=0, missing="impute")
    assert isinstance(splits.x_train, TableRows) and splits.x_train.store is splits.x_test.store
    link = os.readlink(f"/proc/self/fd/{splits.x_train.store._file.fileno()}")
    assert link.endswith("(deleted)") or "#" in link  # unlinked (or O_TMPFILE): gone with the process, whatever ends it
    assert os.fstat(splits.x_train.store._file.fileno()).st_size == 300 * 4 * 4


def test_each_epoch_reads_every_training_row_once_in_a_new_seeded_order(tmp_path, monkeypatch):
    from dlagent.ml import table_rows

    monkeypatch.setattr(table_rows, "BLOCK_ROWS", 16)
    monkeypatch.setattr(table_rows, "WINDOW_BLOCKS", 4)
    uri = _table(tmp_path / "t.csv", gaps=False)
    splits = load_dataset(uri, seed=1, cache="stream")
    x, y = splits.x_train, splits.y_train
    pipeline = x.dataset(y, batch_size=10, shuffle_seed=7)
    epochs = []
    for _ in range(2):
        batches = [(rows.numpy(), labels.numpy()) for rows, labels in pipeline]
        assert [len(b[1]) for b in batches[:-1]] == [10] * (len(batches) - 1)
        epochs.append((np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])))
    assert pipeline.cardinality().numpy() == -(-len(y) // 10)
    by_id = dict(zip(x[:][:, 0].tolist(), y.tolist(), strict=True))
    for rows, labels in epochs:
        assert sorted(rows[:, 0].tolist()) == sorted(by_id)  # every row once
        assert [by_id[i] for i in rows[:, 0].tolist()] == labels.tolist()  # each label stays with its row
    first, second = epochs[0][0][:, 0], epochs[1][0][:, 0]
    assert not np.array_equal(first, second) and not np.array_equal(first, np.sort(first))
    again = np.concatenate([rows.numpy() for rows, _ in x.dataset(y, batch_size=10, shuffle_seed=7)])[:, 0]
    np.testing.assert_array_equal(again, first)  # the same seed: the same first epoch
    in_order = np.concatenate([rows.numpy() for rows in x.dataset(batch_size=64)])
    np.testing.assert_array_equal(in_order, x[:])


@pytest.mark.parametrize(("cell", "missing"), [("inf", "impute"), ("nan", "refuse"), ("-inf", "refuse")])
def test_a_non_finite_cell_is_refused_while_streaming_as_in_memory(tmp_path, cell, missing):
    path = tmp_path / "t.csv"
    _table(path, rows=120, gaps=False)
    lines = path.read_text().splitlines()
    lines[31] = lines[31].split(",", 2)[0] + f",{cell}," + lines[31].split(",", 2)[2]
    path.write_text("\n".join(lines) + "\n")
    refusals = []
    for cache in ("memory", "stream"):
        with pytest.raises(ConfigError) as refused:
            load_dataset(f"csv:{path}", seed=0, missing=missing, cache=cache)
        refusals.append(str(refused.value))
    # nan is a missing-value mark, refused by the first pass at its line; inf is a number, refused as the rows are read
    expected = "line 32, column 2: a missing-value mark" if cell == "nan" else "1 NaN/inf feature values (first in sample 30)"
    assert refusals[0] == refusals[1] and expected in refusals[0]


def test_train_compress_and_evaluate_read_a_streamed_table(tmp_path):
    """The statistics inside the model equal the in-memory ones; training, compression (its
    calibration rows) and evaluation with permutation importance run on the streamed splits."""
    from dlagent.ml.compression import CompressionConfig, compress
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.evaluation import evaluate_tflite
    from dlagent.ml.models import build_model, scaling_statistics
    from dlagent.ml.training import evaluate, fit

    uri = _table(tmp_path / "t.csv", rows=1200)
    splits = load_dataset(uri, seed=0, missing="impute", cache="stream")
    memory = load_dataset(uri, seed=0, missing="impute", cache="memory")
    config = TrainConfig(model="mlp", epochs=12, seed=0)
    built = [build_model(config, s.input_shape, s.num_classes, adapt_data=s.x_train, impute=True) for s in (splits, memory)]
    streamed_stats, memory_stats = (scaling_statistics(model) for model in built)
    assert streamed_stats["impute"] == memory_stats["impute"] and streamed_stats["impute"]["indicator_columns"]
    np.testing.assert_allclose(streamed_stats["mean"], memory_stats["mean"], rtol=1e-6)
    np.testing.assert_allclose(streamed_stats["std"], memory_stats["std"], rtol=1e-6)
    result = fit(splits, config)
    assert evaluate(result.model, splits)["test_accuracy"] >= 0.8  # the label follows area and colour
    candidate = compress(result.model, splits, CompressionConfig(sparsity=0.5, quantization="dynamic"), latency_runs=5)
    report = evaluate_tflite(candidate.tflite_bytes, splits, out_dir=tmp_path / "eval", latency_runs=5)
    assert report.metrics["test_accuracy"] >= 0.8
    importance = {row["feature"]: row["importance_mean"] for row in _json(tmp_path / "eval" / "permutation_importance.json")}
    assert max(importance, key=importance.get) in ("area", "colour")
    with pytest.raises(ConfigError, match="compression.distill.*streamed"):
        compress(result.model, splits, CompressionConfig(distill=True, quantization="none"))


def test_a_model_of_another_vocabulary_reads_a_streamed_split_encoded_its_own_way(tmp_path):
    from dlagent.ml.tabular import TableEncoding

    uri = _table(tmp_path / "t.csv")
    splits = load_dataset(uri, seed=2, missing="impute", cache="stream")
    other = TableEncoding.from_json({**splits.encoding.to_json(), "vocabularies": {"colour": ["blue", "red"]}})
    encoded = splits.inputs_for(other.to_json(), "test")
    assert isinstance(encoded, TableRows) and encoded.shape == (len(splits.y_test), other.width)
    np.testing.assert_array_equal(encoded[:], other.encode(list(splits.raw_x_test)))  # "green" goes to <other>
    # a model that refuses gaps fails on the first one read, naming its row in the file, not in the chunk
    refusing = splits.inputs_for({**other.to_json(), "impute": False}, "test")
    first = next(int(p) for p in splits.x_test.positions if p % 19 == 4 or p % 23 == 7)  # _table's empty cells
    column = "area" if first % 19 == 4 else "colour"
    with pytest.raises(ConfigError, match=rf"data row {first + 1} of the file .*column '{column}': an empty value"):
        refusing[:]


def _json(path):
    import json

    return json.loads(path.read_text())


def test_indexing_is_refused_where_numpy_would_refuse_and_never_loads_the_whole_table_implicitly(tmp_path):
    splits = load_dataset(_table(tmp_path / "t.csv", rows=300), seed=0, missing="impute", cache="stream")
    x = splits.x_test
    np.testing.assert_array_equal(x[np.array(3)], x[3])
    with pytest.raises(IndexError, match="boolean mask"):
        x[np.ones(len(x) - 1, bool)]
    with pytest.raises(TypeError, match="not a tuple"):
        x[:, 0]
    with pytest.raises(TypeError, match="not turned into one array implicitly"):
        np.asarray(x, np.float32)


def test_the_scratch_file_goes_when_its_splits_go_even_after_a_tf_data_pipeline(tmp_path):
    import gc
    import weakref

    splits = load_dataset(_table(tmp_path / "t.csv", rows=300), seed=0, missing="impute", cache="stream")
    store = weakref.ref(splits.x_train.store)
    pipeline = splits.x_train.dataset(splits.y_train, batch_size=16, shuffle_seed=0)
    assert sum(len(labels) for _, labels in pipeline) == len(splits.y_train)
    del splits
    gc.collect()
    assert store() is None  # the pipeline does not keep the file (and its descriptor) alive
    with pytest.raises(Exception, match="was released"):
        next(iter(pipeline))


def test_a_numbers_only_streamed_split_is_encoded_for_another_model_as_it_is_read(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("a,b,label\n" + "".join(f"{i % 7}.5,{'' if i % 9 == 0 else i % 5},{i % 2}\n" for i in range(300)))
    splits = load_dataset(f"csv:{path}", seed=0, missing="impute", cache="stream")
    assert not splits.encoding.vocabularies and splits.raw_x_test is None
    other = {**splits.encoding.to_json(), "impute": False}  # a model that refuses gaps: a row with one fails when read
    encoded = splits.inputs_for(other, "test")
    assert isinstance(encoded, TableRows)
    gaps = np.isnan(splits.x_test[:]).any(axis=1)
    np.testing.assert_array_equal(encoded[np.flatnonzero(~gaps)], splits.x_test[np.flatnonzero(~gaps)])
    first = next(int(p) for p in splits.x_test.positions if p % 9 == 0)  # the first gap of the split, in its file
    with pytest.raises(ConfigError, match=rf"data row {first + 1} of the file .*column 'b'.*missing 'refuse'"):
        encoded[:]


def test_a_federated_site_whose_own_file_is_streamed_is_refused(tmp_path):
    from dlagent.ml.config import TrainConfig
    from dlagent.operators.federated.common import site_rows

    uri = _table(tmp_path / "t.csv", rows=300)
    with pytest.raises(ConfigError, match=r"site_datasets\[0\].*streamed"):
        site_rows("digits", [uri], {"missing": "impute", "cache": "stream"}, TrainConfig(model="mlp"), None, 0, None)
