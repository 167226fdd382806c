"""Lineage of data: which data set a run read, as an MLflow dataset input.

Every training run, tuning trial and evaluation logs the data set it used (its URI, a content
digest, the feature and target schema, the split sizes) with the context it was used in, so a
registered model's page in the MLflow UI shows which data trained it, and a retrain on changed
data shows a new digest. The digest is computed over the loaded samples before they are split
(:func:`content_digest`), so it changes with the file's content and not with the seed.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

log = logging.getLogger(__name__)

CONTEXT_TAG = "mlflow.data.context"  # MLflow's own input tag: how the run used the data set
TRAINING, TUNING, EVALUATION = "training", "tuning", "evaluation"


DIGEST_CHUNK_BYTES = 8 * 2**20  # bytes of samples hashed at once (a memory-mapped or streamed x is read that much at a time)


def content_digest(x: np.ndarray, y: np.ndarray, *, extra: str = "") -> str:
    """A short sha256 of the samples, in file order: shapes, dtypes and values of features and
    labels, and ``extra`` (a table's category values, which its codes in ``x`` index)."""
    digest = hashlib.sha256(extra.encode())
    for array in (x, y):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        rows = max(1, DIGEST_CHUNK_BYTES // max(1, array[:1].nbytes))  # a chunk at a time: x may be memory-mapped
        for start in range(0, len(array), rows):
            digest.update(np.ascontiguousarray(array[start:start + rows]).tobytes())
    return digest.hexdigest()[:20]


def dataset_entity(splits):
    """The MLflow ``Dataset`` entity of a :class:`~dlagent.ml.data.DatasetSplits`."""
    from mlflow.entities import Dataset
    from mlflow.types.schema import Schema, TensorSpec

    features = Schema([TensorSpec(np.dtype(splits.x_train.dtype), (-1, *splits.input_shape), "features")]).to_json()
    targets = Schema([TensorSpec(np.dtype(splits.y_train.dtype), (-1, *splits.y_train.shape[1:]), "targets")]).to_json()
    profile = {**splits.summary(), "class_names": list(splits.class_names)[:100]}
    return Dataset(name=splits.name, digest=splits.digest or "unknown", source_type="dlagent",
                   source=json.dumps({"uri": splits.name}), schema=json.dumps({"mlflow_tensorspec": {"features": features, "targets": targets}}),
                   profile=json.dumps(profile))


def log_dataset_input(client, run_id: str, splits, context: str) -> None:
    """Record ``splits`` as an input of run ``run_id`` (MLflow's dataset inputs), tagged with
    ``context``; a failure is logged, never raised (lineage must not stop training)."""
    from mlflow.entities import DatasetInput, InputTag

    try:
        client.log_inputs(run_id, datasets=[DatasetInput(dataset_entity(splits), tags=[InputTag(CONTEXT_TAG, context)])])
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record data set %s as an input of MLflow run %s: %s", splits.name, run_id, exc)
