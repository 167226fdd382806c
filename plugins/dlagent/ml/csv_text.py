"""A CSV file as text: its separator, its header, its data rows with their line numbers, and the
errors of reading it, named for a person (:mod:`dlagent.ml.csv_table` reads the table from these).

A file compressed with gzip (``table.csv.gz``, as pandas and most exporters write and read it) is
read through ``gzip`` as it streams, known by its first two bytes, not its name.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import re
import zlib
from pathlib import Path

from dlagent.errors import ConfigError

DELIMITERS = (",", ";", "\t")  # what :func:`delimiter_of` chooses among, the first on a tie
DECIMAL_COMMA = re.compile(r"\s*[+-]?\d*,\d+(?:[eE][+-]?\d+)?\s*$")  # 1,5  -0,25  ,5  2,0e-3 (never 1,234,567)
GZIP_MAGIC = b"\x1f\x8b"
#: The longest line read (characters): 100,000 columns of 40 characters fit. What is longer is no
#: table a person wrote, and a line is held whole before it is split: a few hundred kilobytes of
#: gzip can hold a line of gigabytes (a decompression bomb), which would be read into memory.
MAX_LINE_CHARS = 4_000_000


def open_text(path: Path):
    """The file as UTF-8 text (a byte-order mark skipped) for ``csv``: decompressed as it is read
    when it starts as gzip does."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
    if compressed:
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")


@contextlib.contextmanager
def csv_errors(path: Path):
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ConfigError("dataset", f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}).",
                          "save the CSV as UTF-8 text (a binary or other-encoding file cannot be read).") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # their messages may quote the file's bytes: not repeated
        raise ConfigError("dataset", f"{str(path)!r} is a damaged gzip file (truncated or corrupted).",
                          "compress the CSV again (gzip), or give it uncompressed.") from exc
    except csv.Error as exc:
        raise ConfigError("dataset", f"{str(path)!r} is not a readable CSV ({type(exc).__name__}).",
                          "save it as plain comma-separated text.") from exc


def delimiter_of(path: Path) -> str:
    """The file's column separator, read off its header line: of a comma, a semicolon (a
    spreadsheet saved where the comma is the decimal mark) and a tab, the one that splits the
    header into the most columns, quotes respected (``"price, EUR";qty``: a semicolon); the first
    of them on a tie, so a header of one column reads as comma-separated (and is refused later:
    it leaves no feature)."""
    with open_text(path) as handle:
        header = next(_lines(path, handle), "")
    return max(DELIMITERS, key=lambda mark: len(next(csv.reader([header], delimiter=mark), [])))


def rows(path: Path, delimiter: str):
    """``(line number, row)`` of the data rows (blank lines skipped), after the header. In a
    semicolon-separated file a number may carry a decimal comma (``1,5``): it reads as ``1.5``."""
    with open_text(path) as handle:
        reader = csv.reader(_lines(path, handle), delimiter=delimiter)
        next(reader, None)
        for row in reader:
            if row:
                if delimiter == ";":
                    row = [cell.replace(",", ".") if DECIMAL_COMMA.match(cell) else cell for cell in row]
                yield reader.line_num, row


def read_header(path: Path, delimiter: str) -> list[str]:
    with open_text(path) as handle:
        first = next(csv.reader(_lines(path, handle), delimiter=delimiter), None)
    if first is None:
        raise ConfigError("dataset", f"{str(path)!r} is empty.", "give a CSV with a header row and data rows.")
    return [h.strip() for h in first]


def _lines(path: Path, handle):
    """The file's lines, each at most :data:`MAX_LINE_CHARS` long: a longer one is refused before
    it is held whole."""
    while line := handle.readline(MAX_LINE_CHARS + 1):
        if len(line) > MAX_LINE_CHARS:
            raise ConfigError("dataset", f"{str(path)!r} has a line of more than {MAX_LINE_CHARS:,} characters: no table's row "
                              "is that long (a file with no line breaks, or a decompression bomb).",
                              "give a CSV with one row per line.")
        yield line
