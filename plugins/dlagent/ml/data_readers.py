"""The data formats, each read into raw arrays ``(x, y, names)``: scikit-learn's digits, MNIST IDX
files, a NumPy ``.npz``, a CSV table (numeric and categorical columns: :mod:`dlagent.ml.csv_table`) and an image folder.

Nothing here splits, scales or validates across formats: :mod:`dlagent.ml.data_checks` checks
every format's arrays the same way. A message about a file names the file, the line or entry and
the kind of problem, never the file's content (no header values, no row contents, no decoded
bytes): a person who can only trigger a DAG must not read a file through its error messages.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from dlagent.errors import ConfigError
from dlagent.ml.csv_table import load_csv_table
from dlagent.ml.data_checks import CLASSIFICATION_FIX, REGRESSION_FIX
from dlagent.ml.data_paths import check_inside_roots, parse_dataset_uri, resolve_data_path
from dlagent.ml.metrics import CLASSIFICATION, REGRESSION


def load_arrays(uri: str, *, label_column: str = "label", allowed_roots: list[str] | None = None, missing: str = "refuse",
                task: str = CLASSIFICATION):
    """Load ``(x, y, names)`` for a data set name, without splitting or scaling (with
    ``missing="impute"`` an empty CSV cell is read as NaN). ``names`` are the class names, or
    for ``task="regression"`` the target names, and ``y`` is then float ``(n, k)``. A CSV's
    categorical column holds codes into its sorted values (:class:`CsvColumns`)."""
    return read_dataset(uri, label_column=label_column, allowed_roots=allowed_roots, missing=missing, task=task)[:3]


def read_dataset(uri: str, *, label_column: str, allowed_roots, missing: str, task: str, cache: str = "memory", drop_columns=()):
    """:func:`load_arrays` plus the CSV's :class:`CsvColumns` (``None`` for other data); a CSV
    read with ``cache`` ``stream`` (or ``auto``, when large) gives ``x`` as a
    :class:`~dlagent.ml.table_rows.TableRows`."""
    scheme, argument = parse_dataset_uri(uri)
    if scheme == "images" and task == REGRESSION:
        raise ConfigError("task", "'images:' data holds one folder per class: class labels, not numeric targets.",
                          "use task 'classification', or give the targets in a csv: or npz: file.")
    if scheme == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.images.astype(np.float32) / 16.0
        y, names = bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]
    else:
        path = resolve_data_path(argument, allowed_roots=allowed_roots)
        if scheme == "csv":
            return load_csv_table(path, label_column, missing, task, cache, drop_columns)
        if scheme == "npz":
            return (*_load_npz(path, task), None)
        if scheme == "mnist-idx":
            x, y, names = _load_mnist_idx(path, allowed_roots)
        else:
            return (*_load_image_folder(path, allowed_roots), None)
    return ((x, *targets_from_values(y, ["target"])) if task == REGRESSION else (x, y, names)) + (None,)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:  # e.g. BadGzipFile, whose message quotes the file's first bytes
        raise ConfigError("dataset", f"cannot read IDX file {str(path)!r} ({type(exc).__name__}: unreadable or not gzip).",
                          "re-copy the file.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError("dataset", f"{str(path)!r} is not an unsigned-byte IDX file.", "give MNIST-format IDX files.")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ConfigError("dataset", f"{str(path)!r} is truncated: {len(raw) - offset} bytes for shape {dims}.", "re-copy the file.")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _find_one(directory: Path, pattern: str, allowed_roots=None) -> Path:
    matches = sorted(directory.glob(pattern))
    if not matches:
        raise ConfigError("dataset", f"no file matching {pattern!r} in {str(directory)!r}.", "point mnist-idx: at a folder with IDX files.")
    return check_inside_roots(matches[0], allowed_roots)


def _load_mnist_idx(directory: Path, allowed_roots=None):
    if not directory.is_dir():
        raise ConfigError("dataset", f"mnist-idx needs a folder, got file {str(directory)!r}.", "give the folder holding the IDX files.")
    images = _read_idx(_find_one(directory, "*images-idx3-ubyte*", allowed_roots))
    labels = _read_idx(_find_one(directory, "*labels-idx1-ubyte*", allowed_roots))
    return images.astype(np.float32) / 255.0, labels.astype(np.int64), [str(i) for i in range(int(labels.max()) + 1)]


def _load_npz(path: Path, task: str = CLASSIFICATION):
    import zipfile

    fix = "save it with np.savez(path, x=..., y=...) (or X, y; or Keras' x_train, y_train, x_test, y_test)."
    if not path.is_file():
        raise ConfigError("dataset", f"npz: needs a file, got folder {str(path)!r}.", fix)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ConfigError("dataset", f"{str(path)!r} holds a single array (.npy), not an .npz archive of x and y.", fix)
            x, y = _npz_arrays(path, archive, fix)
    except ConfigError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # empty or truncated files, pickled objects (refused: allow_pickle=False), not a zip at all
        if "allow_pickle" in str(exc):
            raise ConfigError("dataset", f"{str(path)!r} holds object arrays, which only pickle can load; pickle is never loaded "
                              "(a pickle can run code).", "store x and y as numeric (or string label) arrays.") from exc
        raise ConfigError("dataset", f"cannot read {str(path)!r} as .npz ({type(exc).__name__}: empty, truncated or not an npz archive).",
                          fix) from exc
    except TypeError as exc:  # np.load of a plain .npy returns an array, which is not a context manager
        raise ConfigError("dataset", f"{str(path)!r} holds a single array (.npy), not an .npz archive of x and y.", fix) from exc
    if not np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
        raise ConfigError("dataset", f"x in {str(path)!r} has dtype {x.dtype}, not numeric.", "store features as numbers.")
    # 8-bit images are scaled like the other image loaders; other numbers are kept as given (a
    # memory-mapped float32 x stays mapped: the split reads the rows it needs from the file).
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
    if task == REGRESSION:
        return (x, *targets_from_values(y, None))
    y, names = labels_from_values(y)
    return x, y, names


#: Keras' own archives (``keras.datasets.mnist``'s ``mnist.npz``): the features and labels in a train and a test part
KERAS_NPZ = ("x_train", "y_train", "x_test", "y_test")


def _npz_arrays(path: Path, archive, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of an archive holding ``x`` and ``y`` (``X`` and ``Y`` too, as scikit-learn
    names them), or Keras' ``x_train``, ``y_train``, ``x_test``, ``y_test``: the two parts are
    joined (train first) and split again like any data set, by the seed and the split fractions,
    so the deploy gate compares every model on splits made the same way. The two parts of ``x``
    are each mapped when stored uncompressed and copied once into the joined array (not mapped:
    the joined rows are not in the file in one piece)."""
    files = set(archive.files)
    names = [next((n for n in (lower, lower.upper()) if n in files), None) for lower in ("x", "y")]
    if None not in names:
        return _mapped_member(path, archive, names[0]), archive[names[1]]
    if set(KERAS_NPZ) <= files:
        import logging

        logging.getLogger(__name__).info("%s: Keras' layout; x_train and x_test joined, to be split by the seed and fractions", path.name)
        return _joined(path, [_mapped_member(path, archive, "x_train"), _mapped_member(path, archive, "x_test")], "x"), \
            _joined(path, [archive["y_train"], archive["y_test"]], "y")
    missing = ["x", "y"] if names == [None, None] else [("x", "y")[names.index(None)]]
    raise ConfigError("dataset", f"{str(path)!r} lacks arrays {missing} ({len(files)} other arrays in it).", fix)


def _joined(path: Path, parts: list[np.ndarray], name: str) -> np.ndarray:
    """``{name}_train`` and ``{name}_test`` as one array; refused when their samples differ in shape,
    or, for the features, in dtype (8-bit pixels beside floats would not be scaled alike)."""
    train, test = parts
    if train.shape[1:] != test.shape[1:] or (name == "x" and train.dtype != test.dtype):
        raise ConfigError("dataset", f"{str(path)!r}: {name}_train holds {train.dtype} samples of shape {train.shape[1:]}, "
                          f"{name}_test {test.dtype} samples of shape {test.shape[1:]}; joined they must be alike.",
                          f"save {name}_train and {name}_test with the same dtype and sample shape.")
    return np.concatenate(parts)


def _mapped_member(path: Path, archive, name: str) -> np.ndarray:
    """Array ``name`` of an ``.npz``: memory-mapped (read-only) when the archive stores it
    uncompressed (``np.savez``), so its bytes are read from the file as they are used instead of
    all at once; read whole when it is compressed (``np.savez_compressed``: the format allows no
    map) or holds objects (refused by the caller, as ``allow_pickle=False`` does)."""
    import struct
    import zipfile

    try:
        info = archive.zip.getinfo(f"{name}.npy")
    except KeyError:  # a member saved without the .npy suffix: np.load reads it whole
        return archive[name]
    if info.compress_type != zipfile.ZIP_STORED:
        return archive[name]
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)  # the zip local file header: its name and extra field come next
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return archive[name]
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
    member_start = info.header_offset + 30 + name_length + extra_length
    if dtype.hasobject or not shape or 0 in shape or offset - member_start + dtype.itemsize * math.prod(shape) != info.file_size:
        return archive[name]  # objects (refused later), empty, or a member whose header and size disagree: np.load decides
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")
    if _member_crc(path, member_start, info.file_size) != info.CRC:
        raise ConfigError("dataset", f"{str(path)!r}: array {name!r} does not match its checksum (the file is damaged).", "re-copy the file.")
    return mapped


def _member_crc(path: Path, start: int, size: int, chunk: int = 16 * 2**20) -> int:
    """The CRC-32 of ``size`` bytes of ``path`` from ``start``, read a chunk at a time (what
    ``zipfile`` checks when it reads a member whole)."""
    import zlib

    crc = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        while size > 0:
            block = handle.read(min(chunk, size))
            if not block:
                break
            crc, size = zlib.crc32(block, crc), size - len(block)
    return crc


def targets_from_values(values, names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Regression targets as float32 ``(n, k)`` and their names (``target``, ``target_1``... when unnamed)."""
    values = np.asarray(values)
    if values.ndim not in (1, 2):
        raise ConfigError("dataset", f"regression targets must be (samples,) or (samples, targets), got shape {values.shape}.",
                          "give one row of target values per sample.")
    if not (np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_):
        raise ConfigError("dataset", f"regression targets must be numbers, got {values.dtype} values: these look like class labels.",
                          CLASSIFICATION_FIX)
    y = values.astype(np.float32).reshape(len(values), -1)
    if names is None or len(names) != y.shape[1]:
        names = ["target"] if y.shape[1] == 1 else [f"target_{i}" for i in range(y.shape[1])]
    return y, list(names)


def labels_from_values(values) -> tuple[np.ndarray, list[str]]:
    """Integer labels stay as they are (range checked later); strings become sorted indices. A
    column of labels ``(n, 1)`` is read as ``(n,)``, and one-hot rows (``keras.utils.to_categorical``'s
    form: a single 1 per row, zeros elsewhere) as the index of their 1."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    elif is_one_hot(values):
        values = values.argmax(axis=1)
    if values.ndim != 1:
        raise ConfigError("dataset", f"labels must be one per sample, got shape {values.shape} whose rows are not one-hot (a "
                          "single 1, zeros elsewhere).", "give one label per sample (integers 0..K-1 or names), or one-hot rows.")
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64), [str(i) for i in range(int(values.max()) + 1 if values.size else 0)]
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise ConfigError("dataset", "labels must be whole numbers; found NaN or inf.", "give integer class labels 0..K-1.")
        if not np.all(values == np.round(values)):
            raise ConfigError("dataset", f"labels must be whole numbers, but {int((values != np.round(values)).sum())} of them have "
                              "fractions: this looks like a regression target (a measured quantity), not class labels.",
                              REGRESSION_FIX)
        return values.astype(np.int64), [str(i) for i in range(int(values.max()) + 1 if values.size else 0)]
    names = sorted({str(v) for v in values})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int64), names


def is_one_hot(values: np.ndarray) -> bool:
    """Rows of at least two numbers (or booleans), each a single 1 among zeros."""
    return (values.ndim == 2 and values.shape[1] >= 2 and len(values) > 0
            and (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_)
            and bool(np.isin(values, (0, 1)).all()) and bool((values.sum(axis=1) == 1).all()))


def _load_image_folder(directory: Path, allowed_roots=None):
    from dlagent.ml.streaming import scan_image_folder, sized

    return decode_images(sized(scan_image_folder(directory, allowed_roots), None))


def decode_images(scanned):
    """The scanned files' pixels in memory, float32 in [0, 1], every image in the scan's size and
    channels (:func:`dlagent.ml.streaming.sized`: by default the first image's size, at most 256 on
    its longer side, and RGB unless every image is grayscale). 8-bit PNG and JPEG go through the streaming decoder
    (:class:`dlagent.ml.streaming.ImageFiles`), so a folder has the same pixels whether it is
    held in memory or streamed; other formats (TIFF, WebP, BMP, GIF, 16-bit) through Pillow."""
    import warnings

    from dlagent.ml.streaming import ImageFiles

    if scanned.streamable():
        return ImageFiles(scanned.paths, scanned.size, scanned.channels)[:], scanned.labels, scanned.class_names

    from PIL import Image

    from dlagent.ml.streaming import WIDE_MODES, _image_errors

    mode, size = ("L" if scanned.channels == 1 else "RGB"), (scanned.size[1], scanned.size[0])
    images = np.empty((len(scanned.paths), scanned.size[0], scanned.size[1], *(() if mode == "L" else (3,))), np.float32)
    for i, file in enumerate(scanned.paths):
        with _image_errors(file), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                img.load()
                if img.mode in WIDE_MODES:
                    images[i] = _wide_pixels(img, size, mode)
                    continue
                img = img.convert(mode)
                images[i] = np.asarray(img if img.size == size else img.resize(size), dtype=np.float32) / 255.0
    return images, scanned.labels, scanned.class_names


def _wide_pixels(img, size: tuple[int, int], mode: str) -> np.ndarray:
    """A 16- or 32-bit single-channel image (Pillow's ``I;16``, ``I``, ``F``: medical scans,
    microscopy, depth maps) at its full depth: integers divided by 65,535 (16-bit pixels in [0, 1];
    a 32-bit value past 65,535 lands above 1), floats as stored. Pillow's ``convert("L")`` would
    clip every value above 255, and a 16-bit image would come out nearly all white. Values outside
    [0, 1] are standardised by the image models themselves (:func:`dlagent.ml.models.pixel_statistics`);
    as RGB the one channel is repeated, as Pillow does for 8-bit grey."""
    wide = img.convert("F") if img.mode != "F" else img
    wide = wide if wide.size == size else wide.resize(size)
    pixels = np.asarray(wide, dtype=np.float32) / (1.0 if img.mode == "F" else 65535.0)
    return pixels if mode == "L" else np.repeat(pixels[..., None], 3, axis=-1)
