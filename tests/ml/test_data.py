"""The data layer on real data: bundled digits, MNIST IDX, npz, CSV and image folders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.data import load_dataset, load_dataset_with_options
from dlagent.ml.data_paths import parse_dataset_uri

from tests.conftest import SHARED_DATA, required_on_ci


def test_digits_split_is_stratified_deterministic_and_scaled():
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert a.num_classes == 10 and a.input_shape == (8, 8)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_test, c.y_test)
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    # stratified: every class in every part, in about the same share
    for part in (a.y_train, a.y_val, a.y_test):
        shares = np.bincount(part, minlength=10) / len(part)
        assert shares.min() > 0.07 and shares.max() < 0.13


def test_max_samples_keeps_a_stratified_subset():
    splits = load_dataset("digits", seed=0, max_samples=300)
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 300
    assert set(np.unique(splits.y_test)) == set(range(10))


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_loader_reads_gzip_idx(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.repeat(np.arange(3), 20))
    splits = load_dataset(f"mnist-idx:{tmp_path}", seed=0)
    assert splits.input_shape == (28, 28) and splits.num_classes == 3
    assert splits.x_train.dtype == np.float32 and splits.x_train.max() <= 1.0


def test_real_mnist_test_set_loads_with_its_documented_class_counts():
    if not (SHARED_DATA / "mnist-t10k").is_dir():
        required_on_ci(f"{SHARED_DATA / 'mnist-t10k'} is not beside this checkout (../shared/data)")
    from dlagent.ml.data_readers import load_arrays

    x, y, _ = load_arrays(f"mnist-idx:{SHARED_DATA / 'mnist-t10k'}")
    assert x.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_npz_csv_and_image_folder_loaders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 5)).astype(np.float32), y=np.repeat([0, 1], 20))
    assert load_dataset(f"npz:{tmp_path / 'd.npz'}").input_shape == (5,)

    rows = ["a,b,species"] + [f"{i},{i % 3},{'cat' if i % 2 else 'dog'}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    splits = load_dataset_with_options(f"csv:{tmp_path / 'd.csv'}", {"label_column": "species"}, seed=0)
    assert splits.class_names == ["cat", "dog"] and splits.input_shape == (2,)

    for label in ("circle", "square"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(tmp_path / "img" / label / f"{i}.png")
    images = load_dataset(f"images:{tmp_path / 'img'}")
    assert images.class_names == ["circle", "square"] and images.input_shape == (12, 12)


def _npz(tmp_path, x, y):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


@pytest.mark.parametrize(
    ("make_uri", "field", "words"),
    [
        (lambda p: "imagenet", "dataset", "unknown data set"),
        (lambda p: "npz:/no/such/file.npz", "dataset", "does not exist"),
        (lambda p: "csv:", "dataset", "needs a path"),
        (lambda p: _npz(p, np.full((30, 4), np.nan, np.float32), np.repeat([0, 1, 2], 10)), "dataset", "NaN/inf"),
        (lambda p: _npz(p, np.ones((30, 4), np.float32), np.zeros(30, int)), "dataset", "single class"),
        (lambda p: _npz(p, np.ones((30, 4), np.float32), np.repeat([0, 5], 15)), "dataset", "no samples"),
        (lambda p: _npz(p, np.ones((30, 4), np.float32), np.repeat([-1, 1], 15)), "dataset", ">= 0"),
        (lambda p: _npz(p, np.ones((30, 4), np.float32), np.repeat([0, 1], 10)), "dataset", "30 feature rows but 20 labels"),
    ],
)
def test_bad_data_is_refused_with_the_field_named(tmp_path, make_uri, field, words):
    with pytest.raises(ConfigError) as error:
        load_dataset(make_uri(tmp_path))
    assert error.value.field == field
    assert words in str(error.value)
    assert "Fix:" in str(error.value)


def test_csv_without_label_column_and_ragged_csv_are_refused(tmp_path):
    (tmp_path / "no_label.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ConfigError, match="no column named 'label' among its 2 header columns") as error:
        load_dataset(f"csv:{tmp_path / 'no_label.csv'}")
    assert error.value.field == "label_column"
    (tmp_path / "ragged.csv").write_text("a,label\n1,0\n2\n")
    with pytest.raises(ConfigError, match="line 3 has 1 fields"):
        load_dataset(f"csv:{tmp_path / 'ragged.csv'}")


def test_csv_saved_without_its_header_or_with_only_its_label_is_named_as_such(tmp_path):
    rows = "".join(f"{i * 0.5},{-i},{i % 2}\n" for i in range(30))
    (tmp_path / "bare.csv").write_text(rows)  # as np.savetxt or to_csv(header=False) write it
    with pytest.raises(ConfigError, match="seems to have no header line: its first line holds only numbers") as error:
        load_dataset(f"csv:{tmp_path / 'bare.csv'}")
    assert error.value.field == "label_column"
    # columns named by numbers are names all the same, once the label is one of them
    (tmp_path / "numbered.csv").write_text("1,2,3\n" + rows)
    assert load_dataset(f"csv:{tmp_path / 'numbered.csv'}", label_column="3").num_classes == 2
    (tmp_path / "labels_only.csv").write_text("label\n" + "".join(f"{i % 2}\n" for i in range(30)))
    with pytest.raises(ConfigError, match="has no feature column: the label column is its only column") as error:
        load_dataset(f"csv:{tmp_path / 'labels_only.csv'}")
    assert error.value.field == "dataset"  # not drop_columns, which the person never set


def test_corrupt_image_is_named(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ConfigError, match="broken.png"):
        load_dataset(f"images:{tmp_path}")


def test_paths_outside_allowed_roots_are_refused_even_through_symlinks(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir(), outside.mkdir()
    np.savez(outside / "x.npz", x=np.ones((30, 2), np.float32), y=np.repeat([0, 1, 2], 10))
    (root / "link.npz").symlink_to(outside / "x.npz")
    for uri in (f"npz:{outside / 'x.npz'}", f"npz:{root / 'link.npz'}", f"npz:{root}/../secret/x.npz"):
        with pytest.raises(ConfigError, match="outside the allowed data roots"):
            load_dataset(uri, allowed_roots=[str(root)])


def test_unknown_data_option_is_refused():
    with pytest.raises(ConfigError) as error:
        load_dataset_with_options("digits", {"labelcolumn": "y"}, seed=0)
    assert error.value.field == "data_options.labelcolumn"


def test_parse_dataset_uri():
    assert parse_dataset_uri(" digits ") == ("digits", "")
    assert parse_dataset_uri("npz:/a/b.npz") == ("npz", "/a/b.npz")


def test_a_regression_target_is_refused_with_the_real_reason(tmp_path):
    """A CSV whose label is a measured quantity (house prices, a count) used to fail with 'class(es)
    have fewer than 3 samples'; now the message says what it is, and never quotes a value."""
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{rng.random():.3f},{rng.random():.3f},{100 + 50 * rng.random():.2f}" for _ in range(200)]
    (tmp_path / "prices.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError) as error:
        load_dataset(f"csv:{tmp_path / 'prices.csv'}", allowed_roots=[str(tmp_path)])
    assert "looks like a regression target" in error.value.problem and "fractions" in error.value.problem
    assert rows[1].split(",")[2] not in str(error.value)
    counts = ["a,label"] + [f"{i},{int(v)}" for i, v in enumerate(rng.poisson(40, 200))]  # whole numbers, many rare values
    (tmp_path / "counts.csv").write_text("\n".join(counts) + "\n")
    with pytest.raises(ConfigError, match="distinct values .* looks like a regression target"):
        load_dataset(f"csv:{tmp_path / 'counts.csv'}", allowed_roots=[str(tmp_path)])
    few = ["a,label"] + [f"{i},{i % 4}" for i in range(20)] + ["99,4"]  # 5 classes, one with a single sample: a class problem
    (tmp_path / "few.csv").write_text("\n".join(few) + "\n")
    with pytest.raises(ConfigError, match="1 class\\(es\\) have fewer than 3 samples"):
        load_dataset(f"csv:{tmp_path / 'few.csv'}", allowed_roots=[str(tmp_path)])


def test_many_named_classes_are_never_taken_for_a_regression_target():
    from dlagent.ml.data_checks import validate_arrays

    y = np.concatenate([np.arange(30), np.arange(30), np.arange(5)])  # 30 named classes, 25 with 2 samples
    names = [f"species-{i:02d}" for i in range(30)]
    with pytest.raises(ConfigError, match="25 class\\(es\\) have fewer than 3 samples"):
        validate_arrays(np.zeros((len(y), 2), np.float32), y, names)
    with pytest.raises(ConfigError, match="looks like a regression target"):
        validate_arrays(np.zeros((len(y), 2), np.float32), y, [str(i) for i in range(30)])


def test_an_uncompressed_npz_is_memory_mapped_and_loads_like_a_compressed_one(tmp_path):
    """``np.savez`` stores its arrays uncompressed: x is then mapped from the file, not read whole.
    ``np.savez_compressed`` allows no map. Both give the same data set, digest and split."""
    from dlagent.ml.data_readers import load_arrays

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 5)).astype(np.float32), np.arange(120) % 3
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    np.savez(tmp_path / "fortran.npz", x=np.asfortranarray(x), y=y)
    plain, _, _ = load_arrays(f"npz:{tmp_path / 'plain.npz'}")
    packed, _, _ = load_arrays(f"npz:{tmp_path / 'packed.npz'}")
    fortran, _, _ = load_arrays(f"npz:{tmp_path / 'fortran.npz'}")
    assert isinstance(plain, np.memmap) and isinstance(fortran, np.memmap) and not isinstance(packed, np.memmap)
    np.testing.assert_array_equal(plain, x)
    np.testing.assert_array_equal(packed, x)
    np.testing.assert_array_equal(fortran, x)
    a, b = load_dataset(f"npz:{tmp_path / 'plain.npz'}", seed=4), load_dataset(f"npz:{tmp_path / 'packed.npz'}", seed=4)
    assert a.digest == b.digest and not isinstance(a.x_train, np.memmap)  # the split holds its own rows
    np.testing.assert_array_equal(a.x_test, b.x_test)
    pixels = rng.integers(0, 256, (60, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "pixels.npz", x=pixels, y=np.arange(60) % 2)
    scaled, _, _ = load_arrays(f"npz:{tmp_path / 'pixels.npz'}")
    np.testing.assert_allclose(scaled, pixels / 255.0, rtol=1e-6)


def test_npz_archives_as_other_tools_save_them_read_as_their_x_y_twin(tmp_path):
    """``X``/``y`` (scikit-learn's names), Keras' ``x_train``/``y_train``/``x_test``/``y_test`` (joined,
    then split by the seed like any data set), one-hot labels (``keras.utils.to_categorical``) and
    a column of labels ``(n, 1)`` give the data set, digest and splits of ``np.savez(x=..., y=...)``;
    soft labels (rows that are not one-hot) and an archive without labels are refused."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (90, 6, 6), dtype=np.uint8), np.arange(90) % 3
    np.savez(tmp_path / "twin.npz", x=x, y=y)
    np.savez(tmp_path / "sklearn.npz", X=x, y=y)
    np.savez(tmp_path / "keras.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    np.savez(tmp_path / "one_hot.npz", x=x, y=np.eye(3, dtype=np.float32)[y])
    np.savez(tmp_path / "column.npz", x=x, y=y[:, None])
    twin = load_dataset(f"npz:{tmp_path / 'twin.npz'}", seed=5)
    for name in ("sklearn", "keras", "one_hot", "column"):
        other = load_dataset(f"npz:{tmp_path / name}.npz", seed=5)
        assert other.digest == twin.digest and other.class_names == twin.class_names, name
        np.testing.assert_array_equal(other.x_test, twin.x_test)
        np.testing.assert_array_equal(other.y_train, twin.y_train)
    np.savez(tmp_path / "soft.npz", x=x, y=np.eye(3)[y] * 0.9 + 0.1 / 3)  # label smoothing: not a class per row
    with pytest.raises(ConfigError, match="not one-hot"):
        load_dataset(f"npz:{tmp_path / 'soft.npz'}")
    np.savez(tmp_path / "mixed.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:] / 255.0, y_test=y[60:])  # uint8 beside floats
    with pytest.raises(ConfigError, match="x_train holds uint8 samples of shape \\(6, 6\\), x_test float64"):
        load_dataset(f"npz:{tmp_path / 'mixed.npz'}")
    np.savez(tmp_path / "no_labels.npz", X=x)
    with pytest.raises(ConfigError, match=r"lacks arrays \['y'\]"):
        load_dataset(f"npz:{tmp_path / 'no_labels.npz'}")


def test_a_damaged_or_unusual_npz_member_is_read_as_numpy_would_or_refused(tmp_path):
    """Mapping never reads past a member or skips its checksum: a member whose header promises more
    rows than it holds, or whose bytes were changed, is refused; a member saved without ``.npy``
    is read whole, as ``np.load`` reads it."""
    import io
    import zipfile

    from dlagent.errors import ConfigError
    from dlagent.ml.data_readers import load_arrays

    def npy(array, *, header_shape=None) -> bytes:
        out = io.BytesIO()
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                                                   "shape": header_shape or array.shape})
        return out.getvalue() + array.tobytes()

    x, y = np.full((10, 4), 7.0, np.float32), np.arange(10) % 2
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:  # stored (uncompressed), like np.savez
        archive.writestr("x.npy", npy(x[:5], header_shape=(10, 4)))
        archive.writestr("y.npy", npy(y))
    with pytest.raises(ConfigError, match="cannot read"):
        load_arrays(f"npz:{tmp_path / 'short.npz'}")
    np.savez(tmp_path / "flipped.npz", x=x, y=y)
    raw = bytearray((tmp_path / "flipped.npz").read_bytes())
    raw[raw.index(np.float32(7.0).tobytes() * 4) + 5] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="does not match its checksum"):
        load_arrays(f"npz:{tmp_path / 'flipped.npz'}")
    with zipfile.ZipFile(tmp_path / "bare.npz", "w") as archive:
        archive.writestr("x", npy(x))
        archive.writestr("y.npy", npy(y))
    loaded, _, _ = load_arrays(f"npz:{tmp_path / 'bare.npz'}")
    np.testing.assert_array_equal(loaded, x)
