"""Tuning on real studies: space validation, PostgreSQL shared by worker processes, a worker
killed with SIGKILL mid-trial, pruning, determinism and MLflow child runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dlagent.errors import ConfigError
from dlagent.ml import tracking, tuning
from dlagent.ml.config import TrainConfig

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    "units": {"type": "int", "low": 16, "high": 64, "step": 16},
}
BASE = {"model": "mlp", "epochs": 3, "early_stopping_patience": 0, "seed": 0}
HEARTBEAT, GRACE = 1, 3

# A worker process, as a mapped Airflow task would run it. With "stall_in_fit": N, the N-th
# model fit of this process writes a marker after its first epoch and then hangs inside the
# trial (heartbeat still beating) until the test kills the process.
WORKER_SCRIPT = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
import keras
from dlagent.ml import tuning
from dlagent.ml.config import TrainConfig
from dlagent.ml.data import load_dataset

splits = load_dataset("digits", seed=0, max_samples=600)
callbacks = []
if args.get("stall_in_fit"):
    class StallInFit(keras.callbacks.Callback):
        fits = 0
        def on_train_begin(self, logs=None):
            type(self).fits += 1
        def on_epoch_end(self, epoch, logs=None):
            if type(self).fits == args["stall_in_fit"]:
                open(args["marker"], "w").close()
                time.sleep(600)
    callbacks.append(StallInFit())
open(args["ready"], "w").close()
while args.get("go") and not os.path.exists(args["go"]):
    time.sleep(0.05)
result = tuning.run_worker(
    args["url"], args["study"], splits, TrainConfig(**args["base"]), None, args["n_trials"],
    heartbeat_interval=args["heartbeat"], grace_period=args["grace"], worker_index=args["index"],
    callbacks=callbacks, timeout_s=300,
)
print("RESULT " + json.dumps(result))
"""


def _start_worker(tmp_path: Path, url: str, study: str, n_trials: int, index: int, **extra) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    args = {"url": url, "study": study, "n_trials": n_trials, "index": index, "base": BASE,
            "heartbeat": HEARTBEAT, "grace": GRACE, "ready": str(tmp_path / f"ready-{index}"), **extra}
    out = open(tmp_path / f"worker-{index}.log", "w")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(script), json.dumps(args)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


def _wait_for(condition, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"a worker exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _finish(proc: subprocess.Popen, tmp_path: Path, index: int) -> dict:
    proc.wait(timeout=300)
    output = (tmp_path / f"worker-{index}.log").read_text()
    assert proc.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, output[-3000:]
    return json.loads(lines[0][len("RESULT "):])


def _by_state(trials) -> dict:
    return {state: sum(1 for t in trials if t.state.name == state) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("space", "field"),
    [
        ("not json {", "search_space"),
        ([{"type": "float"}], "search_space"),
        (None, "search_space"),
        ({}, "search_space"),
        ({"lr": {"type": "float", "low": 1e-4, "high": 0.1}}, "search_space.lr"),
        ({"learning_rate": {"type": "float", "low": 0.1, "high": 0.001}}, "search_space.learning_rate"),
        ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "search_space.learning_rate"),
        ({"learning_rate": {"type": "float", "low": -1.0, "high": 0.1, "log": True}}, "search_space.learning_rate"),
        ({"units": {"type": "integer", "low": 16, "high": 64}}, "search_space.units"),
        ({"units": {"low": 16, "high": 64}}, "search_space.units"),
        ({"units": {"type": "int", "low": 16.5, "high": 64}}, "search_space.units"),
        ({"units": {"type": "int", "low": 16, "high": 64, "stepp": 16}}, "search_space.units"),
        ({"units": {"type": "int", "low": 16, "high": 64, "step": 0}}, "search_space.units"),
        ({"units": {"type": "int", "low": 16}}, "search_space.units"),
        ({"batch_size": {"type": "categorical", "choices": []}}, "search_space.batch_size"),
        ({"batch_size": {"type": "categorical", "choices": [32, 32]}}, "search_space.batch_size"),
        ({"batch_size": {"type": "categorical"}}, "search_space.batch_size"),
        ({"optimizer": {"type": "categorical", "choices": ["adam", "lion"]}}, "search_space.optimizer"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 1.0}}, "search_space.dropout"),
        ({"dropout": {"type": "float", "low": 0.0, "high": 0.5, "log": "yes"}}, "search_space.dropout"),
        ({"dropout": "0.1-0.5"}, "search_space.dropout"),
        ({"learning_rate": {"type": "float", "low": 1e-4, "high": float("inf")}}, "search_space.learning_rate"),
    ],
)
def test_invalid_search_spaces_are_refused_naming_the_field(space, field):
    with pytest.raises(ConfigError) as error:
        tuning.validate_search_space(space)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}:")


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_default_spaces_are_valid_and_json_text_is_accepted(model):
    space = tuning.default_search_space(model)
    assert tuning.validate_search_space(json.dumps(space)) == tuning.validate_search_space(space)
    assert set(space) <= set(TrainConfig().to_dict())


def test_space_is_normalised():
    space = tuning.validate_search_space({"learning_rate": {"type": "float", "low": 1, "high": 2}, "units": {"type": "int", "low": 8, "high": 64, "step": 8}})
    assert space == {
        "learning_rate": {"type": "float", "low": 1.0, "high": 2.0, "log": False},
        "units": {"type": "int", "low": 8, "high": 64, "log": False, "step": 8},
    }


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: tuning.make_sampler("bayes", 0), "sampler"),
        (lambda: tuning.make_sampler("cmaes", 0, space=tuning.default_search_space("mlp")), "sampler"),
        (lambda: tuning.make_sampler("tpe", -1), "seed"),
        (lambda: tuning.make_pruner("asha", 1, 10), "pruner"),
        (lambda: tuning.make_pruner("hyperband", 5, 3), "min_resource"),
        (lambda: tuning.make_pruner("median", 0, 3), "min_resource"),
        (lambda: tuning.default_search_space("resnet"), "model"),
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
    assert isinstance(tuning.make_pruner("none", 1, 9), optuna.pruners.NopPruner)


def test_storage_retries_stale_trials():
    import optuna

    storage = tuning.make_storage("sqlite://", heartbeat_interval=1, grace_period=2, max_retry=2)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert (storage.heartbeat_interval, storage.grace_period) == (1, 2)
    assert isinstance(storage.heartbeat_stale_trial_callback.retry, optuna.storages.RetryHeartbeatStaleTrialCallback)


def test_study_is_created_once_and_continued_never_restarted(tmp_path, digits_small):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = tuning.create_study(url, "s", space=SPACE, pruner_name="none", seed=0)
    tuning.run_worker(url, "s", digits_small, TrainConfig(**{**BASE, "epochs": 1}), None, 2, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    again = tuning.create_study(url, "s", space=SPACE, pruner_name="none", seed=0)
    assert first["created"] and not again["created"]
    assert again["n_trials"]["COMPLETE"] == 2
    # a re-run worker continues up to the requested total
    result = tuning.run_worker(url, "s", digits_small, TrainConfig(**{**BASE, "epochs": 1}), SPACE, 3, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    assert result["trials"] == [2] and result["study_n_trials"]["COMPLETE"] == 3
    with pytest.raises(ConfigError) as changed:
        tuning.create_study(url, "s", space=SPACE, pruner_name="median", seed=0)
    assert changed.value.field == "study_name" and "pruner" in str(changed.value)
    with pytest.raises(ConfigError) as other_space:
        tuning.run_worker(url, "s", digits_small, TrainConfig(**BASE), {"units": SPACE["units"]}, 3)
    assert other_space.value.field == "search_space"
    with pytest.raises(ConfigError) as missing:
        tuning.run_worker(url, "nope", digits_small, TrainConfig(**BASE), SPACE, 3)
    assert missing.value.field == "study_name"
    with pytest.raises(ConfigError) as direction:
        tuning.create_study(url, "s2", metric="val_loss", direction="maximize", space=SPACE)
    assert direction.value.field == "direction"


def test_same_seed_gives_the_same_trials(tmp_path, digits_small):
    def params(name: str, seed: int) -> list[dict]:
        url = f"sqlite:///{tmp_path / name}.db"
        tuning.create_study(url, name, space=SPACE, pruner_name="none", seed=seed)
        tuning.run_worker(url, name, digits_small, TrainConfig(**{**BASE, "epochs": 1}), None, 2, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
        return [t.params for t in tuning.load_study(url, name).get_trials()]

    assert params("a", 3) == params("b", 3)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_sampler_sequence_depends_only_on_the_seed(name):
    import optuna

    def sequence(seed: int) -> list[float]:
        study = optuna.create_study(sampler=tuning.make_sampler(name, seed, n_startup_trials=3))
        study.optimize(lambda t: (t.suggest_float("x", -5, 5) - 1) ** 2, n_trials=8)
        return [t.params["x"] for t in study.trials]

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("pruner", ["hyperband", "median"])
def test_pruning_stops_trials_in_a_bad_region(tmp_path, digits_small, pruner):
    # plain SGD: learning rates near 1e-3 barely move in a few epochs, near 0.1 they learn
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}}
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuning.create_study(url, "prune", space=space, sampler_name="random", pruner_name=pruner, seed=0)
    config = TrainConfig(model="mlp", epochs=4, optimizer="sgd", early_stopping_patience=0, seed=0)
    result = tuning.run_worker(url, "prune", digits_small, config, None, 8, heartbeat_interval=HEARTBEAT, grace_period=GRACE)

    summary = tuning.study_summary(url, "prune")
    assert summary["n_trials"]["COMPLETE"] + summary["n_trials"]["PRUNED"] == 8
    assert summary["n_trials"]["PRUNED"] >= 1
    pruned = [t for t in tuning.load_study(url, "prune").get_trials() if t.state.name == "PRUNED"]
    assert all(t.user_attrs["epochs_run"] < config.epochs for t in pruned)
    assert summary["epochs_total"] == result["epochs_run"] < 8 * config.epochs
    assert summary["best_value"] > 0.5 and summary["best_params"]["learning_rate"] > 1e-2


# --------------------------------------------------------------------------- MLflow


def test_trials_are_mlflow_child_runs_and_the_parent_gets_the_study(tmp_path, mlflow_uri, digits_small):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "tune", str(tmp_path / "artifacts"))
    parent, _ = tracking.find_or_create_run(client, experiment, "dag/run/tune", run_name="tune")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}}
    tuning.create_study(url, "tracked", space=space, sampler_name="random", pruner_name="median", seed=0)
    config = TrainConfig(model="mlp", epochs=3, optimizer="sgd", early_stopping_patience=0)
    tuning.run_worker(url, "tracked", digits_small, config, None, 5, heartbeat_interval=HEARTBEAT, grace_period=GRACE,
                      tracking_uri=mlflow_uri, experiment_id=experiment, parent_run_id=parent, worker_tags={"map_index": 0})

    study = tuning.load_study(url, "tracked")
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 5
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in study.get_trials():
        run = by_number[trial.number]
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.data.tags["optuna.study"] == "tracked" and run.data.tags["map_index"] == "0"
        assert run.info.status == "FINISHED"
        assert float(run.data.params["learning_rate"]) == pytest.approx(trial.params["learning_rate"])
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert epochs == list(range(trial.user_attrs["epochs_run"]))
    assert {r.data.tags["optuna.state"] for r in children} == {"COMPLETE", "PRUNED"}

    summary = tuning.log_study_to_mlflow(study, mlflow_uri, parent)
    run = client.get_run(parent)
    assert run.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert float(run.data.params["best_learning_rate"]) == pytest.approx(study.best_params["learning_rate"])
    assert run.data.metrics["trials_complete"] + run.data.metrics["trials_pruned"] == 5
    artifacts = {a.path for a in client.list_artifacts(parent, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/param_importances.png", "optuna/intermediate_values.png", "optuna/study_summary.json"} <= artifacts
    assert summary["n_finished"] == 5


def test_importances_are_skipped_with_a_reason_below_two_complete_trials(tmp_path, mlflow_uri):
    import optuna
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "tune", str(tmp_path / "artifacts"))
    run_id, _ = tracking.find_or_create_run(client, experiment, "one", run_name="one")
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 0.01}, distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)}, value=0.9))
    tuning.log_study_to_mlflow(study, mlflow_uri, run_id)
    run = client.get_run(run_id)
    assert "2 complete trials" in run.data.tags["optuna.plot_skipped.param_importances"]
    assert "optuna/optimization_history.png" in {a.path for a in client.list_artifacts(run_id, "optuna")}


# --------------------------------------------------------------------------- PostgreSQL, processes


@pytest.mark.postgres
@pytest.mark.slow
def test_two_worker_processes_share_a_postgres_study_and_finish_exactly_n_trials(postgres_url, tmp_path, procs):
    n_trials = 6
    tuning.create_study(postgres_url, "shared", space=SPACE, pruner_name="median", seed=0)
    go = tmp_path / "go"
    procs.extend(_start_worker(tmp_path, postgres_url, "shared", n_trials, index, go=str(go)) for index in range(2))
    _wait_for(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(2)), 180, "both workers to load", procs)
    go.touch()  # both ask for trials at the same moment
    results = [_finish(proc, tmp_path, index) for index, proc in enumerate(procs)]

    trials = tuning.load_study(postgres_url, "shared").get_trials()
    counts = _by_state(trials)
    assert counts["COMPLETE"] + counts["PRUNED"] == n_trials
    assert counts["FAIL"] == counts["RUNNING"] == counts["WAITING"] == 0
    assert len(trials) == n_trials
    ran = [set(r["trials"]) for r in results]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both worked, never on the same trial
    assert ran[0] | ran[1] == {t.number for t in trials}
    assert len({t.user_attrs["worker"] for t in trials}) == 2


# --------------------------------------------------------------------------- agent rounds: checkpoints, seeded studies


def test_new_best_trials_save_checkpoints_that_warm_start_a_training(tmp_path, mlflow_uri, digits_small):
    from dlagent.agent.observe import observe
    from dlagent.ml.training import evaluate, fit, load_checkpoint
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "warm", str(tmp_path / "artifacts"))
    parent, _ = tracking.find_or_create_run(client, experiment, "dag/run/warm", run_name="pipeline")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuning.create_study(url, "warm", space=SPACE, sampler_name="random", pruner_name="none", seed=1)
    config = TrainConfig(**BASE)
    tuning.run_worker(url, "warm", digits_small, config, None, 3, heartbeat_interval=HEARTBEAT, grace_period=GRACE,
                      tracking_uri=mlflow_uri, experiment_id=experiment, parent_run_id=parent)
    study = tuning.load_study(url, "warm")
    saved = {int(r.data.tags["optuna.trial_number"]) for r in client.search_runs([experiment], "tags.`dlagent.checkpoint` != ''")}
    # Trial 0 is always a new best; a later trial only when it beat every earlier one.
    new_bests = [t.number for t in study.trials if t.value > max((p.value for p in study.trials[:t.number]), default=float("-inf"))]
    assert saved == set(new_bests) and study.best_trial.number in saved

    obs = observe(client, experiment, parent, resources={"cpu_count": 1, "cpus_free": 1})
    assert obs.best_trial["number"] == study.best_trial.number and obs.best_trial["study"] == "warm"
    assert obs.best_trial["checkpoint"] == f"runs:/{obs.best_trial['run_id']}/checkpoint/model.keras"
    model = load_checkpoint(obs.best_trial["checkpoint"], tracking_uri=mlflow_uri)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, val_accuracy = model.evaluate(digits_small.x_val, digits_small.y_val, verbose=0)
    assert val_accuracy == pytest.approx(study.best_value, abs=1e-6)  # the very weights that earned the trial's value

    best = config.replace(**study.best_params, epochs=2, early_stopping_patience=2)
    result = fit(digits_small, best, initial_model=model)
    assert result.start_val_loss is not None and result.epochs_run == 2
    final_val_loss = result.model.evaluate(digits_small.x_val, digits_small.y_val, verbose=0)[0]
    assert final_val_loss <= result.start_val_loss + 1e-6  # never worse than where it started
    assert evaluate(result.model, digits_small)["test_accuracy"] > 0.5

    with pytest.raises(ConfigError) as missing:
        load_checkpoint(f"runs:/{obs.best_trial['run_id']}/checkpoint/nope.keras", tracking_uri=mlflow_uri)
    assert missing.value.field == "warm_start"
    with pytest.raises(ConfigError) as shapes:
        fit(_other_shape(digits_small), best, initial_model=model)
    assert shapes.value.field == "warm_start"


def _other_shape(splits):
    """The same data with one feature fewer: a checkpoint of the full data does not fit it."""
    import dataclasses

    return dataclasses.replace(splits, x_train=splits.x_train[..., :-1], x_val=splits.x_val[..., :-1], x_test=splits.x_test[..., :-1])


def test_a_seeded_round_replays_earlier_trials_for_its_pruner_and_sampler(tmp_path, digits_small):
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}}
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    config = TrainConfig(model="mlp", epochs=4, optimizer="sgd", early_stopping_patience=0, seed=0)
    tuning.create_study(url, "round0", space=space, sampler_name="random", pruner_name="hyperband", seed=0, max_resource=4)
    tuning.run_worker(url, "round0", digits_small, config, None, 5, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    first = tuning.load_study(url, "round0").get_trials()
    narrowed = {"learning_rate": {"type": "float", "low": 3e-3, "high": 0.3, "log": True}}
    inside = [t for t in first if 3e-3 <= t.params["learning_rate"] <= 0.3]
    assert 0 < len(inside) < len(first)  # the random draws of seed 0 fall on both sides

    created = tuning.create_study(url, "round1", space=narrowed, sampler_name="tpe", pruner_name="hyperband", seed=1,
                                  max_resource=4, seed_from=["round0"])
    assert created["seeded"] == {"copied": len(inside), "skipped": len(first) - len(inside), "from": ["round0"], "already_seeded": False}
    assert created["n_trials"]["COMPLETE"] == 0  # copies are not this round's trials
    copies = tuning.load_study(url, "round1").get_trials()
    assert [c.user_attrs[tuning.COPIED_ATTR] for c in copies] == [f"round0#{t.number}" for t in inside]
    for copy, old in zip(copies, inside):
        assert copy.state == old.state and copy.value == old.value and copy.params == old.params
        assert copy.intermediate_values == old.intermediate_values
        if copy.state.name == "COMPLETE":  # it reached every rung: the pruner recorded it in this study's brackets
            assert "completed_rung_0" in copy.system_attrs

    result = tuning.run_worker(url, "round1", digits_small, config, None, 3, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    summary = tuning.study_summary(url, "round1")
    assert len(result["trials"]) == 3 and summary["n_finished"] == 3
    own = [t for t in tuning.load_study(url, "round1").get_trials() if tuning.COPIED_ATTR not in t.user_attrs]
    assert summary["epochs_total"] == result["epochs_run"] == sum(t.user_attrs["epochs_run"] for t in own)
    assert all(3e-3 <= t.params["learning_rate"] <= 0.3 for t in own)
    # Seeding happens once: a re-run of the create step (a retried task) copies nothing more.
    again = tuning.create_study(url, "round1", space=narrowed, sampler_name="tpe", pruner_name="hyperband", seed=1,
                                max_resource=4, seed_from=["round0"])
    assert again["seeded"]["already_seeded"] and len(tuning.load_study(url, "round1").get_trials()) == len(inside) + 3
    with pytest.raises(ConfigError) as missing:
        tuning.create_study(url, "round2", space=narrowed, seed_from=["nope"])
    assert missing.value.field == "seed_from"
    with pytest.raises(ConfigError) as not_a_list:
        tuning.seed_study(url, "round1", "round0")
    assert not_a_list.value.field == "seed_from"
