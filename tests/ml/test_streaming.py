"""Image folders read from disk through tf.data: the same split and pixels as in memory, the same
split in every process, checks before training, and a file that goes bad mid-run named."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml import streaming
from dlagent.ml.data import load_dataset
from dlagent.ml.streaming import ImageFiles

from tests.conftest import PROJECT_DIR


def _folder(root, *, per_class=40, size=(12, 10), classes=3, suffix=".png"):
    """Colour PNGs whose dominant channel is the class (``size`` is width, height)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (size[1], size[0], 3)).astype(np.uint8)
            pixels[:, :, c] += 150
            Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")
    return f"images:{root}"


def test_a_streamed_folder_has_the_split_and_pixels_of_the_same_folder_in_memory(tmp_path):
    uri = _folder(tmp_path / "set")
    memory, streamed = load_dataset(uri, seed=5, cache="memory"), load_dataset(uri, seed=5, cache="stream")
    assert isinstance(streamed.x_train, ImageFiles) and isinstance(memory.x_train, np.ndarray)
    assert streamed.input_shape == memory.input_shape == (10, 12, 3) and streamed.digest == memory.digest
    for part in ("y_train", "y_val", "y_test"):
        np.testing.assert_array_equal(getattr(streamed, part), getattr(memory, part))
    np.testing.assert_allclose(streamed.x_test[:], memory.x_test, atol=1e-6)  # one decoder's pixels are the other's
    np.testing.assert_allclose(streamed.x_train[[4, 0, 9]], memory.x_train[[4, 0, 9]], atol=1e-6)
    assert streamed.x_val[2].shape == (10, 12, 3)
    batches = list(streamed.x_train.dataset(streamed.y_train, batch_size=32, shuffle_seed=1))
    assert sum(len(labels) for _, labels in batches) == len(streamed.y_train) and batches[0][0].shape[1:] == (10, 12, 3)


def test_every_process_gets_the_same_streamed_split(tmp_path):
    """Each task loads the folder in its own process: the file lists of the parts are equal."""
    uri = _folder(tmp_path / "set")
    code = ("import json, sys; from dlagent.ml.data import load_dataset; s = load_dataset(sys.argv[1], seed=2, cache='stream'); "
            "print(json.dumps([s.x_train.paths, s.x_val.paths, s.x_test.paths]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, check=True, cwd=PROJECT_DIR,
                                      env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout) for seed in ("1", "2")]
    here = load_dataset(uri, seed=2, cache="stream")
    assert runs[0] == runs[1] == [here.x_train.paths, here.x_val.paths, here.x_test.paths]
    assert not set(here.x_train.paths) & set(here.x_test.paths)


def test_auto_holds_a_small_folder_in_memory_and_streams_one_past_the_budget(tmp_path, monkeypatch):
    uri = _folder(tmp_path / "set", per_class=10)
    assert isinstance(load_dataset(uri, seed=0).x_train, np.ndarray)
    monkeypatch.setattr(streaming, "CACHE_BUDGET_BYTES", 1000)
    assert isinstance(load_dataset(uri, seed=0).x_train, ImageFiles)


def test_train_compress_and_evaluate_read_a_streamed_folder(tmp_path):
    from dlagent.ml.compression import CompressionConfig, compress
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.evaluation import evaluate_tflite
    from dlagent.ml.training import evaluate, fit

    splits = load_dataset(_folder(tmp_path / "set"), seed=0, cache="stream")
    result = fit(splits, TrainConfig(model="cnn", epochs=4, seed=0))
    assert evaluate(result.model, splits)["test_accuracy"] >= 0.9  # the dominant colour is the class
    candidate = compress(result.model, splits, CompressionConfig(sparsity=0.5, quantization="int8"), latency_runs=5)
    report = evaluate_tflite(candidate.tflite_bytes, splits, out_dir=tmp_path / "eval", latency_runs=5)
    assert report.metrics["test_accuracy"] >= 0.9 and (tmp_path / "eval" / "confusion_matrix.png").exists()
    with pytest.raises(ConfigError, match="compression.distill.*streamed"):
        compress(result.model, splits, CompressionConfig(distill=True, quantization="none"))


def test_a_file_that_goes_bad_after_the_checks_fails_training_naming_it(tmp_path):
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.training import fit

    splits = load_dataset(_folder(tmp_path / "set"), seed=0, cache="stream")
    victim = splits.x_train.paths[7]
    with open(victim, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ConfigError, match=f"image '{victim}' can no longer be read or decoded"):
        fit(splits, TrainConfig(model="cnn", epochs=1, seed=0))


def test_bad_files_are_refused_in_the_one_pass_before_training(tmp_path):
    uri = _folder(tmp_path / "set", per_class=5)
    (tmp_path / "set" / "class1" / "zz.png").write_bytes(b"not an image at all")
    with pytest.raises(ConfigError, match=r"cannot decode image .*zz\.png"):
        load_dataset(uri, seed=0, cache="stream")


def test_a_changed_file_changes_the_digest_and_tiff_is_not_streamed(tmp_path):
    uri = _folder(tmp_path / "set", per_class=5)
    before = load_dataset(uri, seed=0, cache="stream").digest
    from PIL import Image

    Image.new("RGB", (12, 10), (1, 2, 3)).save(tmp_path / "set" / "class0" / "000.png")
    assert load_dataset(uri, seed=0, cache="stream").digest != before
    tiff = _folder(tmp_path / "tiff", per_class=5, suffix=".tiff")
    assert isinstance(load_dataset(tiff, seed=0).x_train, np.ndarray)  # small: held in memory, Pillow reads TIFF
    with pytest.raises(ConfigError, match="data_options.cache.*TIFF"):
        load_dataset(tiff, seed=0, cache="stream")


def test_mixed_sizes_get_the_same_pixels_in_memory_and_streamed_and_masks_index_files(tmp_path, monkeypatch):
    from PIL import Image

    uri = _folder(tmp_path / "set", per_class=8)
    Image.new("RGB", (20, 16), (200, 10, 10)).save(tmp_path / "set" / "class0" / "big.png")  # resized to the first image's size
    memory, streamed = load_dataset(uri, seed=1, cache="memory"), load_dataset(uri, seed=1, cache="stream")
    monkeypatch.setattr(streaming, "DECODE_CHUNK", 4)  # several chunks per request
    np.testing.assert_allclose(streamed.x_train[:], memory.x_train, atol=1e-6)
    mask = streamed.y_train == 1
    np.testing.assert_allclose(streamed.x_train[mask], memory.x_train[mask], atol=1e-6)
    with pytest.raises(TypeError, match="integers or a boolean mask"):
        streamed.x_train[[0.5]]


def test_distillation_on_a_streamed_folder_is_refused_by_validate_inputs(tmp_path, mlflow_uri, monkeypatch):
    from dlagent.operators.pipeline import ValidateInputsOperator

    from tests.operators.context import make_context

    monkeypatch.setenv("DLAGENT_DATA_ROOTS", str(tmp_path))
    uri = _folder(tmp_path / "set", per_class=5)
    task = ValidateInputsOperator(task_id="validate_inputs", dataset=uri, train_config={"model": "cnn", "epochs": 1},
                                  data_options={"cache": "stream"}, compression_candidates=[{"distill": True}],
                                  experiment_name="streamed")
    with pytest.raises(Exception, match=r"compression_candidates\[0\].distill.*streamed"):
        task.execute(make_context("validate_inputs", dag_id="dl_agent_pipeline"))


def test_image_size_and_color_mode_resize_and_convert_every_image_in_memory_and_streamed(tmp_path):
    """``image_size`` is height x width for every image (not the first image's size); ``color_mode``
    converts; the in-memory and streamed pixels agree, and a model trains on the new shape."""
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.training import fit
    from PIL import Image

    uri = _folder(tmp_path / "set", size=(12, 10))
    Image.new("RGB", (30, 7), (200, 10, 10)).save(tmp_path / "set" / "class0" / "zz_wide.png")  # another size, resized too
    memory = load_dataset(uri, seed=3, cache="memory", image_size="8x6", color_mode="grayscale")
    streamed = load_dataset(uri, seed=3, cache="stream", image_size="8x6", color_mode="grayscale")
    assert memory.input_shape == streamed.input_shape == (8, 6)
    np.testing.assert_allclose(streamed.x_test[:], memory.x_test, atol=1e-6)
    assert load_dataset(uri, seed=3, image_size=16, color_mode="rgb").input_shape == (16, 16, 3)
    assert load_dataset(uri, seed=3, image_size=[9, 4]).input_shape == (9, 4, 3)
    assert load_dataset(uri, seed=3).input_shape == (10, 12, 3)  # default: the first image's size and mode
    result = fit(streamed, TrainConfig(model="cnn", filters=4, units=8, epochs=1, seed=0))
    assert result.model.input_shape == (None, 8, 6)


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [({"image_size": "8by6"}, "data_options.image_size", "cannot read '8by6'"),
     ({"image_size": "0x6"}, "data_options.image_size", "1..4096"),
     ({"image_size": [8, 6, 3]}, "data_options.image_size", "one or two whole sides"),
     ({"image_size": True}, "data_options.image_size", "one or two whole sides"),
     ({"color_mode": "cmyk"}, "data_options.color_mode", "cmyk")],
)
def test_a_bad_image_size_or_color_mode_is_refused_before_any_file_is_read(tmp_path, options, field, words):
    with pytest.raises(ConfigError) as caught:
        load_dataset(f"images:{tmp_path / 'does-not-exist'}", **options)
    assert caught.value.field == field and words in str(caught.value)


def test_image_size_on_a_table_is_refused_naming_the_option(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_dataset("digits", image_size=16)
    assert caught.value.field == "data_options.image_size" and "'images:' folder" in str(caught.value)


def test_resized_or_converted_pixels_are_another_data_set_for_lineage(tmp_path):
    uri = _folder(tmp_path / "set", size=(12, 10))
    plain = load_dataset(uri, seed=1)
    assert load_dataset(uri, seed=1, image_size="10x12", color_mode="rgb").digest == plain.digest  # the first image's own
    assert len({plain.digest, load_dataset(uri, seed=1, image_size=8).digest,
                load_dataset(uri, seed=1, color_mode="grayscale").digest}) == 3


def test_auto_colour_is_rgb_when_any_image_has_colour_whichever_sorts_first(tmp_path):
    """A folder of colour photos whose first file is grayscale was read in grayscale, its colours
    (here: the class) thrown away. ``auto`` is grayscale only when every image is (16-bit too)."""
    from PIL import Image

    uri = _folder(tmp_path / "set", per_class=12)
    first = tmp_path / "set" / "class0" / "000.png"
    Image.open(first).convert("L").save(first)
    splits = load_dataset(uri, seed=0, cache="memory")
    assert splits.input_shape == (10, 12, 3)
    assert load_dataset(uri, seed=0, cache="stream").input_shape == (10, 12, 3)
    gray = tmp_path / "gray"
    for c in range(2):
        (gray / f"c{c}").mkdir(parents=True)
        for i in range(6):
            pixels = np.full((8, 8), 40 + 100 * c + i, np.uint16) * (256 if i % 2 else 1)
            Image.fromarray(pixels if i % 2 else pixels.astype(np.uint8)).save(gray / f"c{c}" / f"{i}.png")
    scanned = streaming.scan_image_folder(gray)
    assert "I;16" in scanned.modes and scanned.channels == 1
    assert load_dataset(f"images:{gray}", seed=0, cache="memory").input_shape == (8, 8)


def test_16_bit_and_float_images_keep_their_depth(tmp_path):
    """Pillow's ``convert("L")`` clips a 16-bit pixel at 255: a scan whose values reach 60,000
    came out nearly all white (two classes differing only in brightness: the same images). 16-bit
    pixels are divided by 65,535, float pixels kept as stored, 8-bit ones divided by 255."""
    from PIL import Image

    folder = tmp_path / "scans"
    rng = np.random.default_rng(0)
    wide = {}
    for c, top in enumerate((20_000, 60_000)):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(6):
            wide[(c, i)] = (rng.random((8, 8)) * top).astype(np.uint16)
            Image.fromarray(wide[(c, i)]).save(folder / f"c{c}" / f"{i}.png")
    depth = np.linspace(-2.0, 7.5, 64, dtype=np.float32).reshape(8, 8)  # a depth map in metres, say
    Image.fromarray(depth).save(folder / "c1" / "float.tiff")
    Image.fromarray(np.full((8, 8), 51, np.uint8)).save(folder / "c0" / "eight_bit.png")
    from dlagent.ml.data_readers import decode_images

    scanned = streaming.sized(streaming.scan_image_folder(folder), None)
    pixels = dict(zip(scanned.paths, decode_images(scanned)[0], strict=True))
    for (c, i), stored in wide.items():
        np.testing.assert_allclose(pixels[str(folder / f"c{c}" / f"{i}.png")], stored / 65535, rtol=1e-6)
    np.testing.assert_array_equal(pixels[str(folder / "c1" / "float.tiff")], depth)
    np.testing.assert_allclose(pixels[str(folder / "c0" / "eight_bit.png")], 0.2, rtol=1e-6)
    splits = load_dataset(f"images:{folder}", seed=0)
    assert splits.input_shape == (8, 8)  # the depth map's metres stay, for the model to standardise
    assert max(float(part.max()) for part in (splits.x_train, splits.x_val, splits.x_test)) == 7.5
    colour = load_dataset(f"images:{folder}", seed=0, color_mode="rgb")
    assert colour.input_shape == (8, 8, 3)
    np.testing.assert_array_equal(colour.x_train[..., 0], colour.x_train[..., 2])


def test_images_in_sub_folders_of_a_class_are_its_images_and_hidden_files_are_not(tmp_path):
    """As Keras' ``image_dataset_from_directory`` reads a class folder: at any depth (before, a
    ``cats/2024/`` folder was skipped without a word), in a fixed order; hidden folders and files
    (macOS's ``._photo.png`` beside each photo, not an image) are not read."""
    uri = _folder(tmp_path / "set", per_class=9)
    flat = streaming.scan_image_folder(tmp_path / "set")
    nested = tmp_path / "set" / "class1" / "2024" / "may"
    nested.mkdir(parents=True)
    (tmp_path / "set" / "class1" / "008.png").rename(nested / "008.png")
    (tmp_path / "set" / "class1" / "._001.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "set" / "class2" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "set" / "class2" / ".ipynb_checkpoints" / "000-checkpoint.png").write_bytes(b"not an image")
    scanned = streaming.scan_image_folder(tmp_path / "set")
    assert len(scanned.paths) == len(flat.paths) == 27 and str(nested / "008.png") in scanned.paths
    np.testing.assert_array_equal(scanned.labels, flat.labels)
    assert scanned.paths[9:18] == sorted(scanned.paths[9:18])  # class1: 000..007.png, then 2024/may/008.png
    assert scanned.digest != flat.digest  # the relative path is part of the digest
    memory, streamed = load_dataset(uri, seed=1, cache="memory"), load_dataset(uri, seed=1, cache="stream")
    np.testing.assert_allclose(streamed.x_test[:], memory.x_test, atol=1e-6)


def test_large_images_default_to_256_on_their_longer_side_with_the_aspect_kept(tmp_path):
    """Photos took their full size as the model's input when ``image_size`` was empty: a 600 x 400
    folder gave the cnn's dense layer 960,000 inputs (123 million weights). Empty now means the first image's size
    scaled down to 256 on its longer side (Keras' default size), in memory and streamed alike."""
    uri = _folder(tmp_path / "photos", per_class=4, size=(600, 400), classes=2)
    assert streaming.default_size((400, 600)) == (171, 256) and streaming.default_size((28, 28)) == (28, 28)
    memory, streamed = load_dataset(uri, seed=0, cache="memory"), load_dataset(uri, seed=0, cache="stream")
    assert memory.input_shape == streamed.input_shape == (171, 256, 3)
    np.testing.assert_allclose(streamed.x_test[:], memory.x_test, atol=1e-6)
    assert load_dataset(uri, seed=0, image_size="400x600").input_shape == (400, 600, 3)  # asked for: kept


def test_split_folders_are_joined_not_taken_for_classes(tmp_path):
    """``train/class0``, ``valid/class0``, ``test/``...: with images read at any depth, the splits
    would be the classes. They are joined: a class is its folder in every split (one only in
    ``valid/`` included), the same files as their flat twin's, which dlagent splits itself; an
    unlabelled ``test/`` (images, no class folders) is not read. A class with sub-folders of its
    own (``2023/``, ``2024/``) is not a split."""
    import shutil

    from PIL import Image

    _folder(tmp_path / "splits" / "train", per_class=3, classes=2)
    _folder(tmp_path / "splits" / "valid", per_class=3, classes=3)
    (tmp_path / "splits" / "test").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "splits" / "test" / "unlabelled.png")
    joined = load_dataset(f"images:{tmp_path / 'splits'}", seed=0)
    assert joined.class_names == ["class0", "class1", "class2"] and len(joined.y_train) + len(joined.y_val) + len(joined.y_test) == 15
    for split in ("train", "valid"):  # the flat twin: every class folder's files in one folder per class
        for class_dir in (tmp_path / "splits" / split).iterdir():
            shutil.copytree(class_dir, tmp_path / "flat" / class_dir.name / split)
    flat = load_dataset(f"images:{tmp_path / 'flat'}", seed=0)
    np.testing.assert_array_equal(joined.x_test, flat.x_test)
    np.testing.assert_array_equal(joined.y_train, flat.y_train)
    assert load_dataset(f"images:{tmp_path / 'splits' / 'train'}", seed=0).class_names == ["class0", "class1"]
    for c in ("cats", "dogs"):
        for year in ("2023", "2024"):
            (tmp_path / "years" / c / year).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (6, 6), (200 if c == "cats" else 10, 40, 40)).save(tmp_path / "years" / c / year / f"{i}.png")
    assert load_dataset(f"images:{tmp_path / 'years'}", seed=0).class_names == ["cats", "dogs"]
