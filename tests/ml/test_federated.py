"""Federated training's core: shards, the sample-weighted average, FedProx's local step, the loop."""

from __future__ import annotations

import numpy as np
import pytest
from dlagent.errors import ConfigError
from dlagent.ml.config import TrainConfig
from dlagent.ml.federated.aggregate import load_weights, save_weights, select_sites, update_bytes, weighted_average
from dlagent.ml.federated.settings import FederatedConfig
from dlagent.ml.federated.shards import MIN_SHARD_SAMPLES, label_counts, partition

# Its module-scoped fixture builds a Keras model: all its tests on one pytest-xdist worker, so it is built once.
pytestmark = pytest.mark.xdist_group("ml_federated")

# ----------------------------------------------------------------------------- the average


def test_weighted_average_is_the_sample_weighted_mean_computed_by_hand():
    a = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([10.0], np.float32)]
    b = [np.array([[5.0, 6.0], [7.0, 8.0]], np.float32), np.array([-2.0], np.float32)]
    averaged = weighted_average([(a, 1), (b, 3)])
    # 1/4 of a + 3/4 of b, written out
    assert averaged[0].tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert averaged[1].tolist() == [1.0]
    assert [w.dtype for w in averaged] == [np.float32, np.float32]


def test_weighted_average_of_equal_counts_is_the_plain_mean_and_one_update_is_itself():
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(3, 4)).astype(np.float32)] for _ in range(5)]
    averaged = weighted_average([(u, 7) for u in updates])
    np.testing.assert_allclose(averaged[0], np.mean([u[0].astype(np.float64) for u in updates], axis=0), rtol=0, atol=1e-6)
    assert weighted_average([(updates[0], 3)])[0].tolist() == updates[0][0].tolist()


@pytest.mark.parametrize(("updates", "field"), [
    ([], "updates"),
    ([([np.zeros(2)], 1), ([np.zeros(3)], 1)], "updates[1]"),
    ([([np.zeros(2)], 1), ([np.zeros(2), np.zeros(1)], 1)], "updates[1]"),
    ([([np.zeros(2)], 0)], "updates[0].samples"),
    ([([np.zeros(2)], True)], "updates[0].samples"),
    ([([np.array([1.0, np.nan])], 4)], "updates[0]"),
])
def test_weighted_average_refuses_what_would_poison_the_global_model(updates, field):
    with pytest.raises(ConfigError) as err:
        weighted_average(updates)
    assert err.value.field == field


def test_weights_round_trip_through_a_file_and_count_their_bytes(tmp_path):
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)]
    back = load_weights(save_weights(weights, tmp_path / "round-1" / "weights.npz"))
    assert [w.tolist() for w in back] == [w.tolist() for w in weights]
    assert update_bytes(weights) == (6 + 4) * 4


def test_sites_of_a_round_are_a_seeded_draw_different_each_round():
    assert select_sites(4, 0, 1, seed=0) == [0, 1, 2, 3]
    assert select_sites(4, 4, 1, seed=0) == [0, 1, 2, 3]
    draws = [select_sites(10, 3, r, seed=5) for r in range(1, 9)]
    assert all(len(set(d)) == 3 and all(0 <= s < 10 for s in d) for d in draws)
    assert draws == [select_sites(10, 3, r, seed=5) for r in range(1, 9)]  # a rerun draws the same
    assert len({tuple(d) for d in draws}) > 1


# ----------------------------------------------------------------------------- shards


def _labels(n_per_class=60, classes=5):
    return np.repeat(np.arange(classes), n_per_class)


@pytest.mark.parametrize("mode", ["iid", "label_skew"])
def test_shards_are_disjoint_cover_every_row_and_are_seeded(mode):
    y = _labels()
    shards = partition(y, 4, mode, seed=3, alpha=0.5)
    together = np.concatenate(shards)
    assert len(together) == len(y) and len(set(together.tolist())) == len(y)
    assert all(len(s) >= MIN_SHARD_SAMPLES for s in shards)
    assert [s.tolist() for s in shards] == [s.tolist() for s in partition(y, 4, mode, seed=3, alpha=0.5)]
    assert [s.tolist() for s in shards] != [s.tolist() for s in partition(y, 4, mode, seed=4, alpha=0.5)]


def test_iid_shards_keep_the_class_mix_and_label_skew_concentrates_it():
    y = _labels(n_per_class=100, classes=10)
    iid = np.array(label_counts(y, partition(y, 4, "iid", seed=0), 10))
    assert iid.max() - iid.min() <= 1  # every class dealt out evenly
    skew = np.array(label_counts(y, partition(y, 4, "label_skew", seed=0, alpha=0.1), 10))
    assert skew.sum() == len(y)
    top_share = lambda counts: float(np.mean(np.sort(counts, axis=1)[:, -2:].sum(axis=1) / counts.sum(axis=1)))  # noqa: E731
    assert top_share(iid) == pytest.approx(0.2, abs=0.01)
    assert top_share(skew) > 0.5  # a skewed site's two largest classes hold most of its rows


def test_bad_partitions_are_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="n_shards") as err:
        partition(_labels(n_per_class=5, classes=2), 2)
    assert "at most 1 shards" in str(err.value)
    with pytest.raises(ConfigError) as err:
        partition(np.linspace(0, 1, 100), 2, "label_skew", regression=True)
    assert err.value.field == "partition"
    assert len(partition(np.linspace(0, 1, 100), 3, "iid", regression=True)) == 3


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("values", "field"), [
    ({"n_shards": 1}, "n_shards"),
    ({"n_shards": 0}, "n_shards"),
    ({"rounds": 0}, "rounds"),
    ({"strategy": "fedprox", "mu": -0.1}, "mu"),
    ({"mu": 0.1}, "mu"),  # a proximal term with fedavg
    ({"n_shards": 3, "clients_per_round": 4}, "clients_per_round"),
    ({"partition": "by_site"}, "partition"),
    ({"skew_alpha": 0}, "skew_alpha"),
    ({"local_epoch": 2}, "local_epoch"),
])
def test_bad_federated_settings_are_refused_naming_the_field(values, field):
    with pytest.raises(ConfigError) as err:
        FederatedConfig.from_dict(values)
    assert err.value.field == field
    assert err.value.fix


def test_sites_per_round_defaults_to_all_shards():
    assert FederatedConfig(n_shards=5).sites_per_round == 5
    assert FederatedConfig(n_shards=5, clients_per_round=2).sites_per_round == 2


# ----------------------------------------------------------------------------- local training and the loop


@pytest.fixture(scope="module")
def small_model(digits_small):
    from dlagent.ml.models import build_model

    config = TrainConfig(model="mlp", units=16, learning_rate=0.01, batch_size=32, seed=0)
    return config, build_model(config, digits_small.input_shape, digits_small.num_classes)


def _distance(a, b) -> float:
    return float(np.sqrt(sum(np.sum((x.astype(np.float64) - y) ** 2) for x, y in zip(a, b, strict=True))))


def test_local_update_is_seeded_and_fedprox_stays_nearer_the_global_model(digits_small, small_model):
    from dlagent.ml.federated.local import local_update

    config, model = small_model
    start = model.get_weights()
    x, y = digits_small.x_train[:200], digits_small.y_train[:200]
    plain = local_update(model, start, x, y, config=config, epochs=3, mu=0.0, seed=1)
    again = local_update(model, start, x, y, config=config, epochs=3, mu=0.0, seed=1)
    prox = local_update(model, start, x, y, config=config, epochs=3, mu=10.0, seed=1)
    assert plain.samples == 200 and plain.metrics["local_epochs"] == 3
    assert _distance(plain.weights, again.weights) == 0.0
    assert _distance(plain.weights, start) > 0.1
    assert _distance(prox.weights, start) < 0.5 * _distance(plain.weights, start)
    with pytest.raises(ConfigError, match="shard"):
        local_update(model, start, x[:0], y[:0], config=config, epochs=1)


def test_a_round_averages_exactly_the_sites_updates_by_their_sample_counts(digits_small, small_model):
    """The loop's global model after one round is the sample-weighted mean of the sites' own
    updates, each recomputed here from the same start, so sites of different sizes count by size."""
    from dlagent.ml.federated.local import local_update
    from dlagent.ml.federated.rounds import run_federated

    config, model = small_model
    start = model.get_weights()
    y = digits_small.y_train
    shards = [np.arange(0, 100), np.arange(100, 400)]  # 100 and 300 rows
    data = [(digits_small.x_train[rows], y[rows]) for rows in shards]
    federated = FederatedConfig(n_shards=2, rounds=1, local_epochs=1, seed=0)
    result = run_federated(model, data, digits_small.x_val, digits_small.y_val, config=config, federated=federated)
    averaged = result.model.get_weights()  # before the same model is trained again below
    by_hand = [local_update(model, start, x, yy, config=config, epochs=1, seed=0 * 1000 + 1 * 64 + site)
               for site, (x, yy) in enumerate(data)]
    for layer, got in enumerate(averaged):
        expected = 0.25 * by_hand[0].weights[layer].astype(np.float64) + 0.75 * by_hand[1].weights[layer]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert result.history[0]["samples"] == [100, 300]


def test_federated_training_on_iid_shards_learns_and_can_stop_early(digits_small, small_model):
    from dlagent.ml.federated.rounds import run_federated
    from dlagent.ml.federated.shards import partition
    from dlagent.ml.models import build_model

    config, _ = small_model
    model = build_model(config, digits_small.input_shape, digits_small.num_classes)
    shards = partition(digits_small.y_train, 3, "iid", seed=0)
    data = [(digits_small.x_train[rows], digits_small.y_train[rows]) for rows in shards]
    seen = []
    result = run_federated(model, data, digits_small.x_val, digits_small.y_val, config=config,
                           federated=FederatedConfig(n_shards=3, rounds=8, local_epochs=2, seed=0),
                           on_round=lambda record: seen.append(record["round"]) or record["round"] == 5)
    assert seen == [1, 2, 3, 4, 5] and result.rounds_run == 5
    accuracy = [r["val"]["val_accuracy"] for r in result.history]
    assert accuracy[-1] > 0.8, accuracy
    assert accuracy[-1] > accuracy[0], accuracy
    assert result.history[0]["bytes_per_site"] == update_bytes(model.get_weights())
