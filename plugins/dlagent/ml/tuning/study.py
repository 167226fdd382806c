"""The study's life cycle: create it once, seed it from earlier rounds, load it, summarise it.

:func:`create_study` runs once, from one task, before the workers start (concurrent creation
races on PostgreSQL). It records the :class:`~dlagent.ml.tuning.settings.StudySettings` on the
study, and a re-run with the same name continues the study (never starts over).
"""

from __future__ import annotations

import logging

from dlagent.errors import ConfigError
from dlagent.ml.tuning.factories import make_pruner, make_sampler, make_storage, reading_storage
from dlagent.ml.tuning.settings import DEFAULT_PRUNER, StudySettings
from dlagent.ml.tuning.space import inside, suggest_params
from dlagent.settings import redact_url

log = logging.getLogger(__name__)

SETTINGS_ATTR = "dlagent.settings"  # study user attr holding the settings create_study recorded
EPOCHS_ATTR = "epochs_run"  # trial user attr: epochs this trial trained
TEST_ACCURACY_ATTR = "test_accuracy"  # trial user attr (only with record_test_accuracy=True)
COPIED_ATTR = "dlagent.copied_from"  # trial user attr: "<study>#<number>" of a trial replayed from an earlier study
SEEDED_ATTR = "dlagent.seeded_from"  # study user attr: the studies whose trials were replayed into it
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def create_study(storage_url: str, study_name: str, settings: StudySettings | None = None, *, seed_from=None,
                 optional_seeds=()) -> dict:
    """Create the study and its tables once (one task, before the workers); safe to re-run.

    ``seed_from`` names earlier studies in the same storage (an agent's earlier tuning
    rounds): their finished trials are replayed into the new study (:func:`seed_study`), so
    its sampler starts from what they learnt and its pruner compares new trials with them.
    ``optional_seeds``: those of ``seed_from`` that may be missing from the storage (skipped
    with a warning: e.g. the champion's study, proposed by the agent, may live in a storage
    since replaced); any other missing one is refused.

    The same name with different settings is refused. Returns small JSON: name, whether it was
    created, direction, metric, trial counts (and what seeding copied).
    """
    import optuna

    if not isinstance(study_name, str) or not study_name.strip():
        raise ConfigError("study_name", f"must be a non-empty string, got {study_name!r}.", "derive it from the DAG id and task id.")
    settings = (settings or StudySettings()).for_new_study()
    # Check the names before touching the database.
    make_sampler(settings.sampler, settings.seed, space=settings.space, n_startup_trials=settings.n_startup_trials)
    make_pruner(settings.pruner, settings.min_resource, settings.max_resource or max(settings.min_resource, 1))
    storage = make_storage(storage_url, heartbeat_interval=None, create_tables=True)
    created = study_name not in optuna.study.get_all_study_names(storage)
    study = optuna.create_study(storage=storage, study_name=study_name, direction=settings.direction, load_if_exists=True)
    if study.direction.name.lower() != settings.direction:
        raise ConfigError("direction", f"study {study_name!r} exists with direction {study.direction.name.lower()!r}, not {settings.direction!r}.",
                          "use a new study name or the same direction.")
    _record_settings(study, settings.to_dict())
    seeded = seed_study(storage_url, study_name, seed_from, optional=optional_seeds) if seed_from else None
    counts = state_counts(own_trials(study.get_trials(deepcopy=False)))
    log.info("study %r %s in %s (%s)", study_name, "created" if created else "continued", redact_url(storage_url), counts)
    out = {"study_name": study_name, "created": created, "direction": settings.direction, "metric": settings.metric, "n_trials": counts}
    if seeded is not None:
        out["seeded"] = seeded
    return out


def _record_settings(study, settings: dict) -> None:
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    if recorded != settings:
        changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        raise ConfigError(
            "study_name",
            f"study {study.study_name!r} exists with different settings "
            f"({', '.join(f'{k}: {recorded.get(k)!r} -> {settings.get(k)!r}' for k in changed)}).",
            "use a new study name to tune something else, or the same settings to continue it.",
        )


def recorded_settings(study) -> dict:
    """The settings :func:`create_study` recorded on ``study`` (``{}`` for a study made elsewhere)."""
    return study.user_attrs.get(SETTINGS_ATTR) or {}


def seed_study(storage_url: str, study_name: str, from_studies, *, optional=()) -> dict:
    """Replay the finished trials of ``from_studies`` into the (new) study ``study_name``.

    Why: an agent tunes in rounds, each its own study (a narrowed space is a new study:
    Optuna refuses to change a categorical's choices inside one). A fresh study's pruner has
    nobody to compare with, so its first trials run to the end; its sampler knows nothing.
    Replaying the earlier rounds' trials fixes both.

    Each COMPLETE or PRUNED trial whose parameters all lie inside this study's space is
    enqueued with those parameters, asked, its intermediate values reported again through
    ``should_prune`` (so the pruner records them in this study's own brackets and rungs) and
    told its original state and value. Copies carry the user attr ``dlagent.copied_from``
    (``"<study>#<number>"``) and are left out of the trial counts, the ``n_trials`` target and
    the epochs spent; trials outside the space are skipped. A study that measured another
    metric or direction is refused (its values would mean something else here). An
    ``optional`` study (one the agent proposed, e.g. the champion's) is best effort: missing,
    of another metric or direction, or of trials of another length (``max_resource``), it is
    skipped (listed under ``"missing"`` or ``"incomparable"``), and of its trials only those that
    varied no parameter outside this space are replayed. Runs once per study (user attr ``dlagent.seeded_from``): a re-run or a
    retried task does not copy twice.
    """
    import optuna
    from optuna.trial import TrialState

    if isinstance(from_studies, str) or not isinstance(from_studies, (list, tuple)) or not all(isinstance(n, str) and n for n in from_studies):
        raise ConfigError("seed_from", f"must be a list of study names, got {from_studies!r}.", 'give e.g. ["dl_agent_pipeline__run1__tune"].')
    storage = reading_storage(storage_url)
    reader = load_study(storage_url, study_name, storage=storage)
    if reader.user_attrs.get(SEEDED_ATTR) is not None:
        return {"copied": 0, "skipped": 0, "from": list(reader.user_attrs[SEEDED_ATTR]), "already_seeded": True}
    settings = recorded_settings(reader)
    space = settings.get("space")
    if space is None:
        raise ConfigError("search_space", f"study {study_name!r} records no search space to replay trials into.", "create it with a space.")
    names = [n for n in from_studies if n != study_name]
    missing = sorted(set(names) - set(optuna.study.get_all_study_names(storage)))
    if set(missing) - set(optional):
        absent = sorted(set(missing) - set(optional))[0]
        raise ConfigError("seed_from", f"no study {absent!r} in {redact_url(storage_url)}.", "name studies of the same storage (the earlier rounds').")
    for name in missing:
        log.warning("study %r is not in %s: its trials are not replayed into %r", name, redact_url(storage_url), study_name)
    names = [n for n in names if n not in missing]
    sources, incomparable = {}, []
    for name in names:
        source = load_study(storage_url, name, storage=storage)
        theirs = recorded_settings(source)
        measured = (theirs.get("metric", settings.get("metric")), source.direction.name.lower())
        if measured != (settings.get("metric"), reader.direction.name.lower()):
            if name not in optional:
                raise ConfigError("seed_from", f"study {name!r} measured {measured[0]} ({measured[1]}), this one "
                                  f"{settings.get('metric')} ({reader.direction.name.lower()}): its values mean something else here.",
                                  "seed from studies of the same metric and direction.")
            log.warning("study %r measured %s (%s), not %s: its trials are not replayed", name, *measured, settings.get("metric"))
            incomparable.append(name)
            continue
        if name in optional and theirs.get("max_resource") != settings.get("max_resource"):  # values at other epochs
            log.warning("study %r ran trials of at most %s epochs, this one %s: its trials are not replayed", name,
                        theirs.get("max_resource"), settings.get("max_resource"))
            incomparable.append(name)
            continue
        sources[name] = sorted(source.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)), key=lambda t: t.number)
    # The workers' pruner: max_resource as recorded, else the training epochs (the longest trial seen).
    max_resource = settings.get("max_resource") or max((max(t.intermediate_values, default=1) for ts in sources.values() for t in ts), default=1)
    pruner = make_pruner(settings.get("pruner") or DEFAULT_PRUNER, settings.get("min_resource") or 1, max_resource)
    study = load_study(storage_url, study_name, sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner, storage=storage)
    copied = skipped = 0
    for name, olds in sources.items():
        for old in olds:
            # An optional (agent-proposed) source's trial must have varied nothing this space leaves out: it is
            # replayed as if run at this study's base settings.
            if not inside(old.params, space) or (name in optional and set(old.params) - set(space)):
                skipped += 1
                continue
            _replay(study, space, old, origin=f"{name}#{old.number}")
            copied += 1
    study.set_user_attr(SEEDED_ATTR, list(sources))
    log.info("study %r seeded with %d trials of %s (%d outside its space skipped)", study_name, copied, list(sources), skipped)
    out = {"copied": copied, "skipped": skipped, "from": list(sources), "already_seeded": False}
    if missing:
        out["missing"] = missing
    if incomparable:
        out["incomparable"] = incomparable
    return out


def _replay(study, space: dict, old, *, origin: str) -> None:
    from optuna.trial import TrialState

    study.enqueue_trial({k: old.params[k] for k in space}, user_attrs={COPIED_ATTR: origin})
    trial = study.ask()
    suggest_params(trial, space)
    for step in sorted(old.intermediate_values):
        trial.report(old.intermediate_values[step], step)
        trial.should_prune()  # records the value in this study's rungs; the old state stands
    if old.state == TrialState.COMPLETE:
        study.tell(trial, old.value)
    else:
        study.tell(trial, state=TrialState.PRUNED)


def load_study(storage_url: str, study_name: str, *, sampler=None, pruner=None, storage=None):
    """Load an existing study (for workers and reports); a missing one is refused.

    Pass a ``storage`` from :func:`~dlagent.ml.tuning.factories.make_storage` to get
    heartbeats; otherwise the process's reading storage for the URL is used (no table creation).
    """
    import optuna

    storage = storage or reading_storage(storage_url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError as exc:
        raise ConfigError("study_name", f"no study {study_name!r} in {redact_url(storage_url)}.", "create it first with create_study (the tune task's first step).") from exc
    except Exception as exc:
        # A storage without Optuna's tables (never initialised) reads as a missing study.
        if "no such table" in str(exc) or "does not exist" in str(exc) or "UndefinedTable" in type(getattr(exc, "orig", exc)).__name__:
            raise ConfigError("study_name", f"no study {study_name!r} in {redact_url(storage_url)} (no Optuna tables).", "create it first with create_study.") from exc
        raise


# --------------------------------------------------------------------------- reading a study


def own_trials(trials) -> list:
    """The trials a study ran itself, without the ones replayed from earlier studies."""
    return [t for t in trials if COPIED_ATTR not in t.user_attrs]


def state_counts(trials) -> dict:
    counts = {s: 0 for s in STATES}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def trial_epochs(trial) -> int:
    """Epochs a trial trained: its ``epochs_run`` attr, else its reported epochs (a killed one)."""
    recorded = trial.user_attrs.get(EPOCHS_ATTR)
    return int(recorded) if recorded is not None else len(trial.intermediate_values)


def epochs_total(trials) -> int:
    return sum(trial_epochs(t) for t in trials)


def best_trial(study):
    """The best COMPLETE trial (replayed ones included), or ``None``."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def beats_best(study, value: float, direction: str) -> bool:
    """Whether ``value`` beats every COMPLETE trial so far (replayed ones included)."""
    best = best_trial(study)
    if best is None:
        return True
    return value > best.value if direction == "maximize" else value < best.value


def summary_of(study) -> dict:
    """Counts and epochs of the study's own trials; the best trial may be a replayed one
    (the best so far over the earlier rounds too)."""
    trials = own_trials(study.get_trials(deepcopy=False))
    best = best_trial(study)
    summary = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "metric": recorded_settings(study).get("metric"),
        "best_value": best.value if best else None,
        "best_params": dict(best.params) if best else {},
        "best_trial_number": best.number if best else None,
        "n_trials": state_counts(trials),
        "n_finished": sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED")),
        "epochs_total": epochs_total(trials),
    }
    if best is not None and TEST_ACCURACY_ATTR in best.user_attrs:
        summary["best_test_accuracy"] = best.user_attrs[TEST_ACCURACY_ATTR]
    return summary


def study_summary(storage_url: str, study_name: str) -> dict:
    """Small JSON about a study: best value and params, trials by state, epochs consumed."""
    return summary_of(load_study(storage_url, study_name))
