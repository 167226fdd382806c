"""Malformed input is refused before any compute, naming the field and the fix, and changes nothing.

One table of bad inputs, each driven through the real edge it would come through:

* ``conf``: a DAG-run conf of ``dl_agent_pipeline``. First Airflow's own check when a run is
  created (the DAG's Params, JSON-schema validated exactly as ``create_dagrun`` does:
  ``SerializedDAG.params.deep_merge(conf).validate()``), then the DAG's real first task
  ``validate_inputs``, its templates rendered from that conf, run with ``execute()`` as a
  worker would (defence in depth: a conf the Params accept, or a run whose Params were
  bypassed, must still be refused there). Data-set problems are also driven through the
  loader itself (``dlagent.ml.data.load_dataset``, no Airflow).
* ``search_space``: the DAG's real ``create_study`` task (and ``validate_search_space``, and
  ``validate_inputs`` given the space) against an Optuna study storage in PostgreSQL.
* ``compress``: ``CompressOperator`` on a real logged model, and the same settings as a
  ``compression_candidates`` conf through ``validate_inputs``.

Around every case the world is snapshotted: the MLflow store (experiments, runs, logged
models, registered models with their versions and aliases: a champion is registered), the
Optuna storage (studies and their trials: a study with a finished trial exists) and the
files under the artifact root, the deploy folder and DLAGENT_HOME. A refusal that changes any
of them fails the case ("before any compute": no run, no trial, no model file).
``DLAGENT_DATA_ROOTS`` is set to the one data folder, so paths leaving it are bad input too.
"""

from __future__ import annotations

import copy
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowFailException
from dlagent.errors import ConfigError

from tests.conftest import PROJECT_DIR
from tests.operators.context import TaskInstanceStub

RELIABILITY_KIND = "bad_input"
DAG_ID = "dl_agent_pipeline"
CHAMPION_NAME = "dlagent-classifier"  # the DAG's default model_name: a bad run must leave its champion alone
STUDY_NAME = "reliability.existing-study"
PREFIX = "invalid input, nothing was run: "


@dataclass(frozen=True)
class Case:
    name: str
    driver: str  # conf | search_space | compress
    spec: dict  # the conf (conf, search_space) or the compression settings (compress); "{data}"/"{outside}" are filled in
    field: str  # the field the task's message must start with
    params_refuse: bool = False  # Airflow's Param schema already refuses it when the run is created
    words: str = ""  # a phrase the message must contain


def C(name, spec, field, *, params=False, words="", driver="conf"):  # noqa: N802 - a table row
    return Case(name, driver, spec, field, params, words)


CASES = [
    # ---- conf: wrong type, out of range, unknown keys --------------------------------------------
    C("epochs_wrong_type", {"epochs": "ten"}, "epochs", params=True, words="must be an integer"),
    C("epochs_zero", {"epochs": 0}, "epochs", params=True, words="must be in [1, 1000]"),
    C("learning_rate_negative", {"learning_rate": -0.01}, "learning_rate", params=True),
    C("dropout_one", {"dropout": 1.0}, "dropout", params=True, words="[0, 1)"),
    C("batch_size_boolean", {"batch_size": True}, "batch_size", params=True),
    C("seed_negative", {"seed": -1}, "seed", params=True),
    C("model_unknown", {"model": "resnet50"}, "model", params=True, words="is not of the expected form"),
    C("optimizer_unknown", {"optimizer": "adamw"}, "optimizer", params=True),
    C("model_builder_off_the_allow_list", {"model": "os.path:join"}, "model", words="not on the model allow-list"),
    C("model_builder_module_missing", {"model": "include.models.missing:build"}, "model", words="cannot be found"),
    C("model_builder_not_a_function", {"model": "include.models.example:DEFAULTS"}, "model", words="not a function"),
    C("model_builder_rejects_its_args", {"model": "include.models.example:build", "model_args": {"widht": 8}}, "model",
      words="unknown model_args ['widht']"),
    C("model_args_not_an_object", {"model_args": [64]}, "model_args", params=True),
    C("init_from_alias_missing", {"init_from": "models:/nowhere@champion"}, "init_from", words="does not exist in the model registry"),
    C("init_from_outside_the_data_roots", {"init_from": "/etc/model.keras"}, "init_from", words="outside the allowed data roots"),
    C("init_from_not_a_model", {"init_from": "yesterday's model"}, "init_from", params=True),
    C("missing_policy_unknown", {"missing": "drop"}, "data_options.missing", params=True),
    C("missing_impute_for_a_user_builder", {"dataset": "csv:{data}/table.csv", "missing": "impute", "model": "include.models.example:build"},
      "data_options.missing", words="built into the 'mlp' model"),
    C("cache_unknown", {"cache": "disk"}, "data_options.cache", params=True),
    C("streaming_a_tiff_folder", {"dataset": "images:{data}/tiff_images", "cache": "stream"}, "data_options.cache", words="TIFF"),
    C("image_corrupt_when_streamed", {"dataset": "images:{data}/corrupt_image", "cache": "stream"}, "dataset", words="broken.png"),
    C("image_size_not_a_size", {"image_size": "32 by 32", "dataset": "images:{data}/tiff_images"}, "data_options.image_size", params=True),
    C("image_size_too_large", {"dataset": "images:{data}/tiff_images", "image_size": "5000"}, "data_options.image_size", words="1..4096"),
    C("image_size_on_a_table", {"image_size": "32"}, "data_options.image_size", words="'images:' folder"),
    C("color_mode_unknown", {"color_mode": "cmyk", "dataset": "images:{data}/tiff_images"}, "data_options.color_mode", params=True),
    C("csv_categorical_gap", {"dataset": "csv:{data}/categorical_gap.csv", "model": "mlp"}, "dataset", words="column 1: an empty cell"),
    C("int8_io_on_a_table", {"dataset": "csv:{data}/table.csv", "model": "mlp", "compression_candidates": [{"quantization": "int8",
      "int8_io": True}]}, "compression_candidates[0].int8_io", words="integer input cannot carry a table's raw columns"),
    C("int8_io_on_images_outside_0_1", {"dataset": "npz:{data}/images_0_to_255.npz", "compression_candidates": [{"quantization": "int8",
      "int8_io": True}]}, "compression_candidates[0].int8_io", words="integer input cannot carry these images' raw values"),
    C("csv_without_a_header", {"dataset": "csv:{data}/no_header.csv"}, "label_column", words="seems to have no header line"),
    C("csv_inf_when_streamed", {"dataset": "csv:{data}/inf_cell.csv", "model": "mlp", "cache": "stream", "missing": "impute"}, "dataset",
      words="1 NaN/inf feature values (first in sample 7)"),
    C("unknown_conf_key_misspelt", {"epoch": 5}, "epoch", words="Did you mean 'epochs'"),
    C("unknown_conf_key_alias", {"lr": 0.01}, "lr", words="is not a Param"),
    C("max_samples_too_small", {"max_samples": 10}, "max_samples", params=True),
    C("experiment_name_empty", {"experiment_name": ""}, "experiment_name", params=True),
    C("model_name_with_slash", {"model_name": "team/model"}, "model_name", params=True),
    C("gate_accuracy_threshold_as_percent", {"metric_threshold": 95}, "thresholds.metric_threshold", words="fraction"),
    C("gate_max_size_bytes_fraction", {"max_size_bytes": 1.5}, "thresholds.max_size_bytes", params=True),
    C("compression_candidates_not_a_list", {"compression_candidates": {"sparsity": 0.5}}, "compression_candidates", params=True),
    C("compression_sparsity_one", {"compression_candidates": [{"sparsity": 1.0}]}, "compression_candidates[0].sparsity",
      words="1.0 would remove every weight"),
    C("compression_unknown_key", {"compression_candidates": [{"quantisation": "int8"}]}, "compression_candidates[0].quantisation"),
    C("compression_quantization_unknown", {"compression_candidates": [{"quantization": "int4"}]},
      "compression_candidates[0].quantization"),
    C("dataset_not_a_string", {"dataset": 5}, "dataset", params=True),
    C("dataset_unknown_scheme", {"dataset": "cifar10"}, "dataset", words="unknown data set"),
    C("label_column_missing", {"dataset": "csv:{data}/table.csv", "label_column": "target", "model": "mlp"}, "label_column"),
    C("cnn_on_tabular_data", {"dataset": "csv:{data}/table.csv", "model": "cnn"}, "model", words="use model 'mlp'"),
    # ---- task and metric ---------------------------------------------------------------------------
    C("regression_metric_for_classification", {"metric": "rmse"}, "metric", words="is a regression metric"),
    C("classification_metric_for_regression", {"dataset": "csv:{data}/regression.csv", "model": "mlp", "task": "regression",
                                               "metric": "accuracy"}, "metric", words="is a classification metric"),
    C("auc_with_ten_classes", {"metric": "auc"}, "metric", words="needs a binary task"),
    # ---- tuning: what create_study would refuse after agent_budget, the first task refuses -------------
    C("tune_first_rung_beyond_the_epochs", {"epochs": 2, "tune_min_trial_epochs": 3}, "tune_min_trial_epochs", words="must be in [1, 2]"),
    C("tune_first_rung_beyond_the_trials_agent_off", {"agent_policy": "off", "tune_trial_epochs": 2, "tune_min_trial_epochs": 3},
      "tune_min_trial_epochs", words="must be in [1, 2]"),
    C("tune_metric_not_logged", {"tune_metric": "val_rmse"}, "tune_metric", words="is not measured in a classification run"),
    C("regression_on_class_labels", {"task": "regression"}, "dataset", words="looks like class labels"),
    C("regression_on_word_labels", {"dataset": "csv:{data}/words.csv", "model": "mlp", "task": "regression"}, "dataset",
      words="class labels"),
    C("regression_on_image_folders", {"dataset": "images:{data}/images_with_link", "task": "regression"}, "task",
      words="one folder per class"),
    C("regression_with_transfer", {"dataset": "csv:{data}/regression.csv", "model": "mlp", "task": "regression",
                                   "init_from": "models:/dlagent-classifier@champion"}, "init_from", words="fine-tunes classifiers"),
    C("regression_with_class_weights", {"dataset": "csv:{data}/regression.csv", "model": "mlp", "task": "regression",
                                        "class_weight": "balanced"}, "class_weight", words="weights classes"),
    C("regression_with_distillation", {"dataset": "csv:{data}/regression.csv", "model": "mlp", "task": "regression",
                                       "compression_candidates": [{"distill": True}]}, "compression_candidates[0].distill",
      words="distillation"),
    C("regression_target_missing", {"dataset": "csv:{data}/regression_gap.csv", "model": "mlp", "task": "regression"}, "dataset",
      words="is empty"),
    C("label_missing", {"dataset": "csv:{data}/label_gap.csv", "model": "mlp", "missing": "impute"}, "dataset",
      words="label column 'label' is empty"),
    C("numbers_with_currency_signs", {"dataset": "csv:{data}/currency.csv", "model": "mlp"}, "dataset", words="currency sign"),
    C("task_unknown", {"task": "ranking"}, "task", params=True),
    # ---- data sets: missing, empty, wrong shape, NaN/inf, classes and labels -------------------------
    C("dataset_missing_file", {"dataset": "npz:{data}/missing.npz"}, "dataset", words="does not exist"),
    C("npz_empty_file", {"dataset": "npz:{data}/empty.npz"}, "dataset", words="cannot read"),
    C("npz_zero_samples", {"dataset": "npz:{data}/zero_samples.npz"}, "dataset", words="is empty"),
    C("csv_empty_file", {"dataset": "csv:{data}/empty.csv"}, "dataset", words="is empty"),
    C("csv_header_only", {"dataset": "csv:{data}/header_only.csv"}, "dataset", words="no data rows"),
    C("images_folder_without_images", {"dataset": "images:{data}/empty_images"}, "dataset", words="no images"),
    C("features_one_dimensional", {"dataset": "npz:{data}/x_1d.npz"}, "dataset", words="at least 2 dimensions"),
    C("features_and_labels_differ_in_length", {"dataset": "npz:{data}/length_mismatch.npz"}, "dataset", words="but 50 labels"),
    C("labels_soft", {"dataset": "npz:{data}/soft_labels.npz"}, "dataset", words="not one-hot"),  # one-hot rows are read as labels
    C("images_channels_first", {"dataset": "npz:{data}/channels_first.npz"}, "model", words="x.transpose(0, 2, 3, 1)"),
    C("features_with_nan", {"dataset": "npz:{data}/nan.npz"}, "dataset", words="NaN/inf"),
    C("features_with_inf", {"dataset": "npz:{data}/inf.npz"}, "dataset", words="NaN/inf"),
    C("one_class_only", {"dataset": "npz:{data}/one_class.npz"}, "dataset", words="single class"),
    C("label_negative", {"dataset": "npz:{data}/negative_label.npz"}, "dataset", words=">= 0"),
    C("labels_out_of_range_gap", {"dataset": "npz:{data}/label_gap.npz"}, "dataset", words="consecutive"),
    C("labels_fractional", {"dataset": "npz:{data}/fractional_labels.npz"}, "dataset", words="whole numbers"),
    C("class_too_small_to_split", {"dataset": "npz:{data}/tiny_class.npz"}, "dataset", words="at least 3"),
    C("image_corrupt", {"dataset": "images:{data}/corrupt_image"}, "dataset", words="broken.png"),
    C("image_truncated", {"dataset": "images:{data}/truncated_image"}, "dataset", words="truncated.png"),
    C("image_decompression_bomb", {"dataset": "images:{data}/bomb_image"}, "dataset", words="too large to load safely"),
    C("csv_ragged_rows", {"dataset": "csv:{data}/ragged.csv", "model": "mlp"}, "dataset", words="line 4 has 2 fields"),
    C("csv_non_numeric_feature", {"dataset": "csv:{data}/non_numeric.csv", "model": "mlp"}, "dataset", words="not a number"),
    C("csv_not_utf8", {"dataset": "csv:{data}/binary.csv", "model": "mlp"}, "dataset", words="not UTF-8"),
    C("npz_truncated_archive", {"dataset": "npz:{data}/truncated.npz"}, "dataset", words="BadZipFile"),
    C("npz_is_a_plain_npy_array", {"dataset": "npz:{data}/plain_array.npz"}, "dataset", words="single array"),
    C("npz_with_pickled_objects", {"dataset": "npz:{data}/pickled.npz"}, "dataset", words="pickle is never loaded"),
    C("mnist_idx_truncated", {"dataset": "mnist-idx:{data}/mnist_truncated"}, "dataset", words="truncated"),
    # ---- paths leaving DLAGENT_DATA_ROOTS ---------------------------------------------------------
    C("path_dotdot_escape", {"dataset": "npz:{data}/../outside/good.npz"}, "dataset", words="outside the allowed data roots"),
    C("path_absolute_outside", {"dataset": "csv:{outside}/table.csv", "model": "mlp"}, "dataset", words="outside the allowed data roots"),
    C("path_system_file", {"dataset": "csv:/etc/passwd", "model": "mlp"}, "dataset", words="outside the allowed data roots"),
    C("path_home_tilde", {"dataset": "npz:~/data.npz"}, "dataset", words="outside the allowed data roots"),
    C("path_symlinked_file", {"dataset": "npz:{data}/link.npz"}, "dataset", words="outside the allowed data roots"),
    C("path_symlinked_folder", {"dataset": "images:{data}/linked_images"}, "dataset", words="outside the allowed data roots"),
    C("path_symlinked_class_folder", {"dataset": "images:{data}/images_with_link"}, "dataset", words="outside the allowed data roots"),
    # ---- search spaces ---------------------------------------------------------------------------
    C("search_space_low_above_high", {"learning_rate": {"type": "float", "low": 0.1, "high": 0.001}},
      "search_space.learning_rate", words="greater than high", driver="search_space"),
    C("search_space_log_with_zero_low", {"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
      "search_space.learning_rate", words="log scale needs low > 0", driver="search_space"),
    C("search_space_log_with_negative_low", {"units": {"type": "int", "low": -8, "high": 64, "log": True}},
      "search_space.units", words="log scale needs low > 0", driver="search_space"),
    C("search_space_unknown_type", {"units": {"type": "integer", "low": 8, "high": 64}}, "search_space.units",
      words="unknown type", driver="search_space"),
    C("search_space_unknown_parameter", {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "search_space.lr",
      words="not a training setting", driver="search_space"),
    C("search_space_bound_not_a_valid_value", {"dropout": {"type": "float", "low": 0.1, "high": 1.5}}, "search_space.dropout",
      words="not a valid dropout", driver="search_space"),
    C("search_space_empty_choices", {"batch_size": {"type": "categorical", "choices": []}}, "search_space.batch_size",
      words="non-empty list", driver="search_space"),
    # ---- compression settings --------------------------------------------------------------------
    C("compress_sparsity_one", {"sparsity": 1.0, "quantization": "int8"}, "sparsity", words="[0, 0.99]", driver="compress"),
    C("compress_sparsity_as_text", {"sparsity": "0.8"}, "sparsity", words="must be a number", driver="compress"),
    C("compress_polynomial_without_fine_tune", {"sparsity": 0.5, "pruning_schedule": "polynomial", "fine_tune_epochs": 0},
      "fine_tune_epochs", driver="compress"),
]


# --------------------------------------------------------------------------- the world


@dataclass
class DagRunStub:
    dag_id: str
    run_id: str
    conf: dict = field(default_factory=dict)


def _png(width: int, height: int) -> bytes:
    """A PNG file whose header claims ``width`` x ``height`` pixels (no pixel data): a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def _write_data(data: Path, outside: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    y3 = np.repeat(np.arange(3), 20)

    def npz(name, x, y, folder=data):
        np.savez(folder / name, x=x, y=y)

    def images(folder: Path, classes=("a", "b"), n=4):
        for label in classes:
            (folder / label).mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((8, 8)) * 255).astype("uint8")).save(folder / label / f"{i}.png")

    table = "f1,f2,f3,label\n" + "".join(f"{rng.random():.3f},{rng.random():.3f},{rng.random():.3f},{c}\n" for c in y3)
    for folder in (data, outside):
        (folder / "table.csv").write_text(table)
    npz("good.npz", rng.random((60, 4)), y3, outside)
    images(outside / "images")
    (data / "link.npz").symlink_to(outside / "good.npz")
    (data / "linked_images").symlink_to(outside / "images", target_is_directory=True)
    images(data / "images_with_link", classes=("a",))
    (data / "images_with_link" / "b").symlink_to(outside / "images" / "b", target_is_directory=True)

    (data / "empty.npz").write_bytes(b"")
    npz("zero_samples.npz", np.zeros((0, 4)), np.zeros((0,), np.int64))
    (data / "empty.csv").write_text("")
    (data / "header_only.csv").write_text("f1,f2,label\n")
    for label in ("a", "b"):
        (data / "empty_images" / label).mkdir(parents=True)
        (data / "empty_images" / label / "notes.txt").write_text("no images here")
    npz("x_1d.npz", rng.random(60), y3)
    npz("length_mismatch.npz", rng.random((60, 4)), np.repeat(np.arange(2), 25))
    npz("soft_labels.npz", rng.random((60, 4)), np.eye(3)[y3] * 0.9 + 0.1 / 3)
    npz("channels_first.npz", rng.random((60, 3, 16, 16)), y3)  # PyTorch's layout
    npz("images_0_to_255.npz", rng.random((60, 8, 8)) * 255, y3)  # floats the model standardises itself
    (data / "no_header.csv").write_text("".join(f"{rng.random():.3f},{rng.random():.3f},{c}\n" for c in y3))  # np.savetxt's
    nan = rng.random((60, 4))
    nan[7, 2] = np.nan
    npz("nan.npz", nan, y3)
    inf = rng.random((60, 4))
    inf[3, 0] = np.inf
    npz("inf.npz", inf, y3)
    npz("one_class.npz", rng.random((60, 4)), np.zeros(60, np.int64))
    npz("negative_label.npz", rng.random((60, 4)), y3 - 1)
    npz("label_gap.npz", rng.random((60, 4)), np.where(y3 == 2, 5, y3))
    npz("fractional_labels.npz", rng.random((60, 4)), y3 + 0.5)
    npz("tiny_class.npz", rng.random((42, 4)), np.concatenate([np.zeros(20, np.int64), np.ones(20, np.int64), [2, 2]]))
    images(data / "corrupt_image")
    (data / "corrupt_image" / "a" / "broken.png").write_bytes(b"this is not a png")
    images(data / "truncated_image")
    (data / "truncated_image" / "a" / "truncated.png").write_bytes((data / "truncated_image" / "a" / "0.png").read_bytes()[:60])
    images(data / "bomb_image")
    (data / "bomb_image" / "a" / "bomb.png").write_bytes(_png(30_000, 30_000))
    regression = "f1,f2,label\n" + "".join(f"{a:.3f},{b:.3f},{3 * a - b + 0.1 * c:.4f}\n" for a, b, c in rng.random((60, 3)))
    (data / "regression.csv").write_text(regression)
    (data / "regression_gap.csv").write_text(regression.replace("\n", "\n0.5,0.5,\n", 1))
    (data / "label_gap.csv").write_text("f1,f2,label\n" + "".join(f"{rng.random():.3f},{rng.random():.3f},{'' if i == 9 else 'ab'[i % 2]}\n"
                                                                   for i in range(40)))
    (data / "currency.csv").write_text("price,f2,label\n" + "".join(f'"${1000 + 37 * i:,}",{rng.random():.3f},{i % 2}\n' for i in range(40)))
    (data / "words.csv").write_text("f1,f2,label\n" + "".join(f"{rng.random():.3f},{rng.random():.3f},{w}\n" for w in ["low", "high"] * 30))
    (data / "inf_cell.csv").write_text("f1,f2,label\n" + "".join(f"{'inf' if i == 7 else f'{rng.random():.3f}'},{rng.random():.3f},{i % 2}\n"
                                                                 for i in range(40)))
    (data / "ragged.csv").write_text("f1,f2,label\n0.1,0.2,0\n0.3,0.4,1\n0.5,1\n")
    (data / "categorical_gap.csv").write_text("colour,f1,label\n" + "".join(f"{c},{rng.random():.3f},{i % 2}\n" for i, c in
                                                                         enumerate(["red", "blue", "", "teal"] * 10)))
    (data / "tiff_images").mkdir()
    for label in ("a", "b"):
        (data / "tiff_images" / label).mkdir()
        for i in range(4):
            Image.fromarray((rng.random((8, 8)) * 255).astype("uint8")).save(data / "tiff_images" / label / f"{i}.tiff")
    (data / "non_numeric.csv").write_text("f1,f2,label\n0.1,0.2,0\n0.3,high,1\n0.5,0.7,1\n")
    (data / "binary.csv").write_bytes(b"\xff\xfe\x00\x01\x89PNG\x00\x00label\n\x80\x81\x82")
    valid = data / "valid_tmp.npz"
    np.savez(valid, x=rng.random((60, 4)), y=y3)
    raw = valid.read_bytes()
    valid.unlink()
    (data / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    with open(data / "plain_array.npz", "wb") as handle:
        np.save(handle, rng.random((60, 4)))
    np.savez(data / "pickled.npz", x=np.array([{"a": i} for i in range(60)], dtype=object), y=y3)
    mnist = data / "mnist_truncated"
    mnist.mkdir()
    (mnist / "t10k-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 10, 28, 28) + bytes(100))
    (mnist / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(range(10)))


@dataclass
class World:
    base: Path
    data: Path
    outside: Path
    tracking_uri: str
    optuna_url: str
    model_uri: str
    dag: object
    serialized_params: object
    storage: object

    def fill(self, value):
        """Put the world's folders into a case's strings."""
        if isinstance(value, str):
            return value.replace("{data}", str(self.data)).replace("{outside}", str(self.outside))
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    # ---- Airflow's edge ----------------------------------------------------------------------
    def params_error(self, conf: dict) -> str | None:
        """What Airflow says when a run with this conf is created (None: the Params accept it)."""
        from airflow.sdk.definitions.param import ParamValidationError

        try:
            self.serialized_params.deep_merge(conf).validate()
        except ParamValidationError as exc:
            return str(exc)
        return None

    def task(self, task_id: str, conf: dict, run_id: str):
        """The DAG's real task with its templates rendered from ``conf`` (merged into the Params' defaults,
        unvalidated: the task must refuse what the Params would have refused), and its context."""
        params = {name: self.dag.params[name] for name in self.dag.params}
        params.update(conf)
        # upstream results the task's templates read: the agent's first-round plan is none (agent off),
        # so the Params' settings (the bad search space among them) reach the task as given; no data
        # summary, so a tuning task reads the data set itself for model 'auto'
        ti = TaskInstanceStub(dag_id=DAG_ID, task_id=task_id, run_id=run_id,
                              xcoms={("agent_budget", "tune"): None, ("validate_inputs", "data"): None})
        context = {"ti": ti,
                   "dag_run": DagRunStub(dag_id=DAG_ID, run_id=run_id, conf=dict(conf)), "params": params}
        operator = copy.copy(self.dag.get_task(task_id))
        operator.render_template_fields(context)
        return operator, context

    # ---- what must not change -----------------------------------------------------------------
    def snapshot(self) -> dict:
        from mlflow import MlflowClient
        from mlflow.entities import ViewType

        client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        experiments = client.search_experiments(view_type=ViewType.ALL)
        ids = [e.experiment_id for e in experiments]
        state = {f"experiment {e.name}": e.lifecycle_stage for e in experiments}
        for run in client.search_runs(ids, run_view_type=ViewType.ALL, max_results=50_000):
            state[f"run {run.info.run_id}"] = (run.info.status, tuple(sorted(run.data.params.items())), len(run.data.metrics))
        for model in client.search_logged_models(experiment_ids=ids):
            state[f"logged model {model.model_id}"] = model.status
        for registered in client.search_registered_models():
            state[f"registered {registered.name} aliases"] = tuple(sorted((k, str(v)) for k, v in registered.aliases.items()))
            for version in client.search_model_versions(f"name = '{registered.name}'"):
                state[f"registered {registered.name} v{version.version}"] = (version.source, tuple(sorted(version.tags.items())))
        for study in self.storage.get_all_studies():
            state[f"study {study.study_name}"] = tuple(
                (t.number, t.state.name, t.value, tuple(sorted(t.params.items())))
                for t in self.storage.get_all_trials(study._study_id, deepcopy=False)
            )
        for path in sorted(self.base.rglob("*")):
            relative = path.relative_to(self.base)
            if relative.parts[0] in ("data", "outside") or ".db" in path.name or not path.is_file():
                continue
            state[f"file {relative}"] = path.stat().st_size
        return state


def _changes(before: dict, after: dict) -> tuple[list[str], int]:
    """(what changed, how many things that existed before are gone or different)."""
    lost = [k for k in before if after.get(k, object()) != before[k]]
    added = [k for k in after if k not in before]
    return [f"changed or gone: {k}" for k in lost] + [f"new: {k}" for k in added], len(lost)


@pytest.fixture(scope="module")
def world(tmp_path_factory, digits_small, module_postgres_databases):
    """A data folder (the only allowed root), an MLflow store with a champion and its deployed
    bundle, an Optuna study in PostgreSQL with a finished trial, and the real pipeline DAG."""
    import optuna
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization
    from dlagent.ml import tuning
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.model_store import log_keras_model
    from dlagent.ml.quantization import quantize
    from dlagent.ml.registry import register_champion
    from dlagent.ml.serving import deploy_champion_bundle
    from dlagent.ml.tracking import ensure_experiment
    from dlagent.ml.training import fit
    from mlflow import MlflowClient

    base = tmp_path_factory.mktemp("bad-inputs")
    data, outside = base / "data", base / "outside"
    data.mkdir()
    outside.mkdir()
    _write_data(data, outside)
    optuna_url = module_postgres_databases()
    tracking_uri = f"sqlite:///{base / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    for name, value in {"MLFLOW_TRACKING_URI": tracking_uri, "DLAGENT_ARTIFACT_ROOT": str(base / "artifacts"),
                        "DLAGENT_DEPLOY_DIR": str(base / "deploy"), "DLAGENT_HOME": str(base / "home"),
                        "DLAGENT_DATA_ROOTS": str(data), "DLAGENT_OPTUNA_STORAGE": optuna_url}.items():
        patch.setenv(name, value)
    for name in ("AIRFLOW_CONN_MLFLOW_DEFAULT", "AIRFLOW_CONN_OPTUNA_DEFAULT"):
        patch.delenv(name, raising=False)
    try:
        model = fit(digits_small, TrainConfig(model="mlp", epochs=2, units=16, early_stopping_patience=0)).model
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        run_id = client.create_run(ensure_experiment(client, "reliability", str(base / "artifacts"))).info.run_id
        model_uri = log_keras_model(client, run_id, model, digits_small.x_test[:2], labels=digits_small.class_names,
                                    tflite_bytes=quantize(model, "dynamic"))
        client.set_terminated(run_id)
        register_champion(client, model_uri, CHAMPION_NAME, idempotency_key="reliability/champion", run_id=run_id,
                          metrics={"test_accuracy": 0.5})
        deploy_champion_bundle(client, CHAMPION_NAME, base / "deploy")

        space = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
        tuning.create_study(optuna_url, STUDY_NAME, tuning.StudySettings(space=space, max_resource=2))
        storage = optuna.storages.RDBStorage(optuna_url)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})
        study.tell(trial, 0.5)

        dag = DagBag(dag_folder=str(PROJECT_DIR / "dags" / "dl_agent_pipeline.py")).dags[DAG_ID]
        serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        yield World(base, data, outside, tracking_uri, optuna_url, model_uri, dag, serialized.params, storage)
    finally:
        patch.undo()


# --------------------------------------------------------------------------- drivers


def _check_task_refusal(error: BaseException, case: Case) -> str:
    """The task failed at once (no retry), naming the field first and saying how to fix it."""
    message = str(error)
    assert isinstance(error, AirflowFailException), f"{type(error).__name__} (would be retried): {message}"
    assert message.startswith(PREFIX), message
    assert message[len(PREFIX):].startswith(f"{case.field}:"), f"the message does not start with {case.field!r}: {message}"
    assert "Fix: " in message and len(message.split("Fix: ", 1)[1].strip()) > 5, f"no fix in: {message}"
    assert case.words in message, f"{case.words!r} not in: {message}"
    return message[len(PREFIX):]


def _run_refused(operator, context, case: Case) -> str:
    with pytest.raises(Exception) as error:  # noqa: PT011 - the kind of exception is checked next
        operator.execute(context)
    return _check_task_refusal(error.value, case)


def _params_check(world: World, conf: dict, case: Case) -> str:
    message = world.params_error(conf)
    if case.params_refuse:
        top = next(iter(conf))
        assert message is not None, f"Airflow's Params accepted {conf}"
        assert f"param {top}" in message, message
        return "Params refuse: " + message.splitlines()[0]
    assert message is None, f"the Params now refuse it (mark the case params=True): {message}"
    return "Params accept (the task must refuse)"


def drive_conf(world: World, case: Case) -> list[str]:
    conf = world.fill(case.spec)
    notes = [_params_check(world, conf, case)]
    operator, context = world.task("validate_inputs", conf, f"bad__{case.name}")
    notes.append("validate_inputs: " + _run_refused(operator, context, case))
    if case.field in ("dataset", "label_column", "max_samples") and isinstance(conf.get("dataset"), str) and ":" in conf["dataset"]:
        from dlagent.ml.data import load_dataset

        with pytest.raises(ConfigError) as error:
            load_dataset(conf["dataset"], seed=42, allowed_roots=[str(world.data)], label_column=conf.get("label_column", "label"),
                         task=conf.get("task", "classification"), metric=conf.get("metric"))
        assert error.value.field == case.field and error.value.fix, str(error.value)
        notes.append("load_dataset: refused")
    return notes


def drive_search_space(world: World, case: Case) -> list[str]:
    from dlagent.ml.tuning import validate_search_space

    space = world.fill(case.spec)
    conf = {"search_space": space, "n_trials": 2, "model": "mlp"}
    notes = [_params_check(world, conf, case)]
    with pytest.raises(ConfigError) as error:
        validate_search_space(space)
    assert error.value.field == case.field and error.value.fix, str(error.value)
    operator, context = world.task("create_study", conf, f"bad__{case.name}")
    notes.append("create_study: " + _run_refused(operator, context, case))
    operator, context = world.task("validate_inputs", conf, f"bad__{case.name}")
    operator.search_space = space  # what the task checks once the DAG passes it `search_space` (it is None otherwise)
    notes.append("validate_inputs: " + _run_refused(operator, context, case))
    return notes


def drive_compress(world: World, case: Case) -> list[str]:
    from dlagent.operators.compress import CompressOperator

    settings = world.fill(case.spec)
    operator = CompressOperator(task_id="compress", model_uri=world.model_uri, compression=settings, dataset="digits",
                                data_options={"max_samples": 300}, seed=0, experiment_name="reliability")
    context = {"ti": TaskInstanceStub(dag_id=DAG_ID, task_id="compress", run_id=f"bad__{case.name}", map_index=0),
               "dag_run": DagRunStub(dag_id=DAG_ID, run_id=f"bad__{case.name}"), "params": {}}
    notes = ["compress: " + _run_refused(operator, context, case)]
    as_conf = Case(case.name, "conf", {"compression_candidates": [case.spec]}, f"compression_candidates[0].{case.field}",
                   words=case.words)
    notes += drive_conf(world, as_conf)
    return notes


DRIVERS = {"conf": drive_conf, "search_space": drive_search_space, "compress": drive_compress}


# --------------------------------------------------------------------------- the tests


def test_the_table_is_big_enough_and_names_are_unique():
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_before_any_compute(world, case, reliability_record):
    before = world.snapshot()
    try:
        notes = DRIVERS[case.driver](world, case)
    except BaseException as exc:
        reliability_record("bad_input", case.name, False, detail=f"not refused as expected: {type(exc).__name__}: {exc}")
        raise
    changes, lost = _changes(before, world.snapshot())
    reliability_record("bad_input", case.name, not changes, lost=lost,
                       detail=" | ".join(notes) + (f" | CHANGED: {changes}" if changes else ""))
    assert not changes, f"a refused input changed the world: {changes}"


@pytest.mark.parametrize("model", [{"model": "mlp"}, {}], ids=["mlp", "auto"])
def test_a_good_conf_passes_the_same_edge(world, model):
    """The harness refuses for the right reason: a valid conf goes through validate_inputs
    (``model`` left at its default, ``auto``, becomes the ``mlp`` for a table's rows)."""
    conf = world.fill({"dataset": "csv:{data}/table.csv", **model})
    assert world.params_error(conf) is None
    operator, context = world.task("validate_inputs", conf, f"good__{len(model)}")
    result = operator.execute(context)
    assert result["data"]["num_classes"] == 3 and result["config"]["model"] == "mlp"
    from mlflow import MlflowClient

    parent = MlflowClient(world.tracking_uri).get_run(result["parent_run_id"])
    assert parent.data.params["model"] == "mlp"  # the agent reads the run's settings from here


def test_the_snapshot_sees_a_new_run_a_new_trial_and_a_new_file(world):
    """The "nothing changed" check can fail: a run, a trial and a model file written behind its back are all seen.

    (Last in the module: it changes the world.)"""
    import optuna
    from mlflow import MlflowClient

    before = world.snapshot()
    client = MlflowClient(world.tracking_uri)
    client.create_run(client.get_experiment_by_name("reliability").experiment_id)
    study = optuna.load_study(study_name=STUDY_NAME, storage=world.storage)
    study.tell(study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}), 0.6)
    (world.base / "deploy" / "model.keras").write_bytes(b"weights")
    changes, lost = _changes(before, world.snapshot())
    kinds = " ".join(changes)
    assert "new: run " in kinds and f"changed or gone: study {STUDY_NAME}" in kinds and "new: file deploy/model.keras" in kinds
    assert lost == 1  # the study's trial list is different
