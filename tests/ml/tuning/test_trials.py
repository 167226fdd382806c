"""Tuning in MLflow: every trial a child run, the study's summary and plots on the parent run, and
the checkpoints of new best trials that warm-start a training."""

from __future__ import annotations

import pytest
from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.ml import tracking, tuning
from dlagent.ml.config import TrainConfig
from dlagent.ml.tuning import StudySettings

from tests.ml.tuning.workers import BASE, SPACE, run_worker


def test_trials_are_mlflow_child_runs_and_the_parent_gets_the_study(tmp_path, mlflow_uri, digits_small):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "tune", str(tmp_path / "artifacts"))
    parent, _ = tracking.find_or_create_run(client, experiment, "dag/run/tune", run_name="tune")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}}
    tuning.create_study(url, "tracked", StudySettings(space=space, sampler="random", pruner="median", seed=0))
    config = TrainConfig(model="mlp", epochs=3, optimizer="sgd", early_stopping_patience=0)
    run_worker(url, "tracked", digits_small, config, 5, client=client, experiment_id=experiment, parent_run_id=parent,
               worker_tags={"map_index": 0})

    study = tuning.load_study(url, "tracked")
    children = client.search_runs([experiment], filter_string=names.tag_equals(names.PARENT_TAG, parent))
    assert len(children) == 5
    by_number = {int(r.data.tags[names.TRIAL_NUMBER_TAG]): r for r in children}
    for trial in study.get_trials():
        run = by_number[trial.number]
        assert run.data.tags[names.TRIAL_STATE_TAG] == trial.state.name
        assert run.data.tags[names.STUDY_TAG] == "tracked" and run.data.tags["map_index"] == "0"
        assert run.info.status == "FINISHED"
        assert float(run.data.params["learning_rate"]) == pytest.approx(trial.params["learning_rate"])
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert epochs == list(range(trial.user_attrs["epochs_run"]))
    assert {r.data.tags[names.TRIAL_STATE_TAG] for r in children} == {"COMPLETE", "PRUNED"}

    summary = tuning.log_study_to_mlflow(study, client, parent)
    run = client.get_run(parent)
    assert run.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert float(run.data.params["best_learning_rate"]) == pytest.approx(study.best_params["learning_rate"])
    assert run.data.metrics["trials_complete"] + run.data.metrics["trials_pruned"] == 5
    artifacts = {a.path for a in client.list_artifacts(parent, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/param_importances.png", "optuna/intermediate_values.png", "optuna/study_summary.json"} <= artifacts
    assert summary["n_finished"] == 5


def test_plots_are_png_files_drawn_without_pyplot(tmp_path):
    import optuna
    from dlagent.ml.tuning.plots import plot_study

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        trial.suggest_int("units", 8, 64)
        for step in (1, 2):
            trial.report(x * step, step)
        return x

    study.optimize(objective, n_trials=4)
    outcome = plot_study(study, tmp_path)
    assert outcome == {"optimization_history": None, "param_importances": None, "intermediate_values": None}
    for name in outcome:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importances_are_skipped_with_a_reason_below_two_complete_trials(tmp_path, mlflow_uri):
    import optuna
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "tune", str(tmp_path / "artifacts"))
    run_id, _ = tracking.find_or_create_run(client, experiment, "one", run_name="one")
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 0.01}, distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)}, value=0.9))
    tuning.log_study_to_mlflow(study, client, run_id)
    run = client.get_run(run_id)
    assert "2 complete trials" in run.data.tags[f"{names.PLOT_SKIPPED_TAG_PREFIX}param_importances"]
    assert "optuna/optimization_history.png" in {a.path for a in client.list_artifacts(run_id, "optuna")}


def test_new_best_trials_save_checkpoints_that_warm_start_a_training(tmp_path, mlflow_uri, digits_small):
    from dlagent.agent.observe import observe
    from dlagent.ml.model_store import load_checkpoint
    from dlagent.ml.training import evaluate, fit
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "warm", str(tmp_path / "artifacts"))
    parent, _ = tracking.find_or_create_run(client, experiment, "dag/run/warm", run_name="pipeline")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuning.create_study(url, "warm", StudySettings(space=SPACE, sampler="random", pruner="none", seed=1))
    config = TrainConfig(**BASE)
    run_worker(url, "warm", digits_small, config, 3, client=client, experiment_id=experiment, parent_run_id=parent)
    study = tuning.load_study(url, "warm")
    saved = {int(r.data.tags[names.TRIAL_NUMBER_TAG]) for r in client.search_runs([experiment], f"tags.`{names.CHECKPOINT_TAG}` != ''")}
    # Trial 0 is always a new best; a later trial only when it beat every earlier one.
    new_bests = [t.number for t in study.trials if t.value > max((p.value for p in study.trials[:t.number]), default=float("-inf"))]
    assert saved == set(new_bests) and study.best_trial.number in saved

    obs = observe(client, experiment, parent, resources={"cpu_count": 1, "cpus_free": 1})
    assert obs.best_trial["number"] == study.best_trial.number and obs.best_trial["study"] == "warm"
    assert obs.best_trial["checkpoint"] == f"runs:/{obs.best_trial['run_id']}/checkpoint/model.keras"
    model = load_checkpoint(client, obs.best_trial["checkpoint"])
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
        load_checkpoint(client, f"runs:/{obs.best_trial['run_id']}/checkpoint/nope.keras")
    assert missing.value.field == "warm_start"
    with pytest.raises(ConfigError) as shapes:
        fit(_other_shape(digits_small), best, initial_model=model)
    assert shapes.value.field == "warm_start"


def _other_shape(splits):
    """The same data with one feature fewer: a checkpoint of the full data does not fit it."""
    import dataclasses

    return dataclasses.replace(splits, x_train=splits.x_train[..., :-1], x_val=splits.x_val[..., :-1], x_test=splits.x_test[..., :-1])


def test_trials_search_the_depth_and_a_trials_checkpoint_has_its_depth(tmp_path, mlflow_uri, digits_small):
    """``hidden_layers`` in a search space: each trial builds its own depth (0 is a linear model),
    the run logs it, and the checkpoint a warm start would continue has that many hidden layers."""
    import keras
    from dlagent.ml.model_store import load_checkpoint
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = tracking.ensure_experiment(client, "depth", str(tmp_path / "artifacts"))
    parent, _ = tracking.find_or_create_run(client, experiment, "dag/run/depth", run_name="pipeline")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"hidden_layers": {"type": "categorical", "choices": [0, 2]}}
    tuning.create_study(url, "depth", StudySettings(space=space, sampler="random", pruner="none", seed=0))
    run_worker(url, "depth", digits_small, TrainConfig(**{**BASE, "epochs": 1}), 4, client=client, experiment_id=experiment,
               parent_run_id=parent)
    depths = set()
    for run in client.search_runs([experiment], filter_string=names.tag_equals(names.PARENT_TAG, parent)):
        depth = tuning.load_study(url, "depth").trials[int(run.data.tags[names.TRIAL_NUMBER_TAG])].params["hidden_layers"]
        depths.add(depth)
        assert run.data.params["hidden_layers"] == str(depth)
        if run.data.tags.get(names.CHECKPOINT_TAG):
            model = load_checkpoint(client, f"runs:/{run.info.run_id}/{run.data.tags[names.CHECKPOINT_TAG]}")
            assert sum(isinstance(layer, keras.layers.Dense) for layer in model.layers) == depth + 1
    assert depths == {0, 2}  # seed 0's random draws try both
