"""A round as tasks (each site's local update, then the sample-weighted average, which also plans
the next round) and the finalized global model the pipeline's compress, evaluate and deploy tasks take."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import SkipMixin

from dlagent.errors import ConfigError
from dlagent.ml import mlflow_names as names
from dlagent.operators.federated.common import ROUND_GROUP_PREFIX, FederatedOperator, RoundPlanningOperator, site_rows


class FederatedLocalOperator(FederatedOperator):
    """One site's update in one round (expand it over the round's assignments, the return value of
    the setup or of the previous round's aggregation): train from
    the round's global weights on the site's own rows; return ``{"round", "site", "weights_uri",
    "samples", "metrics"}``.

    Nothing of the data leaves the task: not the rows, not the path they were read from.
    """

    template_fields: Sequence[str] = (*FederatedOperator.template_fields, "assignment", "model_uri")
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
        x, y, splits = site_rows(self.dataset, sites, self.data_options, config, federated, site, settings.data_roots())
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


class FederatedAggregateOperator(RoundPlanningOperator, SkipMixin):
    """Average the round's updates by sample count into the next global model, score it on the
    held-out validation split, log it with the round's metrics, and plan the next round.

    Returns the next round's assignments; pushes the round's record ``round_result``
    (``{"round", "global_uri", "val", "history", "metric"}``). When the agent stops or the Params'
    rounds have run, the plan is empty and every later round's tasks are skipped at once (see
    :meth:`execute`).

    Exactly the updates of this round's drawn sites are averaged, each once: an update of another
    round, a repeated or missing site is refused rather than averaged.

    :param round_plan: this round's assignments (the setup's or the previous aggregation's return value).
    :param previous: the previous round's record (the setup's ``round_result`` for round 1).
    """

    template_fields: Sequence[str] = (*RoundPlanningOperator.template_fields, "updates", "round_plan", "previous", "model_uri")
    step = names.STEP_FEDERATED_AGGREGATE
    # Serialized with the DAG as a task that skips downstream (Airflow sets it for its own branch operators only):
    # without it the scheduler's NotPreviouslySkippedDep ignores this task's skip record, and a later round cleared
    # from the UI would try to expand over a plan that was never pushed and fail upstream instead of staying skipped.
    inherits_from_skipmixin = True

    def __init__(self, *, updates=None, round_plan: list | None = None, previous: dict | None = None, model_uri: str = "", **kwargs):
        super().__init__(**kwargs)
        self.updates = updates
        self.round_plan = round_plan
        self.previous = previous
        self.model_uri = model_uri

    def execute(self, context):
        """The step; then, if it planned no next round, skip every later round's tasks in one call.
        Left to Airflow, an empty plan skips the next round's tasks, which skips the round after
        it, one scheduling loop per round: after a 2-round run the finalize task waited through 18
        of them (about 20 s in ``airflow dags test``). Skipped through ``SkipMixin`` (and serialized as
        a task that skips downstream: ``inherits_from_skipmixin``), a cleared later round is skipped
        again (Airflow's ``NotPreviouslySkippedDep``)."""
        assignments = super().execute(context)
        if not assignments and self.has_dag():
            later = [task for task in self.get_flat_relatives(upstream=False) if task.task_id.startswith(ROUND_GROUP_PREFIX)]
            self.skip(context["ti"], later)  # raises DownstreamTasksSkipped when there are any: this task succeeds, they are skipped
        return assignments

    def run(self, context):
        from dlagent.ml import tracking
        from dlagent.ml.federated.aggregate import update_bytes, weighted_average
        from dlagent.ml.federated.rounds import global_scores
        from dlagent.ml.federated.store import log_weights, read_weights
        from dlagent.ml.metrics import get_metric
        from dlagent.ml.model_store import load_keras_model

        config, federated, _ = self.settings()
        from airflow.sdk.exceptions import AirflowSkipException

        assignments = list(self.round_plan or [])
        if not assignments:  # the round was not planned (the agent stopped): Airflow skips this task; a direct call says so
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
        result = {"round": round_number, "global_uri": global_uri, "val": val, "history": history, "metric": splits.metric}
        return self.plan_next_round(context, config, federated, result)


class FederatedFinalizeOperator(FederatedOperator):
    """Log the last round's global model as the run's trained model (a ``train`` step run), so
    compress, evaluate and deploy take it as they take a centrally trained one.

    :param round_results: every round's record (its aggregation's ``round_result`` XCom), in order
        (a round that did not run gives nothing); the last round that ran wins. Templated, so a re-run after other rounds
        ran computes anew instead of returning its recorded result.
    """

    template_fields: Sequence[str] = (*FederatedOperator.template_fields, "round_results", "model_uri")
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
        config = config.for_input(splits.input_shape)  # model 'auto': the built-in for these samples
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
