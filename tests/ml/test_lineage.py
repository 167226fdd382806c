"""Lineage: a run records the data set it read (MLflow dataset input) with a content digest."""

from __future__ import annotations

import json

import numpy as np
from dlagent.ml import tracking
from dlagent.ml.config import TrainConfig
from dlagent.ml.data import load_dataset
from dlagent.ml.training import train
from mlflow import MlflowClient


def _table(path, rows):
    path.write_text("a,b,label\n" + "\n".join(f"{a},{b},{label}" for a, b, label in rows) + "\n")


def test_a_training_run_records_its_data_set_and_a_changed_file_gets_a_new_digest(tmp_path, mlflow_uri):
    rows = [(i % 7, (i * 3) % 11, i % 3) for i in range(90)]
    _table(tmp_path / "t.csv", rows)
    uri, roots = f"csv:{tmp_path / 't.csv'}", [str(tmp_path)]
    splits = load_dataset(uri, seed=0, allowed_roots=roots)
    assert load_dataset(uri, seed=5, allowed_roots=roots).digest == splits.digest  # the content, not the split
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(tracking.ensure_experiment(client, "lineage", str(tmp_path / "artifacts"))).info.run_id
    train(splits, TrainConfig(model="mlp", epochs=1), client=client, run_id=run_id, log_model=False)

    (recorded,) = client.get_run(run_id).inputs.dataset_inputs
    assert recorded.dataset.name == uri and recorded.dataset.digest == splits.digest
    assert {t.key: t.value for t in recorded.tags} == {"mlflow.data.context": "training"}
    profile = json.loads(recorded.dataset.profile)
    assert (profile["n_train"], profile["n_val"], profile["n_test"], profile["num_classes"]) == (62, 14, 14, 3)
    assert "features" in json.loads(recorded.dataset.schema)["mlflow_tensorspec"]

    rows[40] = (6, 6, 0)  # one cell of one row changes
    _table(tmp_path / "t.csv", rows)
    assert load_dataset(uri, seed=0, allowed_roots=roots).digest != splits.digest


def test_the_digest_hashed_a_chunk_at_a_time_is_the_digest_of_the_whole_bytes(monkeypatch):
    """Hashing in chunks (a memory-mapped x is never copied whole) gives the digest runs logged
    before: sha256 over the shapes, dtypes and all the bytes, in order."""
    import hashlib

    from dlagent.ml import lineage

    x, y = np.random.default_rng(1).normal(size=(300, 7)).astype(np.float32)[:, ::2], np.arange(300)
    whole = hashlib.sha256(b"extra")
    for array in (np.ascontiguousarray(x), y):
        whole.update(f"{array.dtype.str}{array.shape}".encode())
        whole.update(array.tobytes())
    for chunk in (1, 100, 10**9):
        monkeypatch.setattr(lineage, "DIGEST_CHUNK_BYTES", chunk)
        assert lineage.content_digest(x, y, extra="extra") == whole.hexdigest()[:20]
