"""Before the rounds: validate every setting, let each site check its own data, build the round-0 model."""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.operators.federated.common import FederatedOperator, RoundPlanningOperator, site_rows


class FederatedValidateOperator(FederatedOperator):
    """Check every setting and the coordinator's data set before any site reads data or trains.

    Returns the site indices (the ``check_site`` task expands over them) and pushes ``data``,
    the coordinator's data summary the sites are checked against. With ``site_datasets`` only
    the URIs' form is checked here: each site's data is read by its own task alone.
    """

    template_fields: Sequence[str] = (*FederatedOperator.template_fields, "site_queues", "compression_candidates", "gate_thresholds",
                                      "model_name")

    def __init__(self, *, site_queues: list | None = None, compression_candidates=None, gate_thresholds: dict | None = None,
                 model_name: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.site_queues = site_queues
        self.compression_candidates = compression_candidates  # the steps after the rounds, checked before the first one
        self.gate_thresholds = gate_thresholds
        self.model_name = model_name

    def run(self, context):
        from dlagent.ml.data_paths import parse_dataset_uri
        from dlagent.ml.federated.shards import partition
        from dlagent.ml.streaming import is_streamed
        from dlagent.operators.pipeline import check_later_steps, check_task_settings

        config, federated, sites = self.settings()
        if config.init_from:
            raise ConfigError("init_from", "federated training starts from a freshly built model.", "leave init_from empty.")
        check_later_steps(self.compression_candidates, self.gate_thresholds, self.model_name)
        for index, uri in enumerate(sites):
            try:
                parse_dataset_uri(uri)
            except ConfigError as exc:
                raise ConfigError(f"site_datasets[{index}]", exc.problem, exc.fix) from exc
        queues = self.site_queues or []
        if queues and (not isinstance(queues, list) or len(queues) != federated.n_shards
                       or not all(isinstance(q, str) and q.strip() for q in queues)):
            raise ConfigError("site_queues", f"must name one Celery queue per site ({federated.n_shards}), got {queues!r}.",
                              "give one queue name per site, in the sites' order, or leave it empty.")
        splits = self.evaluation_splits(config)
        # what the task and metric rule out for the steps after the rounds (int8_io, distill, a fraction's threshold, the champion's task)
        check_task_settings(config.for_input(splits.input_shape), splits, self.compression_candidates, self.gate_thresholds,
                            self.model_name, self.hook.client)
        if is_streamed(splits.x_train):
            raise ConfigError("dataset", "federated training holds each shard in memory; this data set is streamed (larger than "
                              "the cache budget, or cache 'stream').", "set the data option cache to 'memory' (if it fits).")
        if not sites:  # an experiment: the shards come from this data set, so check now that they can be made
            partition(splits.y_train, federated.n_shards, federated.partition, seed=federated.seed, alpha=federated.skew_alpha,
                      regression=splits.is_regression)
        self.push_xcom(context, "data", {**splits.summary(), "digests": splits.meaning_digests()})
        self.log.info("federated settings valid: %d sites (%s), %d rounds of %d local epochs, %s%s; held-out data %s",
                      federated.n_shards, "named data sets" if sites else f"{federated.partition} shards of the data set",
                      federated.rounds, federated.local_epochs, federated.strategy,
                      f" mu {federated.mu}" if federated.strategy == "fedprox" else "", splits.summary())
        return list(range(federated.n_shards))


class FederatedSiteCheckOperator(FederatedOperator):
    """One site reads its own data and checks it against the coordinator's (expand over ``site``):
    the same input shape, labels the global model can predict, enough rows. Returns only
    ``{"site", "samples", "label_counts"}`` (counts, never rows or the path)."""

    template_fields: Sequence[str] = (*FederatedOperator.template_fields, "site", "data")

    def __init__(self, *, site: int, data: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.site = site
        self.data = data

    def run(self, context):
        import numpy as np

        from dlagent import settings
        from dlagent.ml.federated.shards import MIN_SHARD_SAMPLES, label_counts

        config, federated, sites = self.settings()
        site, data = int(self.site), dict(self.data or {})
        field = f"site_datasets[{site}]" if sites else "n_shards"
        x, y, splits = site_rows(self.dataset, sites, self.data_options, config, federated, site, settings.data_roots())
        if list(x.shape[1:]) != list(data.get("input_shape", [])):
            raise ConfigError(field, f"site {site}'s rows have shape {list(x.shape[1:])}, the held-out data set's "
                              f"{data.get('input_shape')}.", "give every site data with the same features as 'dataset'.")
        if splits.task != data.get("task"):
            raise ConfigError(field, f"site {site}'s task is {splits.task!r}, the held-out data set's {data.get('task')!r}.",
                              "use the same task everywhere.")
        if sites:  # a site's own file: its class names and categories must mean what the coordinator's do
            mine, theirs = splits.meaning_digests(), dict(data.get("digests") or {})
            if mine["class_names"] != theirs.get("class_names"):
                raise ConfigError(field, f"site {site}'s class names are not the held-out data set's: labels given as names are "
                                  "numbered by each file's own sorted names, so the same number would mean another class.",
                                  "give every site the same set of class names, or integer labels 0..K-1 that mean the same "
                                  "class everywhere.")
            if mine["encoding"] != theirs.get("encoding"):
                raise ConfigError(field, f"site {site}'s categorical columns hold other values than the held-out data set's "
                                  "(or other columns): each file's one-hot encoding comes from its own values, so the model's "
                                  "inputs would mean other things at this site.",
                                  "give every site the same columns and categorical values, or encode them as numbers yourself "
                                  "with one shared vocabulary.")
        if len(y) < MIN_SHARD_SAMPLES:
            raise ConfigError(field, f"site {site} has {len(y)} training rows, fewer than {MIN_SHARD_SAMPLES}.", "give it more data.")
        counts = None
        if not splits.is_regression:
            if int(np.max(y)) >= int(data.get("num_classes", 0)):
                raise ConfigError(field, f"site {site} has label {int(np.max(y))}; the held-out data set has {data.get('num_classes')} "
                                  "classes.", "use the same classes everywhere.")
            counts = label_counts(y, [np.arange(len(y))], int(data["num_classes"]))[0]
        self.log.info("site %d: %d training rows%s", site, len(y), f", per class {counts}" if counts else "")
        return {"site": site, "samples": int(len(y)), "label_counts": counts}


class FederatedSetupOperator(RoundPlanningOperator):
    """Build the round-0 global model, log it (its architecture is what every site loads) and
    plan round 1.

    Returns round 1's assignments (:class:`~dlagent.operators.federated.common.RoundPlanningOperator`);
    pushes ``model_uri`` and the round-0 record ``round_result`` (``{"round": 0, "global_uri",
    "history": [], "metric", "bytes_per_site", "sites"}``).
    """

    template_fields: Sequence[str] = (*RoundPlanningOperator.template_fields, "site_checks")
    step = names.STEP_FEDERATED_SETUP

    def __init__(self, *, site_checks=None, **kwargs):
        super().__init__(**kwargs)
        self.site_checks = site_checks

    def run(self, context):
        from dlagent import settings
        from dlagent.agent.federated import POLICIES
        from dlagent.ml.federated.aggregate import update_bytes
        from dlagent.ml.federated.store import log_weights
        from dlagent.ml.model_store import log_keras_model
        from dlagent.ml.models import build_model
        from dlagent.validation import check_choice

        config, federated, _ = self.settings()
        check_choice("agent_policy", self.policy, POLICIES)  # before the model is built: the first plan is made after it
        splits = self.evaluation_splits(config)
        config = config.for_input(splits.input_shape)  # model 'auto': the built-in for these samples
        # a table's standardisation (and a regression target's scale) come from the coordinator's own data set, never a site's rows
        model = build_model(config, splits.input_shape, splits.num_classes, allowed_modules=settings.model_modules(),
                            adapt_data=splits.x_train, task=splits.task, targets=splits.y_train if splits.is_regression else None)
        checks = sorted((dict(c) for c in (self.site_checks or [])), key=lambda c: c.get("site", -1))
        with self.step_run(context) as run_id:
            client = self.hook.client
            client.log_dict(run_id, {"federated": federated.to_dict(), "train": config.to_dict(), "sites": checks},
                            names.FEDERATED_SETTINGS_FILE)
            model_uri = log_keras_model(client, run_id, model, splits.x_val[:2], encoding=splits.encoding)
            weights = model.get_weights()
            global_uri = log_weights(client, run_id, weights)
        self.log.info("round-0 global model %s (%d bytes of weights per site and round); sites' rows %s", model_uri,
                      update_bytes(weights), [c.get("samples") for c in checks])
        self.push_xcom(context, "model_uri", model_uri)
        record = {"round": 0, "global_uri": global_uri, "history": [], "metric": splits.metric,
                  "bytes_per_site": update_bytes(weights), "sites": federated.n_shards}
        return self.plan_next_round(context, config, federated, record)
