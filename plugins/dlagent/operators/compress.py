"""Compression as Airflow tasks: validate the candidate list once, then one mapped task per candidate.

Airflow maps a task only over another task's *return value*, so
:class:`CompressionCandidatesOperator` returns the validated list of candidate settings and
:class:`CompressOperator` is expanded over it (``.expand(compression=candidates.output)``).
The width of the fan-out is the length of that list: a Param, or an agent's plan.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.operators.base import DlagentOperator


class CompressionCandidatesOperator(DlagentOperator):
    """Validate the compression candidates and return them as a list (what ``compress`` maps over).

    :param candidates: a list of ``CompressionConfig`` dicts given by a person (templated: a Param).
    :param planned: the agent's list (``plan["compress"]``, templated), used when ``candidates`` is empty;
        with neither, :data:`dlagent.ml.selection.DEFAULT_CANDIDATES`.
    :param seed: applied to candidates that give none, so a run is reproducible.
    """

    template_fields: Sequence[str] = ("candidates", "planned", "seed")
    ui_color = "#fff4d6"

    def __init__(self, *, candidates: list | None = None, planned: list | None = None, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.candidates = candidates
        self.planned = planned
        self.seed = seed

    def run(self, context):
        from dlagent.ml.compression import CompressionConfig
        from dlagent.ml.selection import default_candidates, validate_candidates

        if self.candidates not in (None, "", []):
            candidates, source = self.candidates, "the compression_candidates Param"
        elif self.planned not in (None, "", []):
            candidates, source = self.planned, "the agent's plan"
        else:
            candidates, source = default_candidates(), "the defaults"
        self.log.info("compression candidates from %s", source)
        if self.seed not in (None, "") and isinstance(candidates, list):
            candidates = [{"seed": self.seed, **c} if isinstance(c, dict) else c for c in candidates]
        validated = [CompressionConfig.from_dict(c).to_dict() for c in validate_candidates(candidates)]
        for index, candidate in enumerate(validated):
            self.log.info("candidate %d: sparsity %.2f, quantization %s, distill %s", index, candidate["sparsity"],
                          candidate["quantization"], candidate["distill"])
        return validated


class CompressOperator(DlagentOperator):
    """Build one compressed candidate from a logged model and measure it on the test split.

    Loads the Keras model behind ``model_uri`` (never through XCom), distils / prunes /
    quantizes it as ``compression`` says, measures size, gzip size, the test metrics (through the
    TFLite interpreter), single-sample latency p50/p95, throughput and the sparsity of the
    weights, and logs all of it as this task's MLflow child run together with a logged model
    (the compressed Keras model with signature and input example, the ``.tflite`` file and the
    labels inside it). Returns ``{"run_id", "candidate", "model_uri", "config", "metrics"}``.
    """

    template_fields: Sequence[str] = ("experiment_name", "model_uri", "dataset", "data_options", "seed", "compression")
    ui_color = "#fff4d6"
    step = names.STEP_COMPRESS

    def __init__(self, *, model_uri: str, compression: dict, dataset: str = "digits", data_options: dict | None = None,
                 seed: int = 42, latency_runs: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.model_uri = model_uri
        self.compression = compression
        self.dataset = dataset
        self.data_options = data_options
        self.seed = seed
        self.latency_runs = latency_runs

    def run(self, context):
        from dlagent import settings
        from dlagent.ml import tracking
        from dlagent.ml.compression import CompressionConfig, compress
        from dlagent.ml.data import load_dataset_with_options
        from dlagent.ml.model_store import load_keras_model, log_keras_model, resolve_logged_model

        config = CompressionConfig.from_dict(self.compression)
        if config.distill and (self.data_options or {}).get("task") == "regression":
            raise ConfigError("compression.distill", "distillation learns a classifier's soft class probabilities; this task is regression.",
                              "use pruning and quantization for a regression model (distill: false).")
        client = self.hook.client
        resolve_logged_model(client, self.model_uri)  # a missing model is refused before any compute
        splits = load_dataset_with_options(self.dataset, self.data_options, seed=int(self.seed), allowed_roots=settings.data_roots())
        config = config.for_input(splits.input_shape)  # a distilled student 'auto': the cnn or the mlp
        with self.step_run(context) as run_id:
            model = load_keras_model(client, self.model_uri)
            self.log.info("compressing %s as %s: %s", self.model_uri, config.label, config.to_dict())
            candidate = compress(model, splits, config, latency_runs=int(self.latency_runs))
            tracking.log_params_safely(client, run_id, {**config.to_dict(), "source_model_uri": self.model_uri})
            tracking.log_metrics(client, run_id, candidate.metrics)
            client.set_tag(run_id, names.CANDIDATE_TAG, candidate.name)
            model_uri = log_keras_model(client, run_id, candidate.keras_model, splits.x_test[:2], labels=splits.class_names,
                                        tflite_bytes=candidate.tflite_bytes, encoding=splits.encoding)
            client.set_tag(run_id, names.MODEL_URI_TAG, model_uri)
        m = candidate.metrics
        self.log.info("%s: %d bytes (gzip %d), validation %s %.4f (chosen on), test %.4f, latency p50 %.3f ms, sparsity %.2f; "
                      "logged as %s", candidate.name, m["size_bytes"], m["gzip_size_bytes"], splits.metric,
                      m[splits.primary.val_key], m[splits.primary.test_key],
                      m["latency_ms_p50"], m["sparsity"], model_uri)
        return {"run_id": run_id, "candidate": candidate.name, "model_uri": model_uri, "config": config.to_dict(),
                "metrics": {k: v for k, v in m.items() if isinstance(v, (int, float))}}
