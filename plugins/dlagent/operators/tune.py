"""Hyper-parameter search as Airflow tasks: create the study, N mapped workers, a summary.

The study lives in an RDB (``OptunaHook``) and is named from the DAG run, so a retried or
cleared task continues the same study instead of starting over, and N mapped worker tasks
(on N Airflow slots or Celery workers) share one search.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from dlagent.errors import ConfigError
from dlagent.hooks.optuna import OptunaHook
from dlagent.links import MLflowRunLink, TuningStudyLink
from dlagent.ml import mlflow_names as names
from dlagent.ml.tuning.settings import DEFAULT_PRUNER
from dlagent.operators.base import DlagentOperator, airflow_ids
from dlagent.settings import redact_url


def study_name_for(context) -> str:
    ids = airflow_ids(context)
    return f"{ids['dag_id']}.{ids['run_id']}"


def _optional(value):
    """A templated optional setting: an empty rendering (``""``) means "not set"."""
    return None if value in (None, "") else value


def tune_config_from(*, n_trials, n_workers=1, timeout_s=None, trial_epochs=None, min_trial_epochs=None, sampler="tpe",
                     pruner=DEFAULT_PRUNER, metric=None):
    """The :class:`~dlagent.ml.tuning.TuneConfig` of templated arguments (the Params): an empty
    rendering is "not set", a timeout of 0 is none. ``validate_inputs`` and the tuning tasks
    read the Params through this one function, so the first task refuses what ``create_study`` would."""
    from dlagent.ml.tuning.settings import TuneConfig

    timeout = _optional(timeout_s)
    return TuneConfig(n_trials=n_trials, n_workers=n_workers, timeout_s=None if timeout == 0 else timeout,
                      trial_epochs=_optional(trial_epochs), min_trial_epochs=_optional(min_trial_epochs), sampler=sampler,
                      pruner=pruner, metric=_optional(metric))


def primary_metric_of(data_options: dict | None):
    """The run's primary :class:`~dlagent.ml.metrics.Metric` from its data options (``task``, ``metric``)."""
    from dlagent.ml.metrics import resolve_metric

    options = data_options or {}
    return resolve_metric(options.get("task") or "classification", _optional(options.get("metric")))


class _TuneBase(DlagentOperator):
    """Shared arguments of the three tuning operators (all templated).

    ``trial_epochs`` caps each trial's epochs (the study's pruner's ``max_resource`` follows)
    and ``min_trial_epochs`` is the pruner's first rung (``min_resource``): the agent sets both
    when the final training continues the best trial, so trials only have to rank settings.
    ``metric`` left empty is the primary metric's ``val_<metric>`` (the data options' ``task`` and
    ``metric``); ``direction`` defaults to the metric's own (:func:`dlagent.ml.tuning.direction_for`).

    ``budget``: the agent's first-round plan (the ``tune`` section of an ``AgentOperator`` in
    phase ``budget``; ``None`` when the agent is off): its ``n_trials``, ``n_workers``,
    ``trial_epochs``, ``min_trial_epochs``, ``search_space`` and ``seed_studies`` replace the
    arguments of the same names. It is validated where it enters (an XCom).

    ``data``: the data set's summary from ``validate_inputs`` (optional): with ``model: auto`` its
    ``input_shape`` chooses the built-in and so the default search space; without it the data
    set is read for its shape.
    """

    template_fields: Sequence[str] = (
        "experiment_name", "dataset", "data_options", "train_config", "search_space", "n_trials", "timeout_s",
        "sampler", "pruner", "metric", "direction", "study_name", "trial_epochs", "min_trial_epochs", "budget",
        "data",
    )
    operator_extra_links = (MLflowRunLink(), TuningStudyLink())

    def __init__(self, *, dataset: str = "digits", data_options: dict | None = None, train_config: dict | None = None,
                 search_space: dict | None = None, n_trials: int = 10, timeout_s: int | None = None,
                 sampler: str = "tpe", pruner: str = DEFAULT_PRUNER, metric: str | None = None, direction: str | None = None,
                 study_name: str | None = None, trial_epochs: int | None = None, min_trial_epochs: int | None = None,
                 budget: dict | None = None, data: dict | None = None, optuna_conn_id: str = OptunaHook.default_conn_name,
                 **kwargs):
        super().__init__(**kwargs)
        self.budget = budget
        self.data = data
        self.dataset = dataset
        self.data_options = data_options
        self.train_config = train_config
        self.search_space = search_space
        self.n_trials = n_trials
        self.timeout_s = timeout_s
        self.sampler = sampler
        self.pruner = pruner
        self.metric = metric
        self.direction = direction
        self.study_name = study_name
        self.trial_epochs = trial_epochs
        self.min_trial_epochs = min_trial_epochs
        self.optuna_conn_id = optuna_conn_id

    @cached_property
    def optuna_hook(self) -> OptunaHook:
        return OptunaHook(optuna_conn_id=self.optuna_conn_id)

    def _planned(self) -> dict | None:
        """The agent's first-round plan, validated (``None``: run the arguments as given)."""
        from dlagent.agent.plan import validate_tune

        if self.budget in (None, ""):
            return None
        try:
            return validate_tune(self.budget)
        except ConfigError as exc:
            raise ConfigError(f"budget.{exc.field.removeprefix('tune.')}", exc.problem, exc.fix) from exc

    _loaded = None  # the splits _input_shape read, kept for a worker's trials

    def _settings(self, n_workers=1, *, space_needed=True):
        """Validate everything a trial needs, before any trial (and before any compute).

        Returns ``(tune, trial_config, study)``: the :class:`~dlagent.ml.tuning.TuneConfig`, the
        training settings of a trial (epochs capped at ``trial_epochs``) and the study's settings.
        With no search space given the study's is the model's default one, so ``model: auto`` is
        resolved first (:meth:`_input_shape`), unless no trial runs or ``space_needed`` is false;
        otherwise it stays ``auto`` and the worker resolves it on the data (``run_worker``).
        """
        from dlagent.ml import tuning
        from dlagent.ml.config import AUTO_MODEL, TrainConfig

        planned = self._planned()
        n_trials, trial_epochs, min_trial_epochs = ((planned["n_trials"], planned["trial_epochs"], planned["min_trial_epochs"])
                                                    if planned else (self.n_trials, self.trial_epochs, self.min_trial_epochs))
        tune = tune_config_from(n_trials=n_trials, n_workers=planned["n_workers"] if planned else n_workers, timeout_s=self.timeout_s,
                                trial_epochs=trial_epochs, min_trial_epochs=min_trial_epochs, sampler=self.sampler,
                                pruner=self.pruner, metric=self.metric)
        metric, direction = tune.resolve_objective(primary_metric_of(self.data_options), _optional(self.direction))
        trial_config = tune.trial_config(TrainConfig.from_dict(self.train_config or {}))
        space = (planned or {}).get("search_space") or self.search_space
        space = tuning.validate_search_space(space) if space else None  # a bad space is refused before the data is read
        transfer = bool(trial_config.init_from)  # the transfer space is the same for any model
        if not space and space_needed and tune.n_trials and trial_config.model == AUTO_MODEL and not transfer:
            trial_config = trial_config.for_input(self._input_shape(trial_config.seed))
        if not space and (trial_config.model != AUTO_MODEL or transfer):
            space = tuning.validate_search_space(tuning.default_search_space(trial_config.model, transfer=transfer))
        study = tuning.StudySettings(metric=metric, direction=direction, space=space, sampler=tune.sampler, pruner=tune.pruner,
                                     seed=trial_config.seed, min_resource=tune.first_rung(trial_config),
                                     max_resource=trial_config.epochs)
        return tune, trial_config, study

    def _input_shape(self, seed: int) -> tuple[int, ...]:
        """The samples' shape: from ``data`` (``validate_inputs``' summary) when given, else read from the data set."""
        if isinstance(self.data, dict) and self.data.get("input_shape"):
            return tuple(self.data["input_shape"])
        from dlagent import settings
        from dlagent.ml.data import load_dataset_with_options

        self._loaded = load_dataset_with_options(self.dataset, self.data_options, seed=seed, allowed_roots=settings.data_roots())
        return self._loaded.input_shape

    def _study_name(self, context) -> str:
        return self.study_name or study_name_for(context)


class CreateStudyOperator(_TuneBase):
    """Create the study (and its tables) once, before the mapped workers start.

    Workers that create a study concurrently race (a known Optuna issue on PostgreSQL), so
    this single task does it. Its return value is the list of worker indexes ``[0..n-1]``
    (empty when ``n_trials`` is 0), which the pipeline expands the worker task over (Airflow
    maps only over a task's return value); ``study_name``, ``n_trials`` and ``search_space``
    are pushed as XComs of their own.
    """

    template_fields: Sequence[str] = (*_TuneBase.template_fields, "n_workers", "seed_studies")
    output_keys = ("study_name", "n_trials", "search_space")  # pushed even when no task of the DAG reads them

    def __init__(self, *, n_workers: int = 1, seed_studies: list | None = None, **kwargs):
        super().__init__(**kwargs)
        self.n_workers = n_workers
        self.seed_studies = seed_studies

    def execute(self, context):
        return super().execute(context)["workers"]

    def run(self, context):
        from dlagent.ml import tuning

        tune, _, study = self._settings(n_workers=self.n_workers)
        planned = self._planned()
        seed_studies = planned["seed_studies"] if planned else self.seed_studies
        name = self._study_name(context)
        self.parent_run_id(context)  # the DAG run's parent run, where the study is logged ("Tuning study" link)
        if tune.n_trials == 0:
            self.log.info("n_trials is 0: tuning is skipped, training uses the given settings")
            return {"study_name": name, "workers": [], "n_trials": 0, "search_space": study.space}
        optional = sorted(set(seed_studies or []) - set(self.seed_studies or []))  # the agent's own (the champion's study): best effort
        created = tuning.create_study(self.optuna_hook.storage_url, name, study,
                                      seed_from=list(seed_studies) if seed_studies else None, optional_seeds=optional)
        if created.get("seeded"):
            seeded = created["seeded"]
            self.log.info("replayed %d trials of %s into study %s (%d outside its space skipped; not replayed: %s)", seeded["copied"],
                          seeded["from"], name, seeded["skipped"], seeded.get("missing", []) + seeded.get("incomparable", []))
        self.log.info("study %s ready in %s: %d trials over %d workers, space %s", name, redact_url(self.optuna_hook.storage_url),
                      tune.n_trials, tune.n_workers, study.space)
        return {"study_name": name, "workers": list(range(tune.n_workers)), "n_trials": tune.n_trials, "search_space": study.space}


class TuneOperator(_TuneBase):
    """One tuning worker: runs trials of the shared study until it holds ``n_trials``.

    Expand it over ``worker_index`` (``.partial(...).expand(worker_index=create.output["workers"])``).
    Each trial is an MLflow child run of the DAG run's parent run; pruning uses per-epoch
    validation metrics. Returns ``{"worker", "trials_run", "best_value"}``.
    """

    template_fields: Sequence[str] = (*_TuneBase.template_fields, "worker_index")

    def __init__(self, *, worker_index: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.worker_index = worker_index

    def run(self, context):
        from dlagent import settings
        from dlagent.ml import tuning
        from dlagent.ml.data import load_dataset_with_options

        tune, trial_config, study = self._settings()
        splits = self._loaded if self._loaded is not None else load_dataset_with_options(
            self.dataset, self.data_options, seed=trial_config.seed, allowed_roots=settings.data_roots())
        parent = self.parent_run_id(context)
        ids = airflow_ids(context)
        worker = tuning.WorkerSettings(
            storage_url=self.optuna_hook.storage_url, study_name=self._study_name(context), base_config=trial_config,
            n_trials=tune.n_trials, study=study, timeout_s=tune.timeout_s, worker_index=int(self.worker_index),
            experiment_id=self.hook.get_experiment_id(self.experiment_name), parent_run_id=parent,
            worker_tags={names.airflow_tag(key): str(value) for key, value in ids.items()}, allowed_roots=settings.data_roots(),
        )
        result = tuning.run_worker(worker, splits, client=self.hook.client)
        self.log.info("worker %s done: %s", self.worker_index, result)
        return {"worker": int(self.worker_index), **result}


class TuneSummaryOperator(_TuneBase):
    """Summarise the study for downstream tasks and log it on the DAG run's parent run.

    Returns ``{"study_name", "best_params", "best_value", "n_complete", "n_pruned", "n_fail", ...}``;
    ``best_params`` is ``{}`` when tuning was skipped, so training keeps its own settings.
    """

    def __init__(self, *, trigger_rule: str = "none_failed", **kwargs):
        super().__init__(trigger_rule=trigger_rule, **kwargs)

    def run(self, context):
        from dlagent.ml import tuning

        tune, _, study_settings = self._settings(space_needed=False)  # the metric is all it needs
        name = self._study_name(context)
        if tune.n_trials == 0:
            return {"study_name": name, "best_params": {}, "best_value": None, "skipped": True}
        study = tuning.load_study(self.optuna_hook.storage_url, name)
        summary = tuning.log_study_to_mlflow(study, self.hook.client, self.parent_run_id(context))
        self.log.info("study %s: best %s = %s with %s", name, study_settings.metric, summary.get("best_value"), summary.get("best_params"))
        return {"study_name": name, **summary}
