"""EvaluateOperator: measure a logged model on the held-out test split."""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.operators.base import DlagentOperator


class EvaluateOperator(DlagentOperator):
    """Evaluate ``model_uri`` on the test split of ``dataset`` (same seed as training).

    Returns ``{"run_id", "model_uri", "test_accuracy", "test_loss"}``.
    """

    template_fields: Sequence[str] = ("experiment_name", "model_uri", "dataset", "data_options", "seed")
    ui_color = "#e3f6e3"

    def __init__(self, *, model_uri: str, dataset: str = "digits", data_options: dict | None = None, seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        self.model_uri = model_uri
        self.dataset = dataset
        self.data_options = data_options
        self.seed = seed

    def run(self, context):
        from dlagent import settings
        from dlagent.ml import tracking
        from dlagent.ml.data import load_dataset_with_options
        from dlagent.ml.training import evaluate, load_keras_model

        if not isinstance(self.model_uri, str) or not self.model_uri:
            raise ConfigError("model_uri", f"must be an MLflow model URI, got {self.model_uri!r}.", "pass the train task's model_uri.")
        splits = load_dataset_with_options(self.dataset, self.data_options, seed=int(self.seed), allowed_roots=settings.data_roots())
        with self.step_run(context, "evaluate") as run_id:
            model = load_keras_model(self.model_uri, tracking_uri=self.hook.tracking_uri)
            metrics = evaluate(model, splits)
            tracking.log_params_safely(self.hook.client, run_id, {"model_uri": self.model_uri, "dataset": self.dataset, "seed": self.seed})
            tracking.log_metrics(self.hook.client, run_id, metrics)
        self.log.info("test_accuracy %.4f, test_loss %.4f on %d test samples", metrics["test_accuracy"], metrics["test_loss"], len(splits.y_test))
        return {"run_id": run_id, "model_uri": self.model_uri, **metrics}
