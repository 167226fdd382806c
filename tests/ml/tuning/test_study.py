"""The study's life cycle: created once and continued, never restarted; seeded from earlier rounds."""

from __future__ import annotations

import pytest
from dlagent.errors import ConfigError
from dlagent.ml import tuning
from dlagent.ml.config import TrainConfig
from dlagent.ml.tuning import StudySettings

from tests.ml.tuning.workers import BASE, SPACE, run_worker


def test_study_is_created_once_and_continued_never_restarted(tmp_path, digits_small):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = tuning.create_study(url, "s", StudySettings(space=SPACE, pruner="none", seed=0))
    run_worker(url, "s", digits_small, TrainConfig(**{**BASE, "epochs": 1}), 2)
    again = tuning.create_study(url, "s", StudySettings(space=SPACE, pruner="none", seed=0))
    assert first["created"] and not again["created"]
    assert again["n_trials"]["COMPLETE"] == 2
    # a re-run worker continues up to the requested total
    result = run_worker(url, "s", digits_small, TrainConfig(**{**BASE, "epochs": 1}), 3, study=StudySettings(space=SPACE))
    assert result["trials"] == [2] and result["study_n_trials"]["COMPLETE"] == 3
    with pytest.raises(ConfigError) as changed:
        tuning.create_study(url, "s", StudySettings(space=SPACE, pruner="median", seed=0))
    assert changed.value.field == "study_name" and "pruner" in str(changed.value)
    with pytest.raises(ConfigError) as other_space:
        run_worker(url, "s", digits_small, TrainConfig(**BASE), 3, study=StudySettings(space={"units": SPACE["units"]}))
    assert other_space.value.field == "search_space"
    with pytest.raises(ConfigError) as missing:
        run_worker(url, "nope", digits_small, TrainConfig(**BASE), 3, study=StudySettings(space=SPACE))
    assert missing.value.field == "study_name"
    with pytest.raises(ConfigError) as direction:
        tuning.create_study(url, "s2", StudySettings(metric="val_loss", direction="maximize", space=SPACE))
    assert direction.value.field == "direction"


def test_the_settings_are_recorded_once_as_a_new_study_records_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuning.create_study(url, "s", StudySettings(space=SPACE, metric="val_loss", max_resource=9))
    recorded = tuning.load_study(url, "s").user_attrs[tuning.SETTINGS_ATTR]
    assert recorded == {"metric": "val_loss", "direction": "minimize", "space": tuning.validate_search_space(SPACE),
                        "sampler": "tpe", "pruner": tuning.DEFAULT_PRUNER, "seed": 0, "min_resource": 1, "max_resource": 9,
                        "n_startup_trials": None}
    assert tuning.direction_for("val_loss") == "minimize" and tuning.direction_for("val_accuracy") == "maximize"


def test_same_seed_gives_the_same_trials(tmp_path, digits_small):
    def params(name: str, seed: int) -> list[dict]:
        url = f"sqlite:///{tmp_path / name}.db"
        tuning.create_study(url, name, StudySettings(space=SPACE, pruner="none", seed=seed))
        run_worker(url, name, digits_small, TrainConfig(**{**BASE, "epochs": 1}), 2)
        return [t.params for t in tuning.load_study(url, name).get_trials()]

    assert params("a", 3) == params("b", 3)


def test_a_seeded_round_replays_earlier_trials_for_its_pruner_and_sampler(tmp_path, digits_small):
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}}
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    config = TrainConfig(model="mlp", epochs=4, optimizer="sgd", early_stopping_patience=0, seed=0)
    tuning.create_study(url, "round0", StudySettings(space=space, sampler="random", pruner="hyperband", seed=0, max_resource=4))
    run_worker(url, "round0", digits_small, config, 5)
    first = tuning.load_study(url, "round0").get_trials()
    narrowed = {"learning_rate": {"type": "float", "low": 3e-3, "high": 0.3, "log": True}}
    inside = [t for t in first if 3e-3 <= t.params["learning_rate"] <= 0.3]
    assert 0 < len(inside) < len(first)  # the random draws of seed 0 fall on both sides

    round1 = StudySettings(space=narrowed, sampler="tpe", pruner="hyperband", seed=1, max_resource=4)
    created = tuning.create_study(url, "round1", round1, seed_from=["round0"])
    assert created["seeded"] == {"copied": len(inside), "skipped": len(first) - len(inside), "from": ["round0"], "already_seeded": False}
    assert created["n_trials"]["COMPLETE"] == 0  # copies are not this round's trials
    copies = tuning.load_study(url, "round1").get_trials()
    assert [c.user_attrs[tuning.COPIED_ATTR] for c in copies] == [f"round0#{t.number}" for t in inside]
    for copy, old in zip(copies, inside, strict=True):
        assert copy.state == old.state and copy.value == old.value and copy.params == old.params
        assert copy.intermediate_values == old.intermediate_values
        if copy.state.name == "COMPLETE":  # it reached every rung: the pruner recorded it in this study's brackets
            assert "completed_rung_0" in copy.system_attrs

    result = run_worker(url, "round1", digits_small, config, 3)
    summary = tuning.study_summary(url, "round1")
    assert len(result["trials"]) == 3 and summary["n_finished"] == 3
    own = [t for t in tuning.load_study(url, "round1").get_trials() if tuning.COPIED_ATTR not in t.user_attrs]
    assert summary["epochs_total"] == result["epochs_run"] == sum(t.user_attrs["epochs_run"] for t in own)
    assert all(3e-3 <= t.params["learning_rate"] <= 0.3 for t in own)
    # Seeding happens once: a re-run of the create step (a retried task) copies nothing more.
    again = tuning.create_study(url, "round1", round1, seed_from=["round0"])
    assert again["seeded"]["already_seeded"] and len(tuning.load_study(url, "round1").get_trials()) == len(inside) + 3
    with pytest.raises(ConfigError) as missing:
        tuning.create_study(url, "round2", StudySettings(space=narrowed), seed_from=["nope"])
    assert missing.value.field == "seed_from"
    with pytest.raises(ConfigError) as not_a_list:
        tuning.seed_study(url, "round1", "round0")
    assert not_a_list.value.field == "seed_from"
