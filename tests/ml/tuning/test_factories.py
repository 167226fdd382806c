"""Sampler, pruner and storage by name: bad names and numbers refused with the field."""

from __future__ import annotations

import pytest
from dlagent.errors import ConfigError
from dlagent.ml import tuning


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: tuning.make_sampler("bayes", 0), "sampler"),
        (lambda: tuning.make_sampler("cmaes", 0, space=tuning.default_search_space("mlp")), "sampler"),
        (lambda: tuning.make_sampler("tpe", -1), "seed"),
        (lambda: tuning.make_pruner("hyperopt", 1, 10), "pruner"),
        (lambda: tuning.make_pruner("hyperband", 5, 3), "min_resource"),
        (lambda: tuning.make_pruner("median", 0, 3), "min_resource"),
        (lambda: tuning.make_pruner("successive_halving", 1, 9, reduction_factor=1), "reduction_factor"),
        (lambda: tuning.default_search_space("vgg"), "model"),
        (lambda: tuning.make_storage("optuna.db"), "storage_url"),
        (lambda: tuning.make_storage("sqlite://", heartbeat_interval=5, grace_period=5), "grace_period"),
    ],
)
def test_bad_tuning_settings_are_refused(call, field):
    with pytest.raises(ConfigError) as error:
        call()
    assert error.value.field == field


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch") is not None, reason="PyTorch is installed")
def test_gp_sampler_without_pytorch_says_how_to_fix_it():
    with pytest.raises(ConfigError, match="needs PyTorch"):
        tuning.make_sampler("gp", 0)


def test_samplers_and_pruners_by_name():
    import optuna

    assert isinstance(tuning.make_sampler("tpe", 1), optuna.samplers.TPESampler)
    assert isinstance(tuning.make_sampler("random", 1), optuna.samplers.RandomSampler)
    assert isinstance(tuning.make_pruner("hyperband", 1, 9), optuna.pruners.HyperbandPruner)
    assert isinstance(tuning.make_pruner("median", 1, 9), optuna.pruners.MedianPruner)
    halving = tuning.make_pruner("successive_halving", 2, 9)
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner)
    assert (halving._min_resource, halving._reduction_factor) == (2, 3)  # the first rung is min_trial_epochs
    assert isinstance(tuning.make_pruner("none", 1, 9), optuna.pruners.NopPruner)


def test_storage_retries_stale_trials():
    import optuna

    storage = tuning.make_storage("sqlite://", heartbeat_interval=1, grace_period=2, max_retry=2)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert (storage.heartbeat_interval, storage.grace_period) == (1, 2)
    assert isinstance(storage.heartbeat_stale_trial_callback.retry, optuna.storages.RetryHeartbeatStaleTrialCallback)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_sampler_sequence_depends_only_on_the_seed(name):
    import optuna

    def sequence(seed: int) -> list[float]:
        study = optuna.create_study(sampler=tuning.make_sampler(name, seed, n_startup_trials=3))
        study.optimize(lambda t: (t.suggest_float("x", -5, 5) - 1) ** 2, n_trials=8)
        return [t.params["x"] for t in study.trials]

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)


def test_sqlite_path_is_one_function_for_locks_and_storage(tmp_path):
    from dlagent.ml.locks import sqlite_path

    assert sqlite_path(f"sqlite:///{tmp_path / 'a.db'}") == tmp_path / "a.db"
    assert sqlite_path("sqlite://") is None and sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite:///file:mem?mode=memory&uri=true") is None


def test_successive_halving_prunes_the_second_trial_at_its_first_rung_when_it_trails_the_first():
    # What the pruner is for: a budget of a few trials. Hyperband would compare the second trial
    # only with earlier trials of its own bracket; one bracket compares it with the first.
    import optuna

    study = optuna.create_study(direction="maximize", pruner=tuning.make_pruner("successive_halving", 1, 9),
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def run(curve):
        trial = study.ask()
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return epoch
        study.tell(trial, curve[-1])
        return len(curve)

    assert run([0.50, 0.60, 0.70, 0.75]) == 4  # the first trial has no rival: it runs to the end
    assert run([0.40, 0.65, 0.80, 0.85]) == 1  # trails the first at epoch 1: stops at the first rung
    assert run([0.55, 0.58, 0.69, 0.90]) == 3  # ahead at epoch 1 (the best of three), behind at the rung at 3
    assert run([0.60, 0.65, 0.72, 0.80]) == 4  # the best at epochs 1 and 3: promoted to the end (no rung before 9)
