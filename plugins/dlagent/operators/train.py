"""TrainOperator: train a Keras model on a named data set, tracked as an MLflow child run."""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.operators.base import DlagentOperator


class TrainOperator(DlagentOperator):
    """Train a model and return ``{"run_id", "model_uri", "metrics", "config"}`` as XCom.

    :param dataset: data set name, e.g. ``digits`` or ``npz:/data/x.npz`` (templated).
    :param train_config: training settings (see ``dlagent.ml.config.TrainConfig``) (templated).
    :param overrides: settings applied on top of ``train_config``, typically an XComArg with
        the best parameters of a tuning study or an agent's plan; a list of such dicts is
        applied in order, later ones winning (templated).
    :param controller: an agent plan's ``controller`` section: the in-training controller
        (learning rate, momentum and gradient clipping on plateau or divergence); empty for none.
    :param data_options: ``label_column``, ``max_samples``, ``val_fraction``, ``test_fraction``.
    :param warm_start: an agent plan's ``warm_start``: the URI of a tuning trial's saved weights
        (``runs:/<run>/checkpoint/model.keras``) to continue from for ``epochs`` more epochs;
        empty to train from scratch. The train run is tagged ``dlagent.warm_start``.
    """

    template_fields: Sequence[str] = ("experiment_name", "dataset", "train_config", "overrides", "data_options", "controller", "warm_start")
    ui_color = "#fde8d8"
    step = names.STEP_TRAIN
    output_keys = ("model_uri",)  # what compress, evaluate and a user's own DAG take

    def __init__(self, *, dataset: str = "digits", train_config: dict | None = None, overrides: dict | None = None,
                 data_options: dict | None = None, controller: dict | None = None, warm_start: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.controller = controller
        self.warm_start = warm_start
        self.dataset = dataset
        self.train_config = train_config
        self.overrides = overrides
        self.data_options = data_options

    def run(self, context):
        from dlagent import settings
        from dlagent.agent.controller import controller_from_plan
        from dlagent.agent.plan import validate_warm_start
        from dlagent.ml.config import TrainConfig
        from dlagent.ml.data import load_dataset_with_options
        from dlagent.ml.model_store import load_checkpoint
        from dlagent.ml.training import train

        merged = dict(self.train_config or {})
        for index, layer in enumerate(self.overrides if isinstance(self.overrides, (list, tuple)) else [self.overrides]):
            if layer in (None, ""):
                continue
            if not isinstance(layer, dict):
                raise ConfigError(f"overrides[{index}]", f"must be a mapping of training settings, got {layer!r}.",
                                  "pass e.g. tune_summary.output['best_params'].")
            merged.update(layer)
        config = TrainConfig.from_dict(merged)
        warm_start = validate_warm_start(self.warm_start or None)
        callbacks = controller_from_plan(self.controller or None)
        splits = load_dataset_with_options(self.dataset, self.data_options, seed=config.seed, allowed_roots=settings.data_roots())
        config = config.for_input(splits.input_shape)  # model 'auto': the built-in for these samples
        self.log.info("training %s on %s: %s%s", config.model, splits.summary(), config.to_dict(),
                      f"; in-training controller {self.controller}" if callbacks else "")
        initial_model = None
        if warm_start:
            initial_model = load_checkpoint(self.hook.client, warm_start)
            self.log.info("warm start: continuing from %s for %d more epochs", warm_start, config.epochs)
        with self.step_run(context) as run_id:
            if warm_start:
                self.hook.client.set_tag(run_id, names.WARM_START_TAG, warm_start)
            result, model_uri = train(splits, config, client=self.hook.client, run_id=run_id, callbacks=callbacks,
                                      initial_model=initial_model, allowed_roots=settings.data_roots())
            for callback in callbacks:  # what the in-training controller changed, epoch by epoch, and why
                changes = list(getattr(callback, "changes", []))
                self.hook.client.log_dict(run_id, {"settings": self.controller, "changes": changes}, names.CONTROLLER_CHANGES_FILE)
                for change in changes:
                    self.log.info("controller, epoch %s: %s %s -> %s because %s", change.get("epoch"), change.get("setting"),
                                  change.get("old"), change.get("new"), change.get("because"))
            self.hook.client.set_tag(run_id, names.MODEL_URI_TAG, model_uri)
        self.log.info("model logged at %s", model_uri)
        return {"run_id": run_id, "model_uri": model_uri, "metrics": result.metrics(), "config": config.to_dict(),
                "metric": result.metric, "best_val_metric": result.best_val_metric}
