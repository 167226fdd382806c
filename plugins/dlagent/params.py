"""The trigger form of the pipeline DAGs: one described, JSON-schema-validated Param a setting.

Airflow validates these when a run is created (UI form, REST API, ``dags test -c``), so an
out-of-range value is refused before any task starts; the first task then checks what a
schema cannot (does the data set exist, is it well formed).

Every setting with limits is generated from the settings dataclass that declares them
(:class:`~dlagent.ml.config.TrainConfig`, :class:`~dlagent.ml.tuning.TuneConfig`,
:class:`~dlagent.ml.gate.GateThresholds`): the form, the operators, the agent's plan and its
policies read the same numbers, so an agent cannot plan a conf the form refuses.
"""

from __future__ import annotations

import json

from airflow.sdk import Param

from dlagent.ml.config import CACHE_MODES, COLOR_MODES, MISSING_POLICIES, TrainConfig
from dlagent.ml.gate import GateThresholds
from dlagent.ml.metrics import METRICS, TASKS
from dlagent.ml.selection import DEFAULT_CANDIDATES, MAX_CANDIDATES
from dlagent.ml.tuning.settings import TuneConfig
from dlagent.validation import field_bounds, field_default

TRAIN_PARAM_NAMES = ("model", "model_args", "augment", "epochs", "batch_size", "learning_rate", "optimizer", "units", "hidden_layers",
                     "linear_path", "dropout", "l2", "ensemble", "class_weight", "early_stopping_patience", "seed", "init_from", "freeze", "fine_tune_learning_rate")
DATA_PARAM_NAMES = ("max_samples", "label_column", "drop_columns", "missing", "task", "metric", "cache", "image_size", "color_mode")
GATE_PARAM_NAMES = ("metric_threshold", "max_metric_drop_points", "max_size_bytes", "max_latency_ms_p95", "min_gain_over_baseline_points")
#: Param name -> the TuneConfig field it sets (the plan's ``tune`` section uses the field names).
TUNE_PARAM_FIELDS = {"n_trials": "n_trials", "tuning_workers": "n_workers", "tune_timeout_s": "timeout_s",
                     "tune_trial_epochs": "trial_epochs", "tune_min_trial_epochs": "min_trial_epochs",
                     "sampler": "sampler", "pruner": "pruner", "tune_metric": "metric"}


def declared_param(cls, field: str) -> Param:
    """The Param of a settings dataclass field: its default, its declared limits, its words."""
    bounds = field_bounds(cls, field)
    return Param(field_default(cls, field), **bounds.json_schema(), title=bounds.title or field,
                 description=bounds.description or "")


def pipeline_params() -> dict[str, Param]:
    """The trigger form of ``dl_agent_pipeline``: every bounded setting generated from its dataclass."""
    params = {
        "dataset": Param(
            "digits", type="string", minLength=1, title="Data set",
            description="Which data: 'digits' (bundled), 'mnist-idx:<dir>', 'npz:<file>' (arrays x, y), "
                        "'csv:<file>' (with a label column; numeric columns are standardised inside the model, non-numeric ones "
                        "one-hot encoded with the training split's vocabulary) or 'images:<dir>' (one sub-folder per class).",
        ),
        **{name: declared_param(TrainConfig, name) for name in TRAIN_PARAM_NAMES},
        "task": Param("classification", type="string", enum=list(TASKS), title="Task",
                      description="'classification': the labels are classes (numbers or names). 'regression': the labels "
                                  "are numeric targets (several: name the columns 'a,b' in CSV label column)."),
        "metric": Param(None, type=["null", "string"], enum=[None, *METRICS], title="Primary metric",
                        description="How models are compared everywhere (tuning, early stopping, compression budget, gate, "
                                    "agent): 'accuracy', 'auc' (binary), 'f1_macro'; 'rmse', 'mae', 'r2'. Empty: accuracy "
                                    "for classification, rmse for regression."),
        "max_samples": Param(None, type=["null", "integer"], minimum=30, title="Max samples",
                             description="Keep a random (for classes: stratified) subset of this many samples (quick runs); empty for all."),
        "label_column": Param("label", type="string", minLength=1, title="CSV label column",
                              description="Name of the label column for 'csv:' data sets (regression: several, as 'a,b')."),
        "drop_columns": Param(None, type=["null", "string"], title="CSV columns to leave out",
                              description="Header names of 'csv:' columns the model does not see, as 'id,email' (a key, a "
                                          "name, free text). A categorical column whose values are nearly all different is "
                                          "refused as an identifier until it is named here. Empty: every column but the label."),
        "missing": Param("refuse", type="string", enum=list(MISSING_POLICIES), title="Missing values",
                         description="'refuse': an empty CSV cell or a NaN feature is refused, naming where. 'impute' (tables, "
                                     "model 'mlp'): a number (or a date's calendar columns) is filled inside the model with the training split's "
                                     "median, a category with its most frequent value, each plus a was-missing indicator column."),
        "cache": Param("auto", type="string", enum=list(CACHE_MODES), title="Data cache",
                       description="'images:' folders and 'csv:' tables: 'auto' holds the decoded pixels or the table's float32 "
                                   "values in memory when they fit 256 MiB, and streams a larger data set from disk through "
                                   "tf.data (memory bounded by a few batches; a table goes to a scratch file in TMPDIR); "
                                   "'memory' or 'stream' force either."),
        "image_size": Param(None, type=["null", "string"], pattern=r"^[1-9][0-9]{0,3}(x[1-9][0-9]{0,3})?$", title="Image size",
                            description="'images:' folders: every image resized to this size, one side ('32') or "
                                        "'HEIGHTxWIDTH' ('64x48'), in memory and when streamed. Empty: the first image's size, scaled down to 256 on its longer side when larger. (No leading "
                                        "zero: '0x32' would render as the hexadecimal number 50.)"),
        "color_mode": Param("auto", type="string", enum=list(COLOR_MODES), title="Colour mode",
                            description="'images:' folders: 'grayscale' or 'rgb' converts every image; 'auto' is 'rgb' unless "
                                        "every image is grayscale."),
        **{name: declared_param(TuneConfig, field) for name, field in TUNE_PARAM_FIELDS.items()},
        "tune_seed_studies": Param([], type="array", items={"type": "string", "minLength": 1}, maxItems=32, title="Seed studies",
                                   description="Earlier Optuna studies (same storage) whose finished trials are replayed into this "
                                               "run's study, so its pruner and sampler start from them. The agent sets it on a retune."),
        "search_space": Param(None, type=["null", "object"], title="Search space (JSON)",
                              description='Empty for the model\'s default space, or e.g. {"learning_rate": {"type": "float", '
                                          '"low": 0.0001, "high": 0.1, "log": true}, "batch_size": {"type": "categorical", '
                                          '"choices": [32, 64, 128]}, "units": {"type": "int", "low": 32, "high": 256}}.'),
        "compression_candidates": Param(
            None, type=["null", "array"], items={"type": "object"}, maxItems=MAX_CANDIDATES, title="Compression candidates (JSON)",
            description=f"One mapped compress task per entry; empty for the agent's plan or the defaults "
                        f"{json.dumps(list(DEFAULT_CANDIDATES))}. Keys: sparsity [0, 0.99], quantization (none, dynamic, float16, "
                        "int8), fine_tune_epochs, pruning_scope, pruning_schedule, distill, student_model, temperature, alpha, ...",
        ),
        "model_name": Param("dlagent-classifier", type="string", minLength=1, maxLength=200, pattern="^[^/@:]+$",
                            title="Registered model", description="MLflow Model Registry name; alias 'champion' is what is deployed."),
        **{name: declared_param(GateThresholds, name) for name in GATE_PARAM_NAMES},
        "agent_policy": Param("rules", type="string", minLength=1, title="Agent policy",
                              description="'rules' (transparent defaults), 'learning' (a bandit that learns across runs), "
                                          "a dotted class path of your own Policy, or 'off' to run the Params as given."),
        "retune_budget": Param(0, type="integer", minimum=0, maximum=10, title="Retune budget",
                               description="How many follow-up pipeline runs the agent may trigger when it decides to retune."),
        "experiment_name": Param("dlagent", type="string", minLength=1, maxLength=200, title="MLflow experiment",
                                 description="MLflow experiment holding this run's parent and child runs."),
    }
    return params


def templated(names) -> dict[str, str]:
    """``{"epochs": "{{ params.epochs }}", ...}``; DAGs render templates as native objects."""
    return {name: "{{ params." + name + " }}" for name in names}


def tune_settings_templated() -> dict[str, str]:
    """The tuning Params by :class:`~dlagent.ml.tuning.TuneConfig` field: ``{"n_workers": "{{ params.tuning_workers }}", ...}``."""
    return {field: "{{ params." + name + " }}" for name, field in TUNE_PARAM_FIELDS.items()}


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


#: The federated settings a person sets (FederatedConfig's fields; its seed is the one ``seed`` Param).
FEDERATED_PARAM_NAMES = ("n_shards", "partition", "skew_alpha", "rounds", "local_epochs", "strategy", "mu", "clients_per_round")
#: The training settings a federated run uses (epochs are ``rounds`` x ``local_epochs``; it starts from scratch).
FEDERATED_TRAIN_PARAM_NAMES = ("model", "model_args", "augment", "batch_size", "learning_rate", "optimizer", "units", "hidden_layers",
                               "linear_path", "dropout", "l2", "seed")


def federated_params() -> dict[str, Param]:
    """The trigger form of ``dl_agent_federated``: the pipeline's data, model, compression, gate and
    registry Params plus the federated settings, generated from :class:`FederatedConfig`."""
    from dlagent.agent.federated import POLICIES
    from dlagent.ml.federated.settings import MAX_SHARDS, FederatedConfig

    pipeline = pipeline_params()
    keep = ("dataset", *FEDERATED_TRAIN_PARAM_NAMES, *DATA_PARAM_NAMES, "compression_candidates", "model_name", *GATE_PARAM_NAMES,
            "experiment_name")
    return {
        **{name: pipeline[name] for name in keep},
        "site_datasets": Param([], type="array", items={"type": "string", "minLength": 1}, maxItems=MAX_SHARDS, title="Site data sets",
                               description="One data set URI per site (each site's worker reads only its own); n_shards is then their "
                                           "number and 'dataset' is the coordinator's held-out data. Empty: split 'dataset' into n_shards."),
        "site_queues": Param([], type="array", items={"type": "string", "minLength": 1}, maxItems=MAX_SHARDS, title="Site queues",
                             description="One Celery queue per site, in the sites' order: site i's tasks run only on workers "
                                         "started with --queues <its queue> (the data stays on that site's machine). Empty: any worker."),
        **{name: declared_param(FederatedConfig, name) for name in FEDERATED_PARAM_NAMES},
        "agent_policy": Param("rules", type="string", enum=list(POLICIES), title="Agent policy",
                              description="'rules': between rounds the agent may stop when the global score has converged, halve "
                                          "the learning rate when it got worse, halve local epochs on client drift; 'off': the Params as given."),
    }
