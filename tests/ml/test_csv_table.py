"""The CSV reader's two streaming passes give what pandas reads from the same file, across chunk
boundaries: numbers, categorical codes into the sorted vocabulary, empty cells, labels."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml import csv_table, csv_text
from dlagent.ml.data_readers import load_arrays


def _write(path, rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    colours, cities = ["red", "green", "blue", "teal"], [f"city {i}" for i in range(9)]
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["area", "colour", "ratio", "city", "label"])
        for i in range(rows):
            area = "" if i % 17 == 3 else f"{rng.normal(2000, 500):.3f}"
            colour = "" if i % 23 == 5 else colours[rng.integers(0, 4)]
            city = cities[rng.integers(0, 9)] if i % 11 else "42"  # a number in a categorical column is a category
            out.writerow([area, colour, f"{rng.random():.5f}", city, ["yes", "no", "maybe"][i % 3]])
            if i % 50 == 7:
                out.writerow([])  # blank lines are skipped
    return path


@pytest.mark.parametrize("chunk_rows", [1, 7, 8192])
def test_two_streaming_passes_read_what_pandas_reads(tmp_path, monkeypatch, chunk_rows):
    import pandas as pd

    monkeypatch.setattr(csv_table, "CHUNK_ROWS", chunk_rows)
    path = _write(tmp_path / "t.csv", rows=300)
    x, y, names = load_arrays(f"csv:{path}", missing="impute")
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)  # every cell as its text
    assert x.shape == (300, 4) and x.dtype == np.float32
    for j, column in ((0, "area"), (2, "ratio")):
        expected = np.array([float(t) if t else np.nan for t in frame[column]], np.float32)
        np.testing.assert_array_equal(x[:, j], expected)
    for j, column in ((1, "colour"), (3, "city")):
        vocabulary = sorted({t for t in frame[column] if t})
        expected = np.array([vocabulary.index(t) if t else np.nan for t in frame[column]], np.float32)
        np.testing.assert_array_equal(x[:, j], expected)
    assert names == ["maybe", "no", "yes"]
    np.testing.assert_array_equal(y, [names.index(t) for t in frame["label"]])


def test_whole_number_labels_are_classes_in_their_order_and_fractions_are_refused_as_a_regression_target(tmp_path):
    """Labels 0..K-1 stay as they are; a few other whole numbers (classes 1, 2, 3 as many tables
    number them; -1 and 1; 1000 and 1005) are classes in their numeric order, named by them (they
    were refused: class 0 had no rows); more than 20 stay numbers, so a count given as a label is
    still refused as a regression target."""
    path = tmp_path / "n.csv"
    path.write_text("f,label\n" + "".join(f"{i},{i % 3}\n" for i in range(30)))
    x, y, names = load_arrays(f"csv:{path}")
    np.testing.assert_array_equal(y, [i % 3 for i in range(30)])
    assert names == ["0", "1", "2"]
    for labels, expected in (([1, 2, 3], ["1", "2", "3"]), ([-1, 1], ["-1", "1"]), (["1005", "1000.0"], ["1000", "1005"])):
        path.write_text("f,label\n" + "".join(f"{i},{labels[i % len(labels)]}\n" for i in range(30)))
        x, y, names = load_arrays(f"csv:{path}")
        assert names == expected and [names[k] for k in y[:len(labels)]] == [str(int(float(v))) for v in labels]
    from dlagent.ml.data import load_dataset

    path.write_text("f,label\n" + "".join(f"{i},{18 + (i * 7) % 60}\n" for i in range(60)))  # ages: 60 values from 18 on
    with pytest.raises(ConfigError, match="looks like a regression target"):
        load_dataset(f"csv:{path}")
    path.write_text("f,label\n" + "".join(f"{i},{i / 7:.3f}\n" for i in range(30)))
    with pytest.raises(ConfigError, match="looks like a regression target"):
        load_arrays(f"csv:{path}")
    x, y, names = load_arrays(f"csv:{path}", task="regression")
    assert y.shape == (30, 1) and y[8, 0] == pytest.approx(8 / 7, abs=1e-3) and names == ["label"]


def test_an_empty_target_is_refused_at_its_real_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("f,y\n1,2.5\n\n2,3.5\n3,\n")  # the blank line 3 still counts: the empty target is on line 5
    with pytest.raises(ConfigError, match="line 5, target column 'y' is empty"):
        load_arrays(f"csv:{path}", label_column="y", task="regression")


@pytest.mark.parametrize("impute", [True, False])
def test_the_loaders_array_encoding_equals_the_servers_row_encoding(tmp_path, monkeypatch, impute):
    """``encode_loaded`` (the loader, on the array) and ``encode`` (a server, on raw rows) agree,
    out-of-vocabulary values (a vocabulary cut to 3), empty cells and indicators included."""
    from dlagent.ml import tabular
    from dlagent.ml.csv_table import RawRows
    from dlagent.ml.data_readers import read_dataset

    monkeypatch.setattr(tabular, "MAX_VOCABULARY", 3)
    path = _write(tmp_path / "t.csv", rows=400, seed=3)
    if not impute:  # no empty cells: 'refuse' would refuse them
        path.write_text("\n".join(line.replace(",,", ",0,") for line in path.read_text().splitlines()
                                  if not line.startswith(",") and ",," not in line) + "\n")
    x, _, _, columns = read_dataset(f"csv:{path}", label_column="label", allowed_roots=None,
                                    missing="impute" if impute else "refuse", task="classification")
    encoding = tabular.fit_encoding_from_counts(columns.names, columns.category_counts(x[:250]), impute)
    raw_values = {columns.names[j]: [row[j] for row in RawRows(x[:250], columns)] for j in columns.categories}
    assert encoding == tabular.fit_encoding(columns.names, raw_values, impute)  # counted in chunks == from the raw values
    assert any(len(v) == 3 for v in encoding.vocabularies.values()) and (bool(encoding.indicators) == impute)
    rows = RawRows(x, columns)
    assert len(rows) == len(x) and rows[-1] == list(rows)[-1] and rows[2:4] == [rows[2], rows[3]]
    np.testing.assert_array_equal(encoding.encode_loaded(x, columns.categories), encoding.encode(list(rows)))


@pytest.mark.parametrize("change", ["shorter", "longer", "word_in_numbers"])
def test_a_file_that_changes_between_the_two_passes_is_refused_not_misread(tmp_path, monkeypatch, change):
    """The second pass must see the rows the first pass counted and typed: a file appended to,
    cut or rewritten in between is refused naming the file (never uninitialised rows, never a
    cell's content in the message)."""
    path = tmp_path / "t.csv"
    path.write_text("f,label\n" + "".join(f"{i}.5,{i % 2}\n" for i in range(6)))
    first_pass = csv_table._first_pass

    def then_rewrite(*args, **kwargs):
        layout = first_pass(*args, **kwargs)
        rows = {"shorter": ["1.5,0", "2.5,1"], "longer": [f"{i}.5,{i % 2}" for i in range(9)],
                "word_in_numbers": ["1.5,0", "2.5,1", "secret,0", "4.5,1", "5.5,0", "6.5,1"]}[change]
        path.write_text("f,label\n" + "\n".join(rows) + "\n")
        return layout

    monkeypatch.setattr(csv_table, "_first_pass", then_rewrite)
    with pytest.raises(ConfigError, match="changed while it was read") as refused:
        load_arrays(f"csv:{path}")
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_a_gzip_compressed_csv_reads_as_its_plain_twin(tmp_path, cache):
    """``table.csv.gz`` (pandas writes and reads it so) is decompressed as it streams, known by its
    first bytes, whatever its name: the same rows, digest and splits as the plain file; a damaged
    one is refused, naming gzip."""
    import gzip

    from dlagent.ml.data import load_dataset

    plain = _write(tmp_path / "t.csv", rows=300)
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "named_plainly.csv").write_bytes((tmp_path / "t.csv.gz").read_bytes())
    twin = load_dataset(f"csv:{plain}", seed=3, missing="impute", cache=cache)
    for name in ("t.csv.gz", "named_plainly.csv"):
        read = load_dataset(f"csv:{tmp_path / name}", seed=3, missing="impute", cache=cache)
        assert read.digest == twin.digest and read.class_names == twin.class_names
        np.testing.assert_array_equal(read.x_test[:], twin.x_test[:])
        np.testing.assert_array_equal(read.y_train, twin.y_train)
    (tmp_path / "cut.csv.gz").write_bytes((tmp_path / "t.csv.gz").read_bytes()[:-40])
    with pytest.raises(ConfigError, match="damaged gzip file"):
        load_dataset(f"csv:{tmp_path / 'cut.csv.gz'}", missing="impute")
    # 40 KB of gzip that would be one 4 MB line (a bomb's ratio): refused before the line is held whole
    (tmp_path / "bomb.csv.gz").write_bytes(gzip.compress(b"a,label\n" + b"1," * 2_000_001, compresslevel=9))
    assert (tmp_path / "bomb.csv.gz").stat().st_size < 50_000
    with pytest.raises(ConfigError, match="a line of more than 4,000,000 characters"):
        load_dataset(f"csv:{tmp_path / 'bomb.csv.gz'}")


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_semicolon_or_tab_separated_file_reads_as_its_comma_separated_twin(tmp_path, separator):
    """The separator is read off the header line; in a semicolon file a decimal comma (a
    spreadsheet saved where the comma is the decimal mark) is a decimal point, and a word with
    a comma in it stays a word."""
    path = _write(tmp_path / "t.csv", rows=120)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    twin = tmp_path / "twin.csv"
    with open(twin, "w", newline="") as handle:
        out = csv.writer(handle, delimiter=separator)
        for i, row in enumerate(rows):
            if separator == ";" and i and row:
                row = [cell.replace(".", ",") if cell.replace(".", "", 1).isdigit() else cell for cell in row]
                row[3] = f"{row[3]}, north" if row[3].startswith("city") else row[3]
            out.writerow(row)
    assert csv_text.delimiter_of(twin) == separator
    quoted = tmp_path / "quoted.csv"
    quoted.write_text(f'"price, EUR"{separator}qty{separator}label\n1{separator}2{separator}yes\n')
    assert csv_text.delimiter_of(quoted) == separator  # the comma inside quotes is part of a name
    x, y, names = load_arrays(f"csv:{path}", missing="impute")
    x_twin, y_twin, names_twin = load_arrays(f"csv:{twin}", missing="impute")
    np.testing.assert_array_equal(x_twin, x)  # the city codes too: ", north" on every city keeps their order
    np.testing.assert_array_equal(y_twin, y)
    assert names_twin == names


def _marked_table(path, marks: list[str]):
    """A numeric column with ``marks`` on every 7th row (line 2 + 7k), a categorical column where
    "None" is a value, and its twin with those cells empty."""
    twin = path.with_name("blank.csv")
    with open(path, "w", newline="") as handle, open(twin, "w", newline="") as blank:
        out, out_blank = csv.writer(handle), csv.writer(blank)
        for writer in (out, out_blank):
            writer.writerow(["size", "heating", "label"])
        for i in range(140):
            mark = marks[i // 7 % len(marks)] if i % 7 == 0 else None
            heating = ["gas", "None", "electric"][i % 3]
            out.writerow([mark if mark else f"{i * 0.37:.2f}", heating, "ab"[i % 2]])
            out_blank.writerow(["" if mark else f"{i * 0.37:.2f}", heating, "ab"[i % 2]])
    return path, twin


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_a_missing_value_mark_in_a_column_of_numbers_is_an_empty_cell(tmp_path, cache):
    """NA, N/A, null, None, ? (the marks pandas reads as missing, and the UCI archive's) in a
    column of numbers read as the same file with those cells empty: refused under ``missing:
    refuse`` at the first one's line, imputed under ``impute``; a server reads them the same way.
    In a categorical column "None" stays a value; an empty regression target by another name is
    refused as empty."""
    from dlagent.ml.data_readers import read_dataset

    path, twin = _marked_table(tmp_path / "marked.csv", ["NA", "n/a", "null", "None", "?", "#N/A", "NaN"])
    with pytest.raises(ConfigError, match="line 2, column 1: a missing-value mark .* in a column of numbers, an empty cell") as refused:
        load_arrays(f"csv:{path}")
    assert "missing to 'impute'" in str(refused.value)

    def read(p):
        x, y, names, columns = read_dataset(f"csv:{p}", label_column="label", allowed_roots=None, missing="impute",
                                            task="classification", cache=cache)
        return np.asarray(x[:]), y, columns

    x, y, columns = read(path)
    x_twin, y_twin, _ = read(twin)
    np.testing.assert_array_equal(x, x_twin)
    np.testing.assert_array_equal(y, y_twin)
    assert int(np.isnan(x[:, 0]).sum()) == 20 and columns.categories[1] == ["None", "electric", "gas"]
    from dlagent.ml import tabular

    encoding = tabular.fit_encoding(["size", "heating"], {"heating": ["gas", "None", "electric"]}, True)
    np.testing.assert_array_equal(encoding.encode([["NA", "None"], [" n/a ", "gas"]]), encoding.encode([[None, "None"], [None, "gas"]]))
    regression = tmp_path / "r.csv"
    regression.write_text("f,y\n1,2.5\n2,3.5\n3,NA\n")
    with pytest.raises(ConfigError, match="line 4, target column 'y' is empty"):
        load_arrays(f"csv:{regression}", label_column="y", task="regression")


WRITTEN = {  # a number written for people, one per row
    "dollars": lambda i: f"${1000 + 37 * i:,}", "percent": lambda i: f"{i}%", "thousands": lambda i: f"{1_000_000 + 12_345 * i:,}",
    "accounting": lambda i: f"({1000 + 37 * i:,}.50)", "euro": lambda i: f"€ {1 + i}.400,00", "apostrophes": lambda i: f"{1 + i}'234'567",
    "spaced_percent": lambda i: f"{i} %", "pounds": lambda i: f"£{7 + i}", "minus_dollars": lambda i: f"-${1000 + 37 * i:,}",
    "dotted": lambda i: f"{1 + i}.234.567,89",
}


@pytest.mark.parametrize("kind", sorted(WRITTEN))
def test_numbers_written_for_people_are_refused_not_taken_for_words(tmp_path, kind):
    """A currency sign, a percent sign or thousands separators make a number text: as categories
    its values would lose their size (a synthetic 400-row table of incomes as "$1,234" was refused
    as an identifier; percentages from 0% to 99% became 92 one-hot columns). Refused at the
    first one's line, naming the fix and quoting no cell, once the column holds more than 20
    values; a few ($5, $10, $20) are categories, as they were; a column of words with such values
    among them stays categorical; one among a few plain numbers is a stray cell at its line."""
    path = tmp_path / "f.csv"

    def write(amounts):
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows([["a", "amount", "label"], *([f"{i}.5", amount, "ab"[i % 2]] for i, amount in enumerate(amounts))])

    written = [str(7 + i) if i < 3 else WRITTEN[kind](i) for i in range(30)]
    write(written)
    with pytest.raises(ConfigError, match="line 5, column 2: a number written with a currency sign, a percent sign or thousands") as refused:
        load_arrays(f"csv:{path}")
    assert "plain numbers" in str(refused.value) and "drop_columns" in str(refused.value) and written[3] not in str(refused.value)
    write([WRITTEN[kind](i % 3) for i in range(30)])
    x, _, _ = load_arrays(f"csv:{path}")
    assert sorted(set(x[:, 1])) == [0.0, 1.0, 2.0]  # three values: three categories
    write(["red" if i % 3 == 0 else amount for i, amount in enumerate(written)])
    x, _, _ = load_arrays(f"csv:{path}")
    assert len(set(x[:, 1])) == 1 + 2 + 18  # a column of words: the word, "8", "9" and 18 written numbers
    write([str(i % 10) if i != 11 else WRITTEN[kind](5) for i in range(30)])  # 11 values: a stray cell among numbers
    with pytest.raises(ConfigError, match="line 13, column 2: a feature that is not a number, in a column of numbers"):
        load_arrays(f"csv:{path}")


def test_a_separator_at_the_end_of_every_line_adds_no_column_and_an_empty_column_is_refused(tmp_path):
    """``a,b,label,`` (a separator closing every line, as some exporters write) read as an unnamed
    column of empty cells: refused as "an empty cell" under ``missing: refuse``, a nameless
    feature under ``impute``. Now it is no column. A nameless column with values, and (under
    ``refuse``) a named column of empty cells, are refused naming the fix; an empty cell is refused at the earliest line."""
    from dlagent.ml.data_readers import read_dataset

    lines = [f"{i * 0.5:.1f},{(i * 7) % 5},{'ab'[i % 2]}" for i in range(30)]
    plain, trailing = tmp_path / "plain.csv", tmp_path / "trailing.csv"
    plain.write_text("a,b,label\n" + "\n".join(lines) + "\n")
    trailing.write_text("a,b,label,\n" + "\n".join(f"{line}," for line in lines) + "\n")
    for missing in ("refuse", "impute"):
        x, y, names, columns = read_dataset(f"csv:{trailing}", label_column="label", allowed_roots=None, missing=missing,
                                            task="classification")
        x_plain, y_plain, names_plain, columns_plain = read_dataset(f"csv:{plain}", label_column="label", allowed_roots=None,
                                                                    missing=missing, task="classification")
        np.testing.assert_array_equal(x, x_plain)
        np.testing.assert_array_equal(y, y_plain)
        assert names == names_plain and columns.names == columns_plain.names == ["a", "b"]
        assert columns.dropped == ("",) and columns_plain.dropped == ()
    from dlagent.ml.data import load_dataset

    encoding = load_dataset(f"csv:{trailing}", seed=0).encoding
    served = next(csv.DictReader(["a,b,", "1.5,3,"]))  # rows without labels from the same exporter
    assert served == {"a": "1.5", "b": "3", "": ""}
    np.testing.assert_array_equal(encoding.encode([served]), encoding.encode([[1.5, 3]]))
    unnamed = tmp_path / "unnamed.csv"
    unnamed.write_text("a,,label\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="column 2 has values but no name in the header line"):
        load_arrays(f"csv:{unnamed}")
    blank = tmp_path / "blank.csv"
    blank.write_text("a,notes,b,label\n" + "\n".join(line.replace(",", ",,", 1) for line in lines) + "\n")
    with pytest.raises(ConfigError, match="every cell of column 2 is empty.*name it in drop_columns"):
        load_arrays(f"csv:{blank}")
    x, _, _ = load_arrays(f"csv:{blank}", missing="impute")  # under impute a column of gaps, as it always was
    assert x.shape == (30, 3) and np.isnan(x[:, 1]).all()
    x, _, _, columns = read_dataset(f"csv:{blank}", label_column="label", allowed_roots=None, missing="refuse",
                                    task="classification", drop_columns=("notes",))
    np.testing.assert_array_equal(x, x_plain)
    gaps = tmp_path / "gaps.csv"
    cells = [line.split(",") for line in lines]
    cells[3][1] = ""  # line 5, column 2
    cells[7][0] = ""  # line 9, column 1: a column before, a line after
    gaps.write_text("a,b,label\n" + "\n".join(",".join(row) for row in cells) + "\n")
    with pytest.raises(ConfigError, match=r"line 5, column 2: an empty cell\."):
        load_arrays(f"csv:{gaps}")


def test_a_row_without_a_label_is_refused_not_made_a_class(tmp_path):
    """An empty label cell was read as a class named '' (six unlabelled rows of 200 made a third
    class). Refused at its line in the first pass, under either ``missing`` (it fills features,
    never labels); a label "NA" stays a class ("NA" may be North America), an "NA" target is empty."""
    path = tmp_path / "c.csv"
    path.write_text("a,b,label\n" + "".join(f"{i * 0.1:.1f},{i % 5},{'' if i % 37 == 5 else 'xy'[i % 2]}\n" for i in range(200)))
    for missing in ("refuse", "impute"):
        with pytest.raises(ConfigError, match="line 7, label column 'label' is empty.*remove the rows without one"):
            load_arrays(f"csv:{path}", missing=missing)
    path.write_text("a,b,label\n" + "".join(f"{i * 0.1:.1f},{i % 5},{'NA' if i % 37 == 5 else 'xy'[i % 2]}\n" for i in range(200)))
    assert load_arrays(f"csv:{path}")[2] == ["NA", "x", "y"]


@pytest.mark.parametrize("text", ["555.123.4567", "192.168.100.200", "1 200 000", "1,5", "2.0.1", "(555) 123-4567"])
def test_what_only_looks_like_a_formatted_number_is_judged_as_a_word(tmp_path, text):
    """Phone numbers, addresses, versions, a lone decimal comma in a comma-separated file: none is
    a number written for people, so none gets the "plain numbers" fix; a column of them, all
    different, is an identifier. A cell of spaces between digits stays cheap to judge."""
    from dlagent.ml.data_checks import is_formatted_number

    assert not is_formatted_number(text)
    path = tmp_path / "w.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["a", "code", "label"], *([f"{i}.5", f"{text}-{i}", "ab"[i % 2]] for i in range(30))])
    with pytest.raises(ConfigError, match="an identifier"):
        load_arrays(f"csv:{path}")
    import time

    started = time.perf_counter()
    assert not is_formatted_number("1" + " " * 4000 + "x")
    assert time.perf_counter() - started < 0.05  # a regular expression that backtracked took 72 s on this cell


def test_nan_written_as_a_number_is_a_mark_and_a_column_of_marks_is_refused(tmp_path):
    """``nan`` parses as a float; in a column of numbers it is a missing-value mark like ``NA``:
    refused at its line under ``refuse`` (before, as "1 NaN/inf feature values" without a line).
    A column of nothing but marks carries nothing, as a column of empty cells: refused under
    ``refuse``, a column of gaps under ``impute``."""
    path = tmp_path / "n.csv"
    path.write_text("a,b,label\n" + "".join(f"{'nan' if i == 4 else i},{i % 3},{i % 2}\n" for i in range(30)))
    with pytest.raises(ConfigError, match="line 6, column 1: a missing-value mark"):
        load_arrays(f"csv:{path}")
    x, _, _ = load_arrays(f"csv:{path}", missing="impute")
    assert np.isnan(x[4, 0]) and int(np.isnan(x).sum()) == 1
    path.write_text("a,b,label\n" + "".join(f"{['NA', 'null'][i % 2]},{i % 3},{i % 2}\n" for i in range(30)))
    with pytest.raises(ConfigError, match="every cell of column 1 is empty or a missing-value mark.*drop_columns"):
        load_arrays(f"csv:{path}")
    for cells in (["NA", "null"], ["NA", ""]):  # under impute a column of gaps, as an empty one always was
        path.write_text("a,b,label\n" + "".join(f"{cells[i % 2]},{i % 3},{i % 2}\n" for i in range(30)))
        assert np.isnan(load_arrays(f"csv:{path}", missing="impute")[0][:, 0]).all()
