"""Start and finish a pipeline run: validate everything first, record the outcome last."""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.operators.base import DlagentOperator, airflow_ids


class ValidateInputsOperator(DlagentOperator):
    """Refuse bad settings and data before any compute, and open the DAG run's parent run.

    Checks the DAG run's conf for names that are not Params of the DAG (a misspelt setting
    would otherwise be ignored silently), the training settings, the search space (when
    given), the tuning settings (``tuning``: as ``create_study`` will read them), the
    compression candidates, the gate thresholds and the registered-model name, then loads the
    data set once (shapes, dtypes, NaN/inf, labels, class counts) and checks that the model
    can take its samples (a user's builder is imported, allow-list first, and
    built once on the data's shapes), so a bad Param fails here with a message naming the
    field, not minutes later after tuning and training.

    :param tuning: the tuning Params by :class:`~dlagent.ml.tuning.TuneConfig` field (``n_trials``,
        ``trial_epochs``, ``min_trial_epochs``, ``sampler``, ``pruner``, ``metric``, ...), or None.
    :param agent_policy: the run's ``agent_policy`` (default ``off``: the tuning Params run as given).
    :param allow_unknown_conf: accept conf keys that are not Params of the DAG (default: refused).
    """

    template_fields: Sequence[str] = ("experiment_name", "dataset", "train_config", "data_options", "compression_candidates",
                                      "gate_thresholds", "model_name", "search_space", "tuning", "agent_policy")
    ui_color = "#f3e8fd"

    def __init__(self, *, dataset: str, train_config: dict, data_options: dict | None = None, compression_candidates=None,
                 gate_thresholds: dict | None = None, model_name: str | None = None, search_space=None,
                 tuning: dict | None = None, agent_policy: str | None = "off", allow_unknown_conf: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset
        self.train_config = train_config
        self.data_options = data_options
        self.compression_candidates = compression_candidates
        self.gate_thresholds = gate_thresholds
        self.model_name = model_name
        self.search_space = search_space
        self.tuning = tuning
        self.agent_policy = agent_policy
        self.allow_unknown_conf = allow_unknown_conf

    def run(self, context):
        from dlagent import settings
        from dlagent.ml import tracking
        from dlagent.ml.builders import check_model_on_data
        from dlagent.ml.config import AUTO_MODEL, TrainConfig
        from dlagent.ml.data import load_dataset_with_options

        self._check_conf_keys(context)
        if not isinstance(self.experiment_name, str) or not self.experiment_name.strip():
            raise ConfigError("experiment_name", f"must be a non-empty MLflow experiment name, got {self.experiment_name!r}.",
                              "use e.g. 'dlagent'.")
        config = TrainConfig.from_dict(self.train_config or {})
        self._check_tuning(config)
        self._check_later_steps()
        splits = load_dataset_with_options(self.dataset, self.data_options, seed=config.seed, allowed_roots=settings.data_roots())
        if config.model == AUTO_MODEL:
            config = config.for_input(splits.input_shape)
            self.log.info("model 'auto': %r for samples of shape %s", config.model, tuple(splits.input_shape))
        if splits.impute and (config.model != "mlp" or config.init_from):
            raise ConfigError("data_options.missing", "'impute' is built into the 'mlp' model (it fills missing values inside the "
                              f"model); model {config.model!r}{' with init_from' if config.init_from else ''} cannot take them.",
                              "use model 'mlp' without init_from, or clean the data and use missing 'refuse'.")
        self._check_task(config, splits)
        if config.init_from:  # transfer learning: the source must load and fit the data (the model setting is not used)
            from dlagent.ml.transfer import adapt_source, load_source_model

            source = load_source_model(self.hook.client, config.init_from, allowed_roots=settings.data_roots())
            refuse_int8_io_on_raw_inputs(self.compression_candidates, config.model, splits, source=source)
            warn_on_other_pixel_units(self.log, source, splits)
            model = {"init_from": config.init_from, **adapt_source(source, splits.input_shape, splits.num_classes).params()}
        else:
            model = check_model_on_data(config, splits.x_val, splits.num_classes, allowed_modules=settings.model_modules(),
                                        task=splits.task)
        parent = self.parent_run_id(context)
        data_options = {k: v for k, v in (self.data_options or {}).items() if v not in (None, "")}
        tracking.log_params_safely(self.hook.client, parent, {**config.to_params(), "dataset": self.dataset,
                                                              **{f"{DATA_PARAM_PREFIX}{k}": v for k, v in data_options.items()},
                                                              "task": splits.task, "metric": splits.metric})
        summary = splits.summary()
        self.log.info("inputs valid: %s; model %s; MLflow parent run %s", summary, model, parent)
        return {"parent_run_id": parent, "data": summary, "config": config.to_dict()}

    def _check_task(self, config, splits) -> None:
        check_task_settings(config, splits, self.compression_candidates, self.gate_thresholds, self.model_name, self.hook.client)

    def _check_conf_keys(self, context) -> None:
        """Refuse conf keys the DAG has no Param for: Airflow accepts them and nothing reads them."""
        import difflib

        conf = getattr(context.get("dag_run"), "conf", None) or {}
        if self.allow_unknown_conf or not isinstance(conf, dict) or not self.has_dag():
            return
        known = sorted(self.dag.params)
        unknown = sorted(set(conf) - set(known))
        if known and unknown:
            name = unknown[0]
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            raise ConfigError(str(name), f"is not a Param of {self.dag.dag_id!r}, so it would be ignored"
                              f"{f' (also unknown: {unknown[1:]})' if len(unknown) > 1 else ''}.",
                              f"{hint}Remove it or fix its spelling; the Params are {known}.")

    def _check_tuning(self, config) -> None:
        """The tuning Params as ``create_study`` reads them: the objective is one every epoch logs,
        and the first rung fits the trials' epochs. With the agent on (``agent_policy`` not
        ``off``) the agent plans the trials' epochs: a first rung above the Params' trial epochs
        lengthens the trials (the rules policy), so only the training's epochs bound the rung.
        A field is named as the trigger form names it."""
        from dlagent.operators.tune import primary_metric_of, tune_config_from
        from dlagent.params import TUNE_PARAM_FIELDS

        if not self.tuning:
            return
        primary = primary_metric_of(self.data_options)  # its errors name the data options' own fields
        settings = dict(self.tuning)
        if self.agent_policy not in (None, "", "off"):
            settings["trial_epochs"] = None
        param_of = {field: param for param, field in TUNE_PARAM_FIELDS.items()}
        try:
            tune = tune_config_from(**settings)
            tune.resolve_objective(primary)
            tune.first_rung(tune.trial_config(config))
        except ConfigError as exc:
            raise ConfigError(param_of.get(exc.field, exc.field), exc.problem, exc.fix) from exc

    def _check_later_steps(self) -> None:
        from dlagent.ml.tuning import validate_search_space

        if self.search_space not in (None, ""):
            validate_search_space(self.search_space)
        check_later_steps(self.compression_candidates, self.gate_thresholds, self.model_name)


def check_task_settings(config, splits, compression_candidates, gate_thresholds, model_name, client) -> None:
    """What the task and primary metric rule out, before any compute: transfer, class weights
    and distillation are for classifiers; int8 input cannot carry a table's raw columns, nor
    images outside [0, 1] (the model standardises both in float32); a
    fraction metric's threshold is a fraction; the champion must be a model of the same task.
    Both first tasks call it (the pipeline's and the federated DAG's ``validate``)."""
    from dlagent.ml.gate import FRACTIONS, GateThresholds
    from dlagent.ml.registry import get_champion

    primary = splits.primary
    if splits.is_regression:
        if config.init_from:
            raise ConfigError("init_from", "transfer learning fine-tunes classifiers; this task is regression.",
                              "leave init_from empty (train from scratch), or use task 'classification'.")
        if config.class_weight != "none":
            raise ConfigError("class_weight", f"{config.class_weight!r} weights classes; this task is regression.", "use 'none'.")
        for index, candidate in enumerate(compression_candidates or []):
            if isinstance(candidate, dict) and candidate.get("distill"):
                raise ConfigError(f"compression_candidates[{index}].distill", "distillation learns a classifier's soft class "
                                  "probabilities; this task is regression.", "use pruning and quantization (distill: false).")
    from dlagent.ml.streaming import is_streamed

    if is_streamed(splits.x_train):
        for index, candidate in enumerate(compression_candidates or []):
            if isinstance(candidate, dict) and candidate.get("distill"):
                raise ConfigError(f"compression_candidates[{index}].distill", "distillation needs the training data in "
                                  "memory; this data set is streamed.", "set the data option cache to 'memory' (if it fits), "
                                  "or distill: false.")
    if not config.init_from:  # a transfer run's source is checked once loaded (run)
        refuse_int8_io_on_raw_inputs(compression_candidates, config.model, splits)
    thresholds = GateThresholds.from_dict(gate_thresholds) if gate_thresholds is not None else GateThresholds()
    if primary.name in FRACTIONS and thresholds.metric_threshold is not None and not 0.0 <= thresholds.metric_threshold <= 1.0:
        raise ConfigError("thresholds.metric_threshold", f"{primary.name} is a fraction in [0, 1], got {thresholds.metric_threshold}.",
                          "give e.g. 0.9 for 90%, not a percentage.")
    if model_name:  # a champion of the other task cannot be compared (evaluate re-measures one of this task)
        from dlagent.ml.metrics import METRICS

        champion = get_champion(client, model_name)
        stored = (champion or {}).get("metrics") or {}
        tasks = {METRICS[k[5:]].task for k in stored if k.startswith("test_") and k[5:] in METRICS}
        if tasks and splits.task not in tasks:
            raise ConfigError("model_name", f"the champion of {model_name!r} (version {champion['version']}) is a "
                              f"{tasks.pop()} model; this run is {splits.task}, so the two cannot be compared.",
                              "use a model_name of its own for this task.")


def check_later_steps(compression_candidates, gate_thresholds, model_name) -> None:
    """The settings of the steps after training (compression candidates, gate thresholds, the
    registered model's name), checked by the first task so that a typo fails before any compute."""
    from dlagent.ml.gate import GateThresholds
    from dlagent.ml.registry import check_model_name
    from dlagent.ml.selection import validate_candidates

    if compression_candidates not in (None, ""):
        validate_candidates(compression_candidates)
    if gate_thresholds is not None:
        GateThresholds.from_dict(gate_thresholds)
    if model_name is not None:
        check_model_name(model_name)


def refuse_int8_io_on_raw_inputs(candidates, model: str, splits, *, source=None) -> None:
    """Refuse ``int8_io`` on a model that standardises raw inputs first, in float32 (one int8
    input scale would round the small values to zero): the built-in ``mlp`` on a table, a built-in
    image model on images outside [0, 1] (:func:`dlagent.ml.models.pixel_statistics`), a transfer
    source holding such a layer. Before any compute; the compress task would refuse it after training."""
    int8_io = [i for i, c in enumerate(candidates or []) if isinstance(c, dict) and c.get("int8_io")]
    if not int8_io:
        return
    import numpy as np

    from dlagent.ml.models import IMAGE_MODELS, pixel_statistics
    from dlagent.ml.quantization import float_preprocessing

    field = f"compression_candidates[{int8_io[0]}].int8_io"
    fix = "use int8 without int8_io (float input, int8 inside)"
    if source is not None:
        if float_preprocessing(source):
            raise ConfigError(field, "integer input cannot carry the raw values the init_from model standardises first, in float32.",
                              f"{fix}.")
    elif len(splits.input_shape) == 1 and model == "mlp":
        raise ConfigError(field, "integer input cannot carry a table's raw columns: the 'mlp' standardises them first, in float32, "
                          "and one int8 scale would round the small columns to zero.", f"{fix}, or give your own model standardised inputs.")
    elif model in IMAGE_MODELS and isinstance(splits.x_train, np.ndarray) and pixel_statistics(splits.x_train):
        raise ConfigError(field, f"integer input cannot carry these images' raw values: they leave [0, 1], so the '{model}' "
                          "standardises them first, in float32.", f"{fix}, or save the images as pixels in [0, 1] (or as 8-bit integers).")


def warn_on_other_pixel_units(log, source, splits) -> None:
    """Say so when a transfer source and the new images disagree on units: a source that
    standardises images of other units (it was trained on values outside [0, 1]) given pixels in
    [0, 1], or a source without that layer given values outside [0, 1]. A warning, not a refusal:
    a builder's own source may take any units."""
    import numpy as np

    from dlagent.ml.models import STANDARDIZE_LAYER, nested_layer, pixel_statistics

    if len(splits.input_shape) not in (2, 3) or not isinstance(splits.x_train, np.ndarray):
        return
    outside, standardises = pixel_statistics(splits.x_train) is not None, nested_layer(source, STANDARDIZE_LAYER) is not None
    if standardises and not outside:
        log.warning("init_from: the source model standardises images it was trained on in other units (values outside [0, 1]); "
                    "these images are pixels in [0, 1]: give them in the source's units, or it sees near-constant inputs")
    elif outside and not standardises:
        log.warning("init_from: these images' values leave [0, 1], and the source model takes its inputs as given (a dlagent "
                    "model trained on pixels in [0, 1]): scale them to [0, 1] (x / 255 for 8-bit values) unless the source "
                    "was trained on these units")


DATA_PARAM_PREFIX = "data."  # the parent run's params of the data options (a follow-up run reads the same data)


class FinishPipelineOperator(DlagentOperator):
    """Close the parent run: FINISHED when no task of the DAG run failed, else FAILED.

    Runs with trigger rule ``all_done`` so a failed run is recorded as failed in MLflow
    instead of staying RUNNING forever. ``collect`` names the upstream results to keep on
    the parent run, as ``{"test_accuracy": "evaluate.test_accuracy", ...}``; results of
    tasks that did not run are left out.
    """

    template_fields: Sequence[str] = ("experiment_name", "collect")

    def __init__(self, *, collect: dict[str, str] | None = None, trigger_rule="all_done", **kwargs):
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.collect = collect

    def run(self, context):
        from airflow.sdk.exceptions import AirflowFailException

        from dlagent.ml import tracking

        parent = self.parent_run_id(context)
        summary = self._collect(context)
        metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracking.log_metrics(self.hook.client, parent, metrics)
        for name, value in summary.items():
            if isinstance(value, str):
                self.hook.client.set_tag(parent, names.summary_tag(name), value)
        failed, not_run = self._failed_tasks(context)
        status = "FAILED" if failed or not_run else "FINISHED"
        self.hook.client.set_terminated(parent, status=status)
        self.log.info("pipeline %s: MLflow parent run %s %s; summary %s", airflow_ids(context)["run_id"], parent, status, summary)
        if status == "FAILED":  # final: a retry would find the same states (clearing the failed task clears this one too)
            raise AirflowFailException(f"{', '.join(failed) or 'no task'} failed"
                                       f"{f' ({len(not_run)} later task(s) did not run: upstream failed)' if not_run else ''}; "
                                       f"MLflow parent run {parent} marked FAILED")
        return {"parent_run_id": parent, "status": status, **summary}

    def _collect(self, context) -> dict:
        summary = {}
        for name, source in (self.collect or {}).items():
            task_id, _, key = source.partition(".")
            value = context["ti"].xcom_pull(task_ids=task_id)
            for part in key.split(".") if key else []:
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                summary[name] = value
        return summary

    @staticmethod
    def _failed_tasks(context) -> tuple[list[str], list[str]]:
        """The DAG run's failed tasks and those that did not run because an upstream one failed
        (a mapped instance as ``<task_id>_<map_index>``), each sorted: the message names the
        task to open, not only a count of everything downstream of it."""
        ids = airflow_ids(context)
        states = context["ti"].get_task_states(dag_id=ids["dag_id"], run_ids=[ids["run_id"]]).get(ids["run_id"], {})
        return (sorted(task for task, state in states.items() if state == "failed"),
                sorted(task for task, state in states.items() if state == "upstream_failed"))
