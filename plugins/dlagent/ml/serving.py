"""Serving bundles: the deployed champion's TFLite file, labels and metadata in a folder a server reads.

:func:`write_serving_bundle` writes model files, labels and metadata into a fresh folder and
swaps it in by renames, so a reader never sees a half-written bundle;
:func:`deploy_champion_bundle` does that for the registry's current champion, and
:func:`read_champion_tflite` reads the champion's TFLite file (what the evaluate step re-measures).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from dlagent.errors import ConfigError
from dlagent.ml.mlflow_names import CHAMPION, ENCODING_FILE, LABELS_FILE, METADATA_FILE, TFLITE_DIR, TFLITE_FILE
from dlagent.ml.model_store import download, download_encoding, download_tflite
from dlagent.ml.registry import RegistryError, get_champion, now

CURRENT_LINK = "current"


def write_serving_bundle(deploy_dir, model_files: dict, labels: list, metadata: dict, *, bundle_name: str | None = None,
                         keep: int = 3) -> Path:
    """Write a serving bundle and make it current, never exposing a half-written one.

    ``model_files`` maps file names (``model.tflite``) to bytes or to a path to copy. The
    files, ``labels.json`` and ``metadata.json`` (with each file's sha256 added) are written
    to a temporary folder *in* ``deploy_dir``, fsync'ed, renamed to ``bundle-<bundle_name>``,
    and the symbolic link ``deploy_dir/current`` is swapped to it with ``os.replace`` (atomic
    on POSIX). A bundle name that already exists is complete (it appears only by rename), so a
    retry just re-points ``current``. Older bundles beyond ``keep`` are removed. Returns the
    path of ``deploy_dir/current``.
    """
    if not isinstance(model_files, dict) or not model_files:
        raise ConfigError("model_files", "must map at least one file name to bytes or a path.", "pass e.g. {'model.tflite': tflite_bytes}.")
    for file_name in model_files:
        if not isinstance(file_name, str) or not file_name or "/" in file_name or file_name.startswith(".") or file_name in (LABELS_FILE, METADATA_FILE):
            raise ConfigError("model_files", f"bad file name {file_name!r}.", "use plain names such as 'model.tflite'.")
    if not isinstance(labels, (list, tuple)):
        raise ConfigError("labels", f"must be a list of class names, got {type(labels).__name__}.", "pass splits.class_names.")
    if not isinstance(metadata, dict):
        raise ConfigError("metadata", f"must be a JSON object, got {type(metadata).__name__}.", "pass a dict.")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError("keep", f"must be an integer >= 1, got {keep!r}.", "keep at least the current bundle.")
    deploy = Path(deploy_dir)
    deploy.mkdir(parents=True, exist_ok=True)
    current = deploy / CURRENT_LINK
    if current.exists() and not current.is_symlink():
        raise ConfigError("deploy_dir", f"{str(current)!r} exists and is not a symbolic link made by dlagent.", "move it away or use another deploy_dir.")
    bundle_name = bundle_name or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    if "/" in bundle_name or bundle_name.startswith("."):
        raise ConfigError("bundle_name", f"bad bundle name {bundle_name!r}.", "use e.g. the registered version, 'v3'.")
    final = deploy / f"bundle-{bundle_name}"
    if not final.exists():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=deploy))
        try:
            digests = {}
            for file_name, content in model_files.items():
                data = content if isinstance(content, (bytes, bytearray)) else Path(content).read_bytes()
                _write_synced(staging / file_name, bytes(data))
                digests[file_name] = hashlib.sha256(data).hexdigest()
            _write_synced(staging / LABELS_FILE, json.dumps([str(label) for label in labels], indent=2).encode())
            full_metadata = {**metadata, "files": digests, "labels_file": LABELS_FILE, "bundle": final.name, "written_at": now()}
            _write_synced(staging / METADATA_FILE, json.dumps(full_metadata, indent=2, sort_keys=True, default=str).encode())
            _fsync_dir(staging)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    link = deploy / f".current-{uuid.uuid4().hex[:8]}"
    os.symlink(final.name, link)
    os.replace(link, current)
    _fsync_dir(deploy)
    _prune_bundles(deploy, keep=keep, current=final.name)
    return current


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prune_bundles(deploy: Path, *, keep: int, current: str) -> None:
    """Keep the current bundle and the ``keep - 1`` newest others."""
    others = sorted((p for p in deploy.glob("bundle-*") if p.is_dir() and p.name != current),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for bundle in others[max(keep - 1, 0):]:
        shutil.rmtree(bundle, ignore_errors=True)
    for stale in deploy.glob(".staging-*"):  # left by a writer that was killed
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)


def deploy_champion_bundle(client, name: str, deploy_dir, *, extra_metadata: dict | None = None) -> Path:
    """Download the champion's TFLite file, labels and (a table's) encoding and write them as the current bundle."""
    champion = get_champion(client, name)
    if champion is None:
        raise RegistryError(f"{name!r} has no {CHAMPION!r}: nothing to deploy.")
    if not champion["tflite_artifact"]:
        raise RegistryError(f"{name!r} version {champion['version']} has no TFLite artifact to deploy.")
    location = client.get_model_version_download_uri(name, champion["version"])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(download(client, f"{location.rstrip('/')}/{TFLITE_DIR}", tmp))
        labels = json.loads((local / LABELS_FILE).read_text()) if (local / LABELS_FILE).exists() else []
        metadata = {"model_name": name, "version": champion["version"], "model_uri": champion["model_uri"],
                    "source": champion["source"], "run_id": champion["run_id"], "metrics": champion["metrics"],
                    **(extra_metadata or {})}
        files = {TFLITE_FILE: (local / TFLITE_FILE).read_bytes()}
        encoding = download_encoding(client, location)
        if encoding is not None:  # the model takes encoded rows: the bundle carries the vocabularies
            files[ENCODING_FILE] = json.dumps(encoding, indent=2).encode()
        return write_serving_bundle(deploy_dir, files, labels, metadata, bundle_name=f"{name}-v{champion['version']}")


def read_champion_tflite(client, name: str) -> tuple[bytes, dict] | None:
    """``(tflite bytes, version info)`` of the current champion, or ``None`` when there is none."""
    champion = get_champion(client, name)
    if champion is None:
        return None
    location = client.get_model_version_download_uri(name, champion["version"])
    content = download_tflite(client, location, what=f"models:/{name}@{CHAMPION}")
    return content, {**champion, "encoding": download_encoding(client, location)}


#: A TFLite tensor of a built-in model's ``standardize`` layer (Keras may number the scope: ``standardize_1``)
STANDARDIZE_TENSOR = re.compile(r"(^|/)standardize(_\d+)?(/|;|$)")


class BundlePredictor:
    """Scores raw rows with a serving bundle: its TFLite model, labels and, for a table with
    categorical columns, its ``encoding.json`` applied by the same
    :meth:`~dlagent.ml.tabular.TableEncoding.encode` that encoded the training data; image files
    are read as training read an image folder (:meth:`predict_images`)."""

    def __init__(self, bundle_dir):
        from dlagent.ml.tabular import TableEncoding
        from dlagent.ml.tflite import TFLiteModel

        folder = Path(bundle_dir)
        self.runner = TFLiteModel((folder / TFLITE_FILE).read_bytes())
        self.labels = json.loads((folder / LABELS_FILE).read_text()) if (folder / LABELS_FILE).exists() else []
        self.metadata = json.loads((folder / METADATA_FILE).read_text()) if (folder / METADATA_FILE).exists() else {}
        path = folder / ENCODING_FILE
        self.encoding = TableEncoding.from_json(json.loads(path.read_text())) if path.exists() else None

    def inputs(self, rows):
        """Model inputs from raw rows (lists in column order, or dicts by column name)."""
        import numpy as np

        return self.encoding.encode(rows) if self.encoding is not None else np.asarray(rows, np.float32)

    def predict(self, rows):
        """The model's outputs (class probabilities, or regression targets) for raw rows."""
        return self.runner.predict(self.inputs(rows))

    def image_inputs(self, files):
        """Model inputs from image files (paths, or one path; 8-bit PNG or JPEG), decoded, resized to the model's
        input size, converted to its channels and scaled to [0, 1] by the function that reads a
        streamed ``images:`` folder in training (:class:`~dlagent.ml.streaming.ImageFiles`), so a
        served photo is the pixels the model learned on, whatever its own size and mode."""
        import numpy as np
        import tensorflow as tf

        from dlagent.ml.streaming import ImageFiles

        shape = tuple(int(side) for side in self.runner.input_detail["shape"][1:])
        if self.encoding is not None or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
            raise ConfigError("instances", f"this model takes inputs of shape {shape}, not images.",
                              "give rows to predict() (raw table rows, or arrays of the model's input shape).")
        if any(STANDARDIZE_TENSOR.search(t["name"]) for t in self.runner.interpreter.get_tensor_details()):
            raise ConfigError("instances", "this model was trained on images in other units than pixels in [0, 1] (0-255 floats, "
                              "16-bit or sensor values: it standardises them itself), and image files are read as pixels in [0, 1].",
                              "give arrays in the training data's units to predict().")
        files = ImageFiles([files] if isinstance(files, (str, os.PathLike)) else list(files), shape[:2], 3 if len(shape) == 3 else 1)
        missing = [path for path in files.paths if not Path(path).is_file()]
        if missing:
            raise ConfigError("instances", f"no image file {missing[0]!r}.", "give paths of existing PNG or JPEG files.")
        pixels = [np.empty((0, *files.shape[1:]), np.float32)]  # no files: no rows
        try:  # the pipeline itself: indexing the files would blame a file that "changed after the data set was checked"
            if files.paths:
                pixels += [batch.numpy() for batch in files.dataset(batch_size=256)]
        except tf.errors.OpError as exc:
            bad = files.first_unreadable()
            raise ConfigError("instances", f"cannot decode image {bad!r}." if bad else f"cannot decode the images ({type(exc).__name__}).",
                              "give 8-bit PNG or JPEG files (convert other formats first).") from exc
        return np.concatenate(pixels)

    def predict_images(self, files):
        """The model's outputs for image files (:meth:`image_inputs`)."""
        return self.runner.predict(self.image_inputs(files))


def load_bundle(deploy_dir) -> BundlePredictor:
    """A :class:`BundlePredictor` of the current bundle in ``deploy_dir`` (or of a bundle folder)."""
    folder = Path(deploy_dir)
    return BundlePredictor(folder / CURRENT_LINK if (folder / CURRENT_LINK).exists() else folder)
