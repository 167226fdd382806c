"""The worker loop: pruning from per-epoch values, exactly n_trials with two worker processes on
PostgreSQL, and settings that refuse a bad worker before any trial."""

from __future__ import annotations

import pytest
from dlagent.errors import ConfigError
from dlagent.ml import tuning
from dlagent.ml.config import TrainConfig
from dlagent.ml.tuning import StudySettings, WorkerSettings

from tests.ml.tuning.workers import BASE, SPACE, by_state, finish, run_worker, start_worker, wait_for


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"n_trials": 0}, "n_trials"), ({"worker_index": -1}, "worker_index"), ({"max_epochs": 0}, "max_epochs"),
     ({"timeout_s": 0}, "timeout_s"), ({"timeout_s": True}, "timeout_s"), ({"base_config": {"epochs": 3}}, "train"),
     ({"study": {"metric": "val_loss"}}, "study")],
)
def test_bad_worker_settings_are_refused_before_any_trial(changes, field):
    with pytest.raises(ConfigError) as error:
        WorkerSettings(**{"storage_url": "sqlite://", "study_name": "s", "base_config": TrainConfig(**BASE), "n_trials": 2, **changes})
    assert error.value.field == field


def test_a_worker_without_a_client_cannot_track_trials(tmp_path, digits_small):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuning.create_study(url, "s", StudySettings(space=SPACE))
    with pytest.raises(ConfigError) as error:
        run_worker(url, "s", digits_small, TrainConfig(**BASE), 1, experiment_id="1")
    assert error.value.field == "client"
    assert tuning.study_summary(url, "s")["n_finished"] == 0  # refused before any trial


@pytest.mark.parametrize("pruner", ["hyperband", "successive_halving", "median"])
def test_pruning_stops_trials_in_a_bad_region(tmp_path, digits_small, pruner):
    # plain SGD: learning rates near 1e-3 barely move in a few epochs, near 0.1 they learn
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}}
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuning.create_study(url, "prune", StudySettings(space=space, sampler="random", pruner=pruner, seed=0))
    config = TrainConfig(model="mlp", epochs=4, optimizer="sgd", early_stopping_patience=0, seed=0)
    result = run_worker(url, "prune", digits_small, config, 8)

    summary = tuning.study_summary(url, "prune")
    assert summary["n_trials"]["COMPLETE"] + summary["n_trials"]["PRUNED"] == 8
    assert summary["n_trials"]["PRUNED"] >= 1
    pruned = [t for t in tuning.load_study(url, "prune").get_trials() if t.state.name == "PRUNED"]
    assert all(t.user_attrs["epochs_run"] < config.epochs for t in pruned)
    assert summary["epochs_total"] == result["epochs_run"] < 8 * config.epochs
    assert summary["best_value"] > 0.5 and summary["best_params"]["learning_rate"] > 1e-2


@pytest.mark.postgres
@pytest.mark.slow
def test_two_worker_processes_share_a_postgres_study_and_finish_exactly_n_trials(postgres_url, tmp_path, procs):
    n_trials = 6
    tuning.create_study(postgres_url, "shared", StudySettings(space=SPACE, pruner="median", seed=0))
    go = tmp_path / "go"
    procs.extend(start_worker(tmp_path, postgres_url, "shared", n_trials, index, go=str(go)) for index in range(2))
    wait_for(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(2)), 180, "both workers to load", procs)
    go.touch()  # both ask for trials at the same moment
    results = [finish(proc, tmp_path, index) for index, proc in enumerate(procs)]

    trials = tuning.load_study(postgres_url, "shared").get_trials()
    counts = by_state(trials)
    assert counts["COMPLETE"] + counts["PRUNED"] == n_trials
    assert counts["FAIL"] == counts["RUNNING"] == counts["WAITING"] == 0
    assert len(trials) == n_trials
    ran = [set(r["trials"]) for r in results]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both worked, never on the same trial
    assert ran[0] | ran[1] == {t.number for t in trials}
    assert len({t.user_attrs["worker"] for t in trials}) == 2
