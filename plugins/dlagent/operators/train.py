"""TrainOperator: train a Keras model on a named data set, tracked as an MLflow child run."""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
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
    """

    template_fields: Sequence[str] = ("experiment_name", "dataset", "train_config", "overrides", "data_options", "controller")
    ui_color = "#fde8d8"

    def __init__(self, *, dataset: str = "digits", train_config: dict | None = None, overrides: dict | None = None,
                 data_options: dict | None = None, controller: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.controller = controller
        self.dataset = dataset
        self.train_config = train_config
        self.overrides = overrides
        self.data_options = data_options

    def run(self, context):
        from dlagent import settings
        from dlagent.agent.controller import controller_from_plan
        from dlagent.ml.config import TrainConfig
        from dlagent.ml.data import load_dataset_with_options
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
        callbacks = controller_from_plan(self.controller or None)
        splits = load_dataset_with_options(self.dataset, self.data_options, seed=config.seed, allowed_roots=settings.data_roots())
        self.log.info("training %s on %s: %s%s", config.model, splits.summary(), config.to_dict(),
                      f"; in-training controller {self.controller}" if callbacks else "")
        with self.step_run(context, "train") as run_id:
            result, model_uri = train(splits, config, tracking_uri=self.hook.tracking_uri, run_id=run_id, callbacks=callbacks)
            for callback in callbacks:  # what the in-training controller changed, epoch by epoch, and why
                changes = list(getattr(callback, "changes", []))
                self.hook.client.log_dict(run_id, {"settings": self.controller, "changes": changes}, "controller_changes.json")
                for change in changes:
                    self.log.info("controller, epoch %s: %s %s -> %s because %s", change.get("epoch"), change.get("setting"),
                                  change.get("old"), change.get("new"), change.get("because"))
            self.hook.client.set_tag(run_id, "dlagent.model_uri", model_uri)
        self.log.info("model logged at %s", model_uri)
        return {"run_id": run_id, "model_uri": model_uri, "metrics": result.metrics(), "config": config.to_dict()}
