"""TrainOperator: train a Keras model on a named data set, tracked as an MLflow child run."""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.operators.base import DlagentOperator


class TrainOperator(DlagentOperator):
    """Train a model and return ``{"run_id", "model_uri", "metrics", "config"}`` as XCom.

    :param dataset: data set name, e.g. ``digits`` or ``npz:/data/x.npz`` (templated).
    :param train_config: training settings (see ``dlagent.ml.config.TrainConfig``) (templated).
    :param overrides: settings applied on top of ``train_config``, typically an XComArg with
        the best parameters of a tuning study or an agent's plan (templated).
    :param data_options: ``label_column``, ``max_samples``, ``val_fraction``, ``test_fraction``.
    """

    template_fields: Sequence[str] = ("experiment_name", "dataset", "train_config", "overrides", "data_options")
    ui_color = "#fde8d8"

    def __init__(self, *, dataset: str = "digits", train_config: dict | None = None, overrides: dict | None = None,
                 data_options: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset
        self.train_config = train_config
        self.overrides = overrides
        self.data_options = data_options

    def run(self, context):
        from dlagent import settings
        from dlagent.ml.config import TrainConfig
        from dlagent.ml.data import load_dataset_with_options
        from dlagent.ml.training import train

        config = TrainConfig.from_dict({**(self.train_config or {}), **(self.overrides or {})})
        splits = load_dataset_with_options(self.dataset, self.data_options, seed=config.seed, allowed_roots=settings.data_roots())
        self.log.info("training %s on %s: %s", config.model, splits.summary(), config.to_dict())
        with self.step_run(context, "train") as run_id:
            result, model_uri = train(splits, config, tracking_uri=self.hook.tracking_uri, run_id=run_id)
            self.hook.client.set_tag(run_id, "dlagent.model_uri", model_uri)
        self.log.info("model logged at %s", model_uri)
        return {"run_id": run_id, "model_uri": model_uri, "metrics": result.metrics(), "config": config.to_dict()}
