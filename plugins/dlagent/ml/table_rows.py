"""A CSV table larger than memory: its loaded rows in a scratch file, read a chunk at a time.

When a ``csv:`` table is streamed (the data option ``cache``: ``stream``, or ``auto`` with more
float32 features than :data:`dlagent.ml.streaming.CACHE_BUDGET_BYTES`), the CSV reader's second
pass writes each chunk of loaded rows (numbers, category codes, NaN for an empty cell) to a
:class:`RowStore` instead of an array. The store is an anonymous temporary file (``TMPDIR``,
4 bytes a cell): it has no name on disk, so it goes away when the task process ends, however it
ends. It is read with ``pread`` into small buffers, not memory-mapped: mapped pages would count
in the task's resident memory.

Each split is a :class:`TableRows`: an array-like of the split's rows, in file order, with the
shape and dtype of the model's inputs. Indexing (``x[i]``, ``x[i:j]``, ``x[[...]]``) reads and
encodes only those rows; :meth:`TableRows.dataset` streams them all through ``tf.data``, the
shuffle being by blocks (see :data:`BLOCK_ROWS`) so memory stays at about one window of rows.

Nothing here imports TensorFlow at module level.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import weakref
from collections.abc import Callable

import numpy as np

SPAN_BYTES = 2**20  # bytes of the file one pread reads at most (whole rows; at least one)
BLOCK_ROWS = 512  # consecutive rows of a split that stay together when an epoch is shuffled
WINDOW_BLOCKS = 64  # blocks read, mixed and shuffled together: a window of 32,768 rows...
WINDOW_BYTES = 16 * 2**20  # ...or fewer, when that many encoded rows would be larger than this
CHUNK_BYTES = 8 * 2**20  # encoded rows a statistic reads at once (iter_chunks)


class RowStore:
    """The loaded float32 rows of a table, appended in chunks to an anonymous scratch file.

    ``recode`` maps a categorical column to the array that turns a code in file order of first
    sight into its code in the sorted vocabulary (the reader learns the sorted order only at the
    end of its pass); it is applied to every row read."""

    def __init__(self, width: int):
        self.width = int(width)
        self.rows = 0
        self.recode: dict[int, np.ndarray] = {}
        self._file = tempfile.TemporaryFile(prefix="dlagent-table-")

    @property
    def row_bytes(self) -> int:
        return self.width * 4

    def append(self, chunk) -> None:
        chunk = np.ascontiguousarray(chunk, np.float32).reshape(-1, self.width)
        self._file.write(chunk.tobytes())
        self.rows += len(chunk)

    def finish(self) -> None:
        self._file.flush()

    def read(self, rows) -> np.ndarray:
        """The loaded rows at file positions ``rows`` (any order), a span of nearby rows per read."""
        rows = np.asarray(rows, np.int64).ravel()
        out = np.empty((len(rows), self.width), np.float32)
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        if len(wanted) and (wanted[0] < 0 or wanted[-1] >= self.rows):
            raise IndexError(f"row {wanted[0] if wanted[0] < 0 else wanted[-1]} is outside the table's {self.rows} rows")
        start = 0
        while start < len(wanted):
            first = int(wanted[start])
            end = int(np.searchsorted(wanted, first + max(1, SPAN_BYTES // self.row_bytes), side="left"))
            last = int(wanted[end - 1])
            size = (last - first + 1) * self.row_bytes
            raw = os.pread(self._file.fileno(), size, first * self.row_bytes)
            if len(raw) != size:
                raise OSError(f"the table's scratch file is short: {len(raw)} of {size} bytes at row {first}")
            block = np.frombuffer(raw, np.float32).reshape(-1, self.width)
            out[order[start:end]] = block[wanted[start:end] - first]
            start = end
        for column, recode in self.recode.items():
            values = out[:, column]
            known = ~np.isnan(values)
            values[known] = recode[values[known].astype(np.int64)]
        return out


class TableRows:
    """A split of a streamed table: the store's rows at ``positions``, as model inputs.

    ``encode(loaded, positions)`` turns a chunk of loaded rows (at those file positions) into the
    model's ``width`` input columns (the one-hot encoding of categorical columns,
    :meth:`dlagent.ml.tabular.TableEncoding.encode_loaded`);
    without it the rows are the loaded values themselves (what :class:`~dlagent.ml.csv_table.RawRows`
    and the content digest read)."""

    dtype = np.dtype(np.float32)

    def __init__(self, store: RowStore, positions, encode: Callable | None = None, width: int | None = None):
        self.store = store
        self.positions = np.asarray(positions, np.int64).ravel()
        self.encode, self.width = encode, int(width if width is not None else store.width)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.positions), self.width)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, indices) -> TableRows:
        """The rows at ``indices`` (integer positions in this split, or a boolean mask)."""
        return TableRows(self.store, self.positions[_as_indices(indices, len(self))], self.encode, self.width)

    def encoded(self, encode: Callable, width: int) -> TableRows:
        """The same rows through another encoding: ``encode(loaded, positions)`` takes loaded rows and
        their positions in the file (to name a row an error is about)."""
        return TableRows(self.store, self.positions, encode, width)

    def __getitem__(self, index):
        if isinstance(index, np.ndarray) and index.ndim == 0:
            index = index.item()
        if isinstance(index, (int, np.integer)):
            return self[[int(index)]][0]
        if isinstance(index, tuple):
            raise TypeError("index table rows with an integer, a slice, integers or a boolean mask (one axis), not a tuple")
        picked = self.positions[index] if isinstance(index, slice) else self.positions[_as_indices(index, len(self))]
        return self._rows(picked)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"a streamed table of {len(self)} rows is not turned into one array implicitly: read it in slices "
                        "(x[i:j]), or load the data set with cache 'memory'")

    def _rows(self, positions) -> np.ndarray:
        loaded = self.store.read(positions)
        return np.asarray(self.encode(loaded, positions), np.float32) if self.encode is not None else loaded

    def dataset(self, labels=None, *, batch_size: int = 32, shuffle_seed: int | None = None):
        """A ``tf.data`` pipeline of ``(rows, label)`` batches (rows alone without labels).

        With ``shuffle_seed`` every epoch takes the split's blocks of :data:`BLOCK_ROWS`
        consecutive rows in a new seeded order, reads :data:`WINDOW_BLOCKS` of them at a time
        and shuffles the rows of that window: each batch mixes rows from across the file, and
        memory holds one window, not the split."""
        import tensorflow as tf

        labels = None if labels is None else np.asarray(labels)
        epochs = itertools.count()
        width, size = self.width, len(self)
        table = weakref.ref(self)  # tf.data keeps the generator for the process's life: it must not keep the scratch file open

        def windows():
            rows_of = table()
            if rows_of is None:
                raise RuntimeError("the streamed table behind this tf.data pipeline was released; keep its split while the pipeline runs")
            if shuffle_seed is None:
                order = np.arange(size)
                rng = None
            else:
                rng = np.random.default_rng([int(shuffle_seed), next(epochs)])
                blocks = np.arange(0, size, BLOCK_ROWS)
                order = np.concatenate([np.arange(b, min(b + BLOCK_ROWS, size)) for b in rng.permutation(blocks)] or [np.arange(0)])
            window = min(BLOCK_ROWS * WINDOW_BLOCKS, WINDOW_BYTES // (4 * width))
            window = max(1, window // batch_size) * batch_size  # whole batches: only the last is short
            for start in range(0, len(order), window):
                picked = order[start:start + window]
                if rng is not None:
                    picked = picked[rng.permutation(len(picked))]
                rows = rows_of._rows(rows_of.positions[picked])
                for b in range(0, len(picked), batch_size):
                    if labels is None:
                        yield rows[b:b + batch_size]
                    else:
                        yield rows[b:b + batch_size], labels[picked[b:b + batch_size]]

        row_spec = tf.TensorSpec((None, width), tf.float32)
        signature = row_spec if labels is None else (row_spec, tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype)))
        batches = -(-size // batch_size)
        data = tf.data.Dataset.from_generator(windows, output_signature=signature)
        return data.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(2)

    def first_unreadable(self) -> str | None:
        """Always ``None``: the scratch file was checked as it was written and nobody else can open it."""
        return None


def _as_indices(indices, length: int) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.dtype == np.bool_:
        if indices.shape != (length,):
            raise IndexError(f"a boolean mask of shape {indices.shape} for {length} rows")
        return np.flatnonzero(indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"index table rows with integers or a boolean mask, not {indices.dtype}")
    return indices.astype(np.int64).ravel()


def iter_chunks(x, size: int | None = None):
    """``x`` (an array or :class:`TableRows`) ``size`` rows at a time (by default about
    :data:`CHUNK_BYTES` of float32 rows: a one-hot encoding can make a row wide)."""
    size = size or max(256, CHUNK_BYTES // max(1, 4 * int(np.prod(x.shape[1:]))))
    for start in range(0, len(x), size):
        yield x[start:start + size]
