"""In-memory arrays reach ``model.fit`` through ``array_batches`` (tf.data without autotuning):
every row once an epoch, in a seeded order, and only for arrays small enough that the pipeline's
step overhead matters (larger ones go through Keras' own adapter)."""

from __future__ import annotations

import numpy as np
from dlagent.ml import streaming


def test_each_epoch_is_every_row_once_in_a_seeded_order():
    x, y = np.arange(100, dtype=np.float32).reshape(50, 2), np.arange(50)
    dataset = streaming.array_batches(x, y, batch_size=16, shuffle_seed=3)
    assert dataset.options().autotune.enabled is False
    first = [np.concatenate([b.numpy() for _, b in dataset]) for _ in range(2)]
    assert all(sorted(epoch.tolist()) == list(range(50)) for epoch in first)  # every row once
    assert first[0].tolist() != first[1].tolist()  # reshuffled each epoch
    again = np.concatenate([b.numpy() for _, b in streaming.array_batches(x, y, batch_size=16, shuffle_seed=3)])
    assert again.tolist() == first[0].tolist()  # the same seed, the same order
    for features, labels in dataset:
        np.testing.assert_array_equal(features.numpy(), x[labels.numpy()])  # rows stay with their labels
    unshuffled = np.concatenate([b.numpy() for _, b in streaming.array_batches(x, y, batch_size=16)])
    assert unshuffled.tolist() == list(range(50))


def test_large_arrays_go_through_keras_own_adapter(monkeypatch):
    x, y = np.zeros((40, 3), dtype=np.float32), np.zeros(40, dtype=np.int64)
    assert "y" not in streaming.fit_data(x, y, batch_size=8, seed=0)
    monkeypatch.setattr(streaming, "ARRAY_BATCHES_MAX_BYTES", x.nbytes + y.nbytes - 1)
    data = streaming.fit_data(x, y, batch_size=8, seed=0)
    assert data["x"] is x and data["y"] is y and data["batch_size"] == 8
    features, labels = streaming.eval_data(x, y)
    assert features is x and labels is y
