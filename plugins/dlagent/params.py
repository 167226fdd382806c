"""The trigger form of the pipeline DAGs: one described, JSON-schema-validated Param a setting.

Airflow validates these when a run is created (UI form, REST API, ``dags test -c``), so an
out-of-range value is refused before any task starts; the first task then checks what a
schema cannot (does the data set exist, is it well formed).
"""

from __future__ import annotations

from airflow.sdk import Param

from dlagent.ml.config import MODELS, OPTIMIZERS, TrainConfig

_DEFAULTS = TrainConfig()

TRAIN_PARAM_NAMES = ("model", "epochs", "batch_size", "learning_rate", "optimizer", "units", "dropout",
                     "early_stopping_patience", "seed")
DATA_PARAM_NAMES = ("max_samples", "label_column")
GATE_PARAM_NAMES = ("min_accuracy", "max_accuracy_drop_points", "max_size_bytes", "max_latency_ms_p95")


def pipeline_params() -> dict[str, Param]:
    return {
        "dataset": Param(
            "digits", type="string", minLength=1, title="Data set",
            description="Which data: 'digits' (bundled), 'mnist-idx:<dir>', 'npz:<file>' (arrays x, y), "
                        "'csv:<file>' (with a label column) or 'images:<dir>' (one sub-folder per class).",
        ),
        "model": Param(_DEFAULTS.model, type="string", enum=list(MODELS), title="Model",
                       description="'cnn' for images, 'mlp' for images or tabular data."),
        "epochs": Param(_DEFAULTS.epochs, type="integer", minimum=1, maximum=1000, title="Epochs",
                        description="Maximum training epochs; early stopping may end sooner."),
        "batch_size": Param(_DEFAULTS.batch_size, type="integer", minimum=1, maximum=65536, title="Batch size",
                            description="Samples per gradient step."),
        "learning_rate": Param(_DEFAULTS.learning_rate, type="number", exclusiveMinimum=0, maximum=10, title="Learning rate",
                               description="Optimizer step size, > 0 (Adam's usual 0.001)."),
        "optimizer": Param(_DEFAULTS.optimizer, type="string", enum=list(OPTIMIZERS), title="Optimizer",
                           description="Keras optimizer."),
        "units": Param(_DEFAULTS.units, type="integer", minimum=1, maximum=65536, title="Dense units",
                       description="Width of the hidden dense layer."),
        "dropout": Param(_DEFAULTS.dropout, type="number", minimum=0, exclusiveMaximum=1, title="Dropout",
                         description="Dropout rate before the dense layer, in [0, 1)."),
        "early_stopping_patience": Param(_DEFAULTS.early_stopping_patience, type="integer", minimum=0, maximum=10000,
                                         title="Early-stopping patience",
                                         description="Epochs without validation-loss improvement before stopping; 0 turns it off."),
        "seed": Param(_DEFAULTS.seed, type="integer", minimum=0, maximum=2**31 - 1, title="Seed",
                      description="Seeds the data split and the weights: the same seed gives the same run."),
        "max_samples": Param(None, type=["null", "integer"], minimum=30, title="Max samples",
                             description="Keep a stratified subset of this many samples (quick runs); empty for all."),
        "label_column": Param("label", type="string", minLength=1, title="CSV label column",
                              description="Name of the label column for 'csv:' data sets."),
        "n_trials": Param(6, type="integer", minimum=0, maximum=10000, title="Tuning trials",
                          description="Optuna trials in the hyper-parameter search (pruned trials count); 0 skips tuning."),
        "tuning_workers": Param(1, type="integer", minimum=1, maximum=64, title="Tuning workers",
                                description="Parallel worker tasks sharing one study (mapped tasks; one Airflow slot each)."),
        "tune_timeout_s": Param(None, type=["null", "integer"], minimum=1, title="Tuning time budget (s)",
                                description="Each worker stops starting trials after this many seconds; empty for no limit."),
        "sampler": Param("tpe", type="string", enum=["tpe", "random", "gp", "cmaes"], title="Sampler",
                         description="Optuna sampler: TPE (default), random, Gaussian process, CMA-ES (numeric spaces only)."),
        "pruner": Param("hyperband", type="string", enum=["hyperband", "median", "none"], title="Pruner",
                        description="Stops unpromising trials early from their per-epoch validation metric."),
        "tune_metric": Param("val_accuracy", type="string", enum=["val_accuracy", "val_loss"], title="Tuning objective",
                             description="Per-epoch validation metric the search optimises (accuracy up, loss down)."),
        "tune_trial_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=10000, title="Epochs per trial",
                                   description="Each tuning trial trains at most this many epochs (the search ranks settings on "
                                               "short runs); empty for the training's epochs. The agent sets it on a retune, "
                                               "when the final training continues the best trial's weights."),
        "tune_min_trial_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=10000, title="Epochs before pruning",
                                       description="No tuning trial is pruned before this many epochs (the pruner's first "
                                                   "rung; at most the trial's epochs); empty for 1. The agent sets it with "
                                                   "Epochs per trial."),
        "tune_seed_studies": Param([], type="array", items={"type": "string", "minLength": 1}, maxItems=32, title="Seed studies",
                                   description="Earlier Optuna studies (same storage) whose finished trials are replayed into this "
                                               "run's study, so its pruner and sampler start from them. The agent sets it on a retune."),
        "search_space": Param(None, type=["null", "object"], title="Search space (JSON)",
                              description='Empty for the model\'s default space, or e.g. {"learning_rate": {"type": "float", '
                                          '"low": 0.0001, "high": 0.1, "log": true}, "batch_size": {"type": "categorical", '
                                          '"choices": [32, 64, 128]}, "units": {"type": "int", "low": 32, "high": 256}}.'),
        "compression_candidates": Param(
            None, type=["null", "array"], items={"type": "object"}, maxItems=32, title="Compression candidates (JSON)",
            description='One mapped compress task per entry; empty for the defaults [{"quantization": "dynamic"}, '
                        '{"quantization": "int8"}, {"sparsity": 0.8, "quantization": "int8", "fine_tune_epochs": 2}]. '
                        "Keys: sparsity [0, 0.99], quantization (none, dynamic, float16, int8), fine_tune_epochs, "
                        "pruning_scope, pruning_schedule, distill, student_model, temperature, alpha, ...",
        ),
        "model_name": Param("dlagent-classifier", type="string", minLength=1, maxLength=200, pattern="^[^/@:]+$",
                            title="Registered model", description="MLflow Model Registry name; alias 'champion' is what is deployed."),
        "min_accuracy": Param(None, type=["null", "number"], minimum=0, maximum=1, title="Gate: minimum accuracy",
                              description="Test accuracy (fraction) the shipped model must reach; empty for none."),
        "max_accuracy_drop_points": Param(1.0, type=["null", "number"], minimum=0, maximum=100, title="Gate: maximum compression loss",
                                          description="Accuracy points the compressed model may lose against the uncompressed one."),
        "max_size_bytes": Param(None, type=["null", "integer"], minimum=1, title="Gate: maximum size (bytes)",
                                description="Largest model file that may ship; empty for no limit."),
        "max_latency_ms_p95": Param(None, type=["null", "number"], exclusiveMinimum=0, title="Gate: maximum p95 latency (ms)",
                                    description="Slowest single-sample p95 latency that may ship; empty for no limit."),
        "agent_policy": Param("rules", type="string", minLength=1, title="Agent policy",
                              description="'rules' (transparent defaults), 'learning' (a bandit that learns across runs), "
                                          "a dotted class path of your own Policy, or 'off' to run the Params as given."),
        "retune_budget": Param(0, type="integer", minimum=0, maximum=10, title="Retune budget",
                               description="How many follow-up pipeline runs the agent may trigger when it decides to retune."),
        "experiment_name": Param("dlagent", type="string", minLength=1, maxLength=200, title="MLflow experiment",
                                 description="MLflow experiment holding this run's parent and child runs."),
    }


def templated(names) -> dict[str, str]:
    """``{"epochs": "{{ params.epochs }}", ...}``; DAGs render templates as native objects."""
    return {name: "{{ params." + name + " }}" for name in names}


def check_pipeline_conf(conf: dict, *, field: str = "conf",
                        fix: str = "give a value the trigger form accepts (see the Param's description).") -> None:
    """Check a conf for ``dl_agent_pipeline`` against its Params, as the trigger form would.

    Raises :class:`dlagent.errors.ConfigError` naming ``<field>.<name>`` for an unknown key
    or a value a Param refuses, so a task that builds a conf fails before it triggers anything.
    """
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from dlagent.errors import ConfigError

    if not isinstance(conf, dict):
        raise ConfigError(field, f"must be a JSON object, got {type(conf).__name__}.", "pass a mapping of pipeline Params.")
    params = pipeline_params()
    checked = ParamsDict(params)
    for name, value in conf.items():
        if name not in params:
            raise ConfigError(f"{field}.{name}", "is not a Param of dl_agent_pipeline.",
                              f"use one of: {', '.join(sorted(params))}.")
        try:
            checked[name] = value
        except ParamValidationError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
            raise ConfigError(f"{field}.{name}", f"dl_agent_pipeline's Param refuses {value!r}: {first}", fix) from exc
