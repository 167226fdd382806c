"""Federated training as Airflow tasks: set up, then per round plan, train each site, average; finalize.

Each round is a task group of ``dl_agent_federated``: the agent's round plan, one mapped
local-training task per site and the aggregation. Only weights (as MLflow artifact URIs),
sample counts and metrics travel between them; a site's rows, and the path it read them from,
stay inside its own task. The finalized global model is logged like a trained one, so the
pipeline's compress, evaluate and deploy tasks take it unchanged.

The ML work is :mod:`dlagent.ml.federated`; the round plan is :mod:`dlagent.agent.federated`.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.operators.base import DlagentOperator


def _settings(train_config: dict | None, federated: dict | None, site_datasets):
    """The validated training and federated settings (``n_shards`` is the sites' count when they are named)."""
    from dlagent.ml.config import TrainConfig
    from dlagent.ml.federated.settings import FederatedConfig

    config = TrainConfig.from_dict(dict(train_config or {}))
    values = dict(federated or {})
    sites = list(site_datasets or [])
    if sites:
        for index, uri in enumerate(sites):
            if not isinstance(uri, str) or not uri.strip():
                raise ConfigError(f"site_datasets[{index}]", f"must be a data set URI, got {uri!r}.", "give e.g. 'npz:/site-a/data.npz'.")
        values["n_shards"] = len(sites)
    return config, FederatedConfig.from_dict(values), sites


def _site_rows(dataset: str, site_datasets: list, data_options: dict | None, config, federated, site: int, allowed_roots):
    """The training rows of ``site``: its own data set's training split, or its shard of ``dataset``'s."""
    from dlagent.ml.data import load_dataset_with_options
    from dlagent.ml.federated.shards import partition

    if site_datasets:
        splits = load_dataset_with_options(site_datasets[site], data_options, seed=config.seed, allowed_roots=allowed_roots)
        return splits.x_train, splits.y_train, splits
    splits = load_dataset_with_options(dataset, data_options, seed=config.seed, allowed_roots=allowed_roots)
    rows = partition(splits.y_train, federated.n_shards, federated.partition, seed=federated.seed, alpha=federated.skew_alpha,
                     regression=splits.is_regression)[site]
    return splits.x_train[rows], splits.y_train[rows], splits


class _FederatedOperator(DlagentOperator):
    template_fields: Sequence[str] = ("experiment_name", "dataset", "site_datasets", "data_options", "train_config", "federated")
    ui_color = "#e3f1e8"

    def __init__(self, *, dataset: str = "digits", site_datasets: list | None = None, data_options: dict | None = None,
                 train_config: dict | None = None, federated: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset
        self.site_datasets = site_datasets
        self.data_options = data_options
        self.train_config = train_config
        self.federated = federated

    def settings(self):
        return _settings(self.train_config, self.federated, self.site_datasets)

    def evaluation_splits(self, config):
        """The coordinator's held-out data: ``dataset``'s validation and test splits."""
        from dlagent import settings
        from dlagent.ml.data import load_dataset_with_options

        return load_dataset_with_options(self.dataset, self.data_options, seed=config.seed, allowed_roots=settings.data_roots())


class FederatedValidateOperator(_FederatedOperator):
    """Check every setting and the coordinator's data set before any site reads data or trains.

    Returns the site indices (the ``check_site`` task expands over them) and pushes ``data``,
    the coordinator's data summary the sites are checked against. With ``site_datasets`` only
    the URIs' form is checked here: each site's data is read by its own task alone.
    """

    template_fields: Sequence[str] = (*_FederatedOperator.template_fields, "site_queues")

    def __init__(self, *, site_queues: list | None = None, **kwargs):
        super().__init__(**kwargs)
        self.site_queues = site_queues

    def run(self, context):
        from dlagent.ml.data import parse_dataset_uri
        from dlagent.ml.federated.shards import partition
        from dlagent.ml.streaming import is_streamed

        config, federated, sites = self.settings()
        if config.init_from:
            raise ConfigError("init_from", "federated training starts from a freshly built model.", "leave init_from empty.")
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
        if is_streamed(splits.x_train):
            raise ConfigError("dataset", "federated training holds each shard in memory; this folder is streamed.", "set cache 'memory'.")
        if not sites:  # an experiment: the shards come from this data set, so check now that they can be made
            partition(splits.y_train, federated.n_shards, federated.partition, seed=federated.seed, alpha=federated.skew_alpha,
                      regression=splits.is_regression)
        self.push_xcom(context, "data", splits.summary())
        self.log.info("federated settings valid: %d sites (%s), %d rounds of %d local epochs, %s%s; held-out data %s",
                      federated.n_shards, "named data sets" if sites else f"{federated.partition} shards of the data set",
                      federated.rounds, federated.local_epochs, federated.strategy,
                      f" mu {federated.mu}" if federated.strategy == "fedprox" else "", splits.summary())
        return list(range(federated.n_shards))


class FederatedSiteCheckOperator(_FederatedOperator):
    """One site reads its own data and checks it against the coordinator's (expand over ``site``):
    the same input shape, labels the global model can predict, enough rows. Returns only
    ``{"site", "samples", "label_counts"}`` (counts, never rows or the path)."""

    template_fields: Sequence[str] = (*_FederatedOperator.template_fields, "site", "data")

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
        x, y, splits = _site_rows(self.dataset, sites, self.data_options, config, federated, site, settings.data_roots())
        if list(x.shape[1:]) != list(data.get("input_shape", [])):
            raise ConfigError(field, f"site {site}'s rows have shape {list(x.shape[1:])}, the held-out data set's "
                              f"{data.get('input_shape')}.", "give every site data with the same features as 'dataset'.")
        if splits.task != data.get("task"):
            raise ConfigError(field, f"site {site}'s task is {splits.task!r}, the held-out data set's {data.get('task')!r}.",
                              "use the same task everywhere.")
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


class FederatedSetupOperator(_FederatedOperator):
    """Build the round-0 global model and log it (its architecture is what every site loads).

    Returns ``{"parent_run_id", "model_uri", "global_uri", "round": 0, "history": [], "sites",
    "federated", "metric", "bytes_per_site"}``.
    """

    template_fields: Sequence[str] = (*_FederatedOperator.template_fields, "site_checks")
    step = names.STEP_FEDERATED_SETUP

    def __init__(self, *, site_checks=None, **kwargs):
        super().__init__(**kwargs)
        self.site_checks = site_checks

    def run(self, context):
        from dlagent import settings
        from dlagent.ml.federated.aggregate import update_bytes
        from dlagent.ml.federated.store import log_weights
        from dlagent.ml.model_store import log_keras_model
        from dlagent.ml.models import build_model

        config, federated, _ = self.settings()
        splits = self.evaluation_splits(config)
        # a table's standardisation (and a regression target's scale) come from the coordinator's own data set, never a site's rows
        model = build_model(config, splits.input_shape, splits.num_classes, allowed_modules=settings.model_modules(),
                            adapt_data=splits.x_train, task=splits.task, targets=splits.y_train if splits.is_regression else None)
        checks = sorted((dict(c) for c in (self.site_checks or [])), key=lambda c: c.get("site", -1))
        parent = self.parent_run_id(context)
        with self.step_run(context) as run_id:
            client = self.hook.client
            client.log_dict(run_id, {"federated": federated.to_dict(), "train": config.to_dict(), "sites": checks},
                            names.FEDERATED_SETTINGS_FILE)
            model_uri = log_keras_model(client, run_id, model, splits.x_val[:2], encoding=splits.encoding)
            weights = model.get_weights()
            global_uri = log_weights(client, run_id, weights)
        self.log.info("round-0 global model %s (%d bytes of weights per site and round); sites' rows %s", model_uri,
                      update_bytes(weights), [c.get("samples") for c in checks])
        return {"parent_run_id": parent, "model_uri": model_uri, "global_uri": global_uri, "round": 0, "history": [],
                "sites": federated.n_shards, "federated": federated.to_dict(), "metric": splits.metric,
                "bytes_per_site": update_bytes(weights)}


class FederatedRoundPlanOperator(_FederatedOperator):
    """The agent before round ``round_number``: which sites train, how many local epochs, at what
    learning rate, or stop (the round's tasks and all later rounds are then skipped).

    Returns one assignment per site (the round plan plus ``site``): the local task expands over
    them, and a site not drawn this round returns nothing.

    :param previous: the previous round's aggregation result (the setup's for round 1).
    :param policy: ``rules`` (:mod:`dlagent.agent.federated`) or ``off`` (the Params as given).
    """

    template_fields: Sequence[str] = (*_FederatedOperator.template_fields, "previous", "policy")

    def __init__(self, *, round_number: int, previous=None, policy: str = "rules", **kwargs):
        super().__init__(**kwargs)
        self.round_number = round_number
        self.previous = previous
        self.policy = policy

    def run(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        from dlagent.agent.federated import plan_round
        from dlagent.ml.federated.aggregate import select_sites
        from dlagent.ml.metrics import get_metric

        config, federated, _ = self.settings()
        previous = self.previous if isinstance(self.previous, dict) else {}
        if "global_uri" not in previous:
            raise ConfigError("previous", "must be the previous round's (or the setup's) result with its global_uri.",
                              "wire the round to the task before it.")
        metric = get_metric(previous.get("metric") or "accuracy")
        plan = plan_round(list(previous.get("history") or []), round_number=self.round_number, rounds=federated.rounds,
                          local_epochs=federated.local_epochs, learning_rate=config.learning_rate,
                          sites_per_round=federated.sites_per_round, n_sites=federated.n_shards, metric=metric.name,
                          higher_is_better=metric.higher_is_better, relative=metric.relative_points, policy=self.policy)
        for reason in plan.reasons:
            self.log.info("round %d, agent (%s): %s", self.round_number, self.policy, reason)
        parent = self.parent_run_id(context)
        self.hook.client.log_dict(parent, plan.to_dict(), names.federated_plan_file(self.round_number))
        if plan.action == "stop":
            raise AirflowSkipException(f"round {self.round_number} not run: {'; '.join(plan.reasons)}")
        sites = select_sites(federated.n_shards, plan.sites_per_round, self.round_number, federated.seed)
        shared = {**plan.to_dict(), "sites": sites, "global_uri": previous["global_uri"], "metric": metric.name}
        # one assignment per site, drawn or not: map index i is site i in every round (dlagent.policy routes it to its queue)
        return [{**shared, "site": site} for site in range(federated.n_shards)]


class FederatedLocalOperator(_FederatedOperator):
    """One site's update in one round (expand it over the round plan's assignments): train from
    the round's global weights on the site's own rows; return ``{"round", "site", "weights_uri",
    "samples", "metrics"}``.

    Nothing of the data leaves the task: not the rows, not the path they were read from.
    """

    template_fields: Sequence[str] = (*_FederatedOperator.template_fields, "assignment", "model_uri")
    step = names.STEP_FEDERATED_LOCAL

    def __init__(self, *, assignment: dict | None = None, model_uri: str = "", **kwargs):
        super().__init__(**kwargs)
        self.assignment = assignment
        self.model_uri = model_uri

    def run(self, context):
        from dlagent import settings
        from dlagent.ml import tracking
        from dlagent.ml.federated.local import local_update
        from dlagent.ml.federated.store import log_weights, read_weights
        from dlagent.ml.model_store import load_keras_model

        config, federated, sites = self.settings()
        plan = self.assignment if isinstance(self.assignment, dict) else {}
        site = plan.get("site")
        if not isinstance(site, int) or isinstance(site, bool) or not 0 <= site < federated.n_shards or "global_uri" not in plan:
            raise ConfigError("assignment", f"site {site!r} is not one of the {federated.n_shards} sites of a round plan.",
                              "expand this task over the round plan's assignments.")
        if site not in plan.get("sites", []):  # succeeds with nothing: a skipped instance would make the aggregation's trigger rule loose
            self.log.info("site %d is not drawn for round %s (drawn: %s): nothing to train", site, plan.get("round"), plan.get("sites"))
            return None
        client = self.hook.client
        x, y, splits = _site_rows(self.dataset, sites, self.data_options, config, federated, site, settings.data_roots())
        model = load_keras_model(client, self.model_uri)
        global_weights = read_weights(client, plan["global_uri"])
        round_number = int(plan["round"])
        with self.step_run(context) as run_id:
            client.set_tag(run_id, names.FEDERATED_ROUND_TAG, str(round_number))
            client.set_tag(run_id, names.FEDERATED_SITE_TAG, str(site))
            update = local_update(model, global_weights, x, y, config=config.replace(learning_rate=plan["learning_rate"]),
                                  epochs=int(plan["local_epochs"]), mu=federated.mu, task=splits.task,
                                  seed=federated.seed * 1000 + round_number * 64 + site)
            tracking.log_metrics(client, run_id, {"samples": update.samples, **update.metrics})
            weights_uri = log_weights(client, run_id, update.weights)
        self.log.info("round %d, site %d: %d rows, %d local epochs from %s, train loss %.4f -> %s", round_number, site, update.samples,
                      update.metrics["local_epochs"], plan["global_uri"], update.metrics["train_loss"], weights_uri)
        return {"round": round_number, "site": site, "weights_uri": weights_uri, "samples": update.samples, "metrics": update.metrics}


class FederatedAggregateOperator(_FederatedOperator):
    """Average the round's updates by sample count into the next global model, score it on the
    held-out validation split, log it with the round's metrics; return ``{"round", "global_uri",
    "val", "history", "metric"}``.

    Exactly the updates of this round's drawn sites are averaged, each once: an update of another
    round, a repeated or missing site is refused rather than averaged.
    """

    template_fields: Sequence[str] = (*_FederatedOperator.template_fields, "updates", "round_plan", "previous", "model_uri")
    step = names.STEP_FEDERATED_AGGREGATE

    def __init__(self, *, updates=None, round_plan: list | None = None, previous: dict | None = None, model_uri: str = "", **kwargs):
        super().__init__(**kwargs)
        self.updates = updates
        self.round_plan = round_plan
        self.previous = previous
        self.model_uri = model_uri

    def run(self, context):
        from dlagent.ml import tracking
        from dlagent.ml.federated.aggregate import update_bytes, weighted_average
        from dlagent.ml.federated.rounds import global_scores
        from dlagent.ml.federated.store import log_weights, read_weights
        from dlagent.ml.metrics import get_metric
        from dlagent.ml.model_store import load_keras_model

        config, _, _ = self.settings()
        from airflow.sdk.exceptions import AirflowSkipException

        assignments = list(self.round_plan or [])
        if not assignments:  # the round's plan was skipped (the agent stopped): its trigger rule still ran this task
            raise AirflowSkipException("this round was not planned: the agent stopped before it")
        plan = assignments[0] if isinstance(assignments[0], dict) else {}
        round_number = int(plan.get("round", 0))
        # a site not drawn this round returned nothing
        updates = sorted((dict(u) for u in (self.updates or []) if u is not None), key=lambda u: u.get("site", -1))
        stale = [u.get("site") for u in updates if u.get("round") != round_number]
        if stale:
            raise ConfigError("updates", f"sites {stale} sent updates of another round than {round_number}.", "re-run this round's sites.")
        got = [u.get("site") for u in updates]
        if got != sorted(plan.get("sites", [])):
            raise ConfigError("updates", f"round {round_number} drew sites {plan.get('sites')} but got updates from {got}.",
                              "every drawn site must send exactly one update; re-run the round.")
        client = self.hook.client
        averaged = weighted_average([(read_weights(client, u["weights_uri"]), int(u["samples"])) for u in updates])
        model = load_keras_model(client, self.model_uri)
        model.set_weights(averaged)
        splits = self.evaluation_splits(config)
        scores = global_scores(model, splits.x_val, splits.y_val, splits.task, get_metric(splits.metric))
        val = {key.replace("test_", "val_", 1): value for key, value in scores.items()}
        record = {"round": round_number, "sites": got, "samples": [int(u["samples"]) for u in updates],
                  "train_loss": [float(u["metrics"]["train_loss"]) for u in updates], "val": val,
                  "local_epochs": int(plan["local_epochs"]), "learning_rate": float(plan["learning_rate"]),
                  "sites_per_round": int(plan["sites_per_round"]),
                  "bytes_per_site": update_bytes(averaged)}
        history = [*list((self.previous or {}).get("history") or []), record]
        parent = self.parent_run_id(context)
        with self.step_run(context) as run_id:
            client.set_tag(run_id, names.FEDERATED_ROUND_TAG, str(round_number))
            global_uri = log_weights(client, run_id, averaged)
            tracking.log_metrics(client, run_id, {**val, "sites": len(got), "samples": sum(record["samples"])})
            client.log_dict(run_id, history, names.FEDERATED_HISTORY_FILE)
        tracking.log_metrics(client, parent, {f"federated_{key}": value for key, value in val.items()}, step=round_number)
        self.log.info("round %d: averaged %d sites (%d rows), global %s", round_number, len(got), sum(record["samples"]), val)
        return {"round": round_number, "global_uri": global_uri, "val": val, "history": history, "metric": splits.metric}


class FederatedFinalizeOperator(_FederatedOperator):
    """Log the last round's global model as the run's trained model (a ``train`` step run), so
    compress, evaluate and deploy take it as they take a centrally trained one.

    :param round_results: every round's aggregation result, in order (a round that did not run
        gives nothing); the last round that ran wins. Templated, so a re-run after other rounds
        ran computes anew instead of returning its recorded result.
    """

    template_fields: Sequence[str] = (*_FederatedOperator.template_fields, "round_results", "model_uri")
    step = names.STEP_TRAIN

    def __init__(self, *, round_results=None, model_uri: str = "", **kwargs):
        super().__init__(**kwargs)
        self.round_results = round_results
        self.model_uri = model_uri

    def run(self, context):
        from dlagent.ml import tracking
        from dlagent.ml.federated.store import read_weights
        from dlagent.ml.model_store import load_keras_model, log_keras_model
        from dlagent.ml.training import compile_for_training, evaluate

        results = [r for r in (self.round_results or []) if isinstance(r, dict) and "global_uri" in r]
        if not results:
            raise ConfigError("rounds", "no federated round finished.", "look at the first round's tasks for the error.")
        last = max(results, key=lambda r: r["round"])
        config, federated, _ = self.settings()
        client = self.hook.client
        model = load_keras_model(client, self.model_uri)
        model.set_weights(read_weights(client, last["global_uri"]))
        splits = self.evaluation_splits(config)
        compile_for_training(model, config, config.learning_rate, splits.task)  # the loss for the test report, and a model as train logs it
        metric = last["metric"]
        history = last["history"]
        best_val = float(last["val"][f"val_{metric}"])
        with self.step_run(context) as run_id:
            tracking.log_params_safely(client, run_id, {**config.to_params(), **{f"federated.{k}": v for k, v in federated.to_dict().items()}})
            for record in history:
                tracking.log_metrics(client, run_id, record["val"], step=record["round"] - 1)
            test = evaluate(model, splits)
            metrics = {f"best_val_{metric}": best_val, "rounds_run": len(history), "epochs_run": len(history),
                       "best_epoch": len(history) - 1, **test}
            tracking.log_metrics(client, run_id, metrics)
            client.log_dict(run_id, history, names.FEDERATED_HISTORY_FILE)
            model_uri = log_keras_model(client, run_id, model, splits.x_test[:2], encoding=splits.encoding)
            client.set_tag(run_id, names.MODEL_URI_TAG, model_uri)
        self.log.info("federated model after %d rounds: val_%s %.4f, %s; logged at %s", len(history), metric, best_val, test, model_uri)
        return {"run_id": run_id, "model_uri": model_uri, "metrics": metrics, "config": config.to_dict(), "metric": metric,
                "best_val_metric": best_val, "rounds_run": len(history)}
