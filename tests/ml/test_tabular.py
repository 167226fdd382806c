"""Categorical CSV columns: a vocabulary from the training split only, one shared encoder, and a
serving bundle that scores raw rows like the Keras model scores the loader's rows."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.data import load_dataset
from dlagent.ml.tabular import OOV, TableEncoding, fit_encoding

COLOURS = ["red", "green", "blue", "teal"]


def _write_table(path, *, n=240, gaps=False, rename=None, seed=0):
    """A table where the colour decides the class (red/green -> 1), beside two numeric columns on
    very different scales; optionally every 17th colour and every 19th area empty."""
    rng = np.random.default_rng(seed)
    colours = [COLOURS[i % 4] for i in range(n)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["colour", "area", "ratio", "label"])
        for i, colour in enumerate(colours):
            shown = (rename or {}).get(colour, colour)
            writer.writerow(["" if gaps and i % 17 == 3 else shown, "" if gaps and i % 19 == 4 else f"{rng.normal(3000, 800):.1f}",
                             f"{rng.normal(0.1, 0.02):.4f}", int(colour in ("red", "green"))])
    return f"csv:{path}"


def test_a_categorical_column_is_one_hot_with_the_training_vocabulary(tmp_path):
    splits = load_dataset(_write_table(tmp_path / "t.csv"), seed=0)
    encoding = splits.encoding
    assert encoding.columns == ["colour", "area", "ratio"] and encoding.vocabularies == {"colour": sorted(COLOURS)}
    assert encoding.feature_names() == [f"colour={OOV}", "colour=blue", "colour=green", "colour=red", "colour=teal", "area", "ratio"]
    assert splits.input_shape == (7,) and splits.x_train.dtype == np.float32
    one_hot = splits.x_train[:, :5]
    assert (one_hot.sum(axis=1) == 1).all() and (one_hot[:, 0] == 0).all()  # every training value is in the vocabulary
    # the raw test rows, encoded by the same function, are the loader's test inputs
    np.testing.assert_array_equal(encoding.encode(splits.raw_x_test), splits.x_test)


def test_the_vocabulary_comes_from_the_training_split_only_and_unseen_values_go_to_the_oov_slot():
    rows = [["red", 1.0], ["blue", 2.0], ["red", 3.0]]
    encoding = fit_encoding(["colour", "size"], {"colour": [r[0] for r in rows]}, impute=False)
    assert encoding.vocabularies == {"colour": ["blue", "red"]} and encoding.fill == {"colour": "red"}
    encoded = encoding.encode([["purple", 5.0], {"size": 1.5, "colour": " red "}])
    np.testing.assert_array_equal(encoded, [[1, 0, 0, 5.0], [0, 0, 1, 1.5]])


def test_changing_only_test_rows_leaves_the_vocabulary_unchanged(tmp_path):
    """The file's test rows get a value never seen before: the vocabulary (learned on the training
    split) does not change, the digest does, and those rows land in the out-of-vocabulary slot."""
    uri = _write_table(tmp_path / "t.csv")
    before = load_dataset(uri, seed=0)
    test_rows = {tuple(r) for r in before.raw_x_test}
    with open(tmp_path / "t.csv") as handle:
        lines = handle.read().splitlines()
    changed = [lines[0]]
    for line in lines[1:]:
        colour, area, ratio, label = line.split(",")
        is_test = (colour, float(np.float32(area)), float(np.float32(ratio))) in test_rows
        changed.append(",".join(["violet" if is_test and colour == "teal" else colour, area, ratio, label]))
    (tmp_path / "t.csv").write_text("\n".join(changed) + "\n")
    after = load_dataset(uri, seed=0)
    assert after.encoding == before.encoding and after.digest != before.digest
    np.testing.assert_array_equal(after.x_train, before.x_train)
    violet = [i for i, row in enumerate(after.raw_x_test) if row[0] == "violet"]
    assert violet and (after.x_test[violet, 0] == 1).all()


def test_impute_fills_a_category_with_its_most_frequent_value_and_flags_it(tmp_path):
    splits = load_dataset(_write_table(tmp_path / "t.csv", gaps=True), seed=0, missing="impute")
    encoding = splits.encoding
    assert encoding.indicators == ["colour"] and encoding.feature_names()[-1] == "colour=<missing>"
    row = encoding.encode([[None, None, 0.1]])[0]
    assert row[1 + encoding.vocabularies["colour"].index(encoding.fill["colour"])] == 1 and row[-1] == 1
    assert np.isnan(row[5])  # a numeric gap stays NaN: the model's ImputeMissing layer fills it
    assert np.isnan(splits.x_train).any() and not np.isnan(splits.x_train[:, :5]).any()


def test_bad_rows_and_cells_are_refused_naming_where():
    encoding = fit_encoding(["colour", "size"], {"colour": ["red", "blue"]}, impute=False)
    with pytest.raises(ConfigError, match=r"row 0, column 'colour': an empty value"):
        encoding.encode([["", 1.0]])
    with pytest.raises(ConfigError, match=r"row 1, column 'size': not a number"):
        encoding.encode([["red", 1.0], ["red", "big"]])
    with pytest.raises(ConfigError, match=r"row 0 has 3 values; the model takes 2 columns"):
        encoding.encode([["red", 1.0, 2.0]])
    with pytest.raises(ConfigError, match=r"unknown column 'weight'"):
        encoding.encode([{"colour": "red", "weight": 2}])


def test_a_column_of_numbers_with_a_stray_word_is_refused_not_taken_for_a_category(tmp_path):
    path = tmp_path / "typo.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(9)) + "7,seven,1\n")
    with pytest.raises(ConfigError, match=r"line 11, column 2: a feature that is not a number, in a column of numbers"):
        load_dataset(f"csv:{path}", seed=0)


def test_a_renamed_category_changes_the_digest(tmp_path):
    a = load_dataset(_write_table(tmp_path / "a.csv"), seed=0)
    b = load_dataset(_write_table(tmp_path / "b.csv", rename={"teal": "cyan"}), seed=0)
    assert a.digest != b.digest  # the codes are the same: the values are part of the digest


def test_a_model_of_another_vocabulary_gets_the_raw_test_rows_encoded_its_own_way(tmp_path):
    splits = load_dataset(_write_table(tmp_path / "t.csv"), seed=0)
    other = TableEncoding(["colour", "area", "ratio"], {"colour": ["red", "teal"]})
    inputs = splits.inputs_for(other.to_json())
    assert inputs.shape == (len(splits.y_test), 5)
    np.testing.assert_array_equal(inputs, other.encode(splits.raw_x_test))
    assert splits.inputs_for(splits.encoding.to_json()) is splits.x_test
    with pytest.raises(ConfigError, match="encoding"):
        splits.inputs_for(None)


def test_a_served_raw_row_gives_the_keras_models_prediction(tmp_path):
    """Train the default table model, convert it, write a serving bundle with the encoding, and
    score the raw test rows (words, gaps) through the bundle: the Keras model's outputs on the
    loader's rows. The colour alone decides the class, so the model must use the encoding."""
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.quantization import quantize
    from dlagent.ml.serving import load_bundle, write_serving_bundle
    from dlagent.ml.training import fit

    splits = load_dataset(_write_table(tmp_path / "t.csv", gaps=True), seed=0, missing="impute")
    result = fit(splits, TrainConfig(model="mlp", epochs=40, learning_rate=0.01, seed=0))
    keras_outputs = result.model.predict(splits.x_test, verbose=0)
    assert (keras_outputs.argmax(axis=1) == splits.y_test).mean() >= 0.9
    write_serving_bundle(tmp_path / "deploy", {"model.tflite": quantize(result.model, "none"),
                                               "encoding.json": splits.encoding.dumps().encode()},
                         splits.class_names, {"model_name": "t"})
    bundle = load_bundle(tmp_path / "deploy")
    assert bundle.encoding == splits.encoding
    np.testing.assert_allclose(bundle.predict(splits.raw_x_test), keras_outputs, atol=1e-4)
    as_dicts = [dict(zip(bundle.encoding.columns, row, strict=True)) for row in splits.raw_x_test]
    np.testing.assert_allclose(bundle.predict(as_dicts), keras_outputs, atol=1e-4)


def test_a_table_of_numbers_gets_an_encoding_that_names_its_columns(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i * 0.5},{i % 2}\n" for i in range(30)))
    splits = load_dataset(f"csv:{path}", seed=0)
    assert splits.encoding.columns == ["a", "b"] and splits.encoding.vocabularies == {}
    np.testing.assert_array_equal(splits.encoding.encode([{"b": 1.5, "a": 3}]), [[3.0, 1.5]])
    assert splits.inputs_for(None) is splits.x_test  # a model logged before encodings: the same columns


def test_repeated_column_names_are_refused_without_quoting_the_header(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("secretname,secretname,label\n" + "".join(f"red,{i},{i % 2}\n" for i in range(12)))
    with pytest.raises(ConfigError, match="columns 1 and 2 of the header have the same name") as error:
        load_dataset(f"csv:{path}", seed=0)
    assert "secretname" not in str(error.value)


def test_numbers_sent_for_categories_and_nan_or_inf_for_numbers():
    encoding = fit_encoding(["grade", "size"], {"grade": ["1", "2", "2"]}, impute=False)
    np.testing.assert_array_equal(encoding.encode([[1.0, 2.0], [2, 3.0]]), [[0, 1, 0, 2.0], [0, 0, 1, 3.0]])
    with pytest.raises(ConfigError, match="row 0, column 'size': an empty value"):
        encoding.encode([["1", "nan"]])
    with pytest.raises(ConfigError, match="row 0, column 'size': an infinite value"):
        encoding.encode([["1", float("inf")]])


def test_permutation_importance_shuffles_a_categorical_column_as_one_feature(tmp_path):
    from dlagent.ml.explain import permutation_importance

    splits = load_dataset(_write_table(tmp_path / "t.csv", gaps=True), seed=0, missing="impute")
    groups = splits.encoding.column_groups()
    assert groups == [("colour", [0, 1, 2, 3, 4, 7]), ("area", [5]), ("ratio", [6])]

    def predict(x):  # a model that reads only the colour: red or green is class 1
        return np.stack([1 - (x[:, 2] + x[:, 3]), x[:, 2] + x[:, 3]], axis=1)

    rows = permutation_importance(predict, splits.x_test, splits.y_test, groups=groups, repeats=3)
    by_name = {r["feature"]: r["importance_mean"] for r in rows}
    assert set(by_name) == {"colour", "area", "ratio"} and by_name["colour"] > 20 and by_name["area"] == by_name["ratio"] == 0
