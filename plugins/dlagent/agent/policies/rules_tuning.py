"""The rules policy's tuning decisions (item 2 of :mod:`dlagent.agent.policies.rules`): the first
round planned before any trial (:meth:`TuningRules.budget`), then each later round from the trials
seen (:meth:`TuningRules._tune`): how many trials, on how many workers, for how many epochs each,
on which (narrowed) search space.

A mixin of :class:`~dlagent.agent.policies.rules.RulesPolicy`: it reads the policy's validated
settings (``initial_trials``, ``trials_per_round``, ``max_trials``, ``min_improvement``,
``improvement_window``, ``search_width``, ``max_workers``, ``warm_start``,
``trial_epochs_fraction``, ``min_trial_epochs_fraction``) and writes nothing to it.
"""

from __future__ import annotations

import math

from dlagent.agent.observe import Observation
from dlagent.agent.plan import TUNE_KEYS
from dlagent.validation import finite

MODEL_KEYS = ("model", "model_args", "init_from")  # what makes two runs' trials the same model's
WORKER_MEMORY_FACTOR = 4  # float32 copies of the data set one tuning worker holds (arrays, tf.data, predictions)


class TuningRules:
    """How many trials, workers and epochs a tuning round gets, and on which space."""

    def tuning_progress(self, obs: Observation) -> tuple[bool | None, float | None]:
        """``(improving, gain)`` of the best value over the last ``improvement_window`` trials.

        ``improving`` is ``None`` with no completed trial, ``True`` while fewer trials than the
        window have completed (too early to tell), or when completed trials came with no
        best-value history (an observation built by hand: nothing to measure a gain on).
        """
        history = obs.best_value_history
        if not history:
            return (True, None) if obs.completed_trials else (None, None)
        if len(history) <= self.improvement_window:
            return True, None
        gain = history[-1] - history[-1 - self.improvement_window]
        if obs.direction == "minimize":
            gain = -gain
        return gain > self.min_improvement, gain

    def _workers(self, obs: Observation, n_trials: int) -> tuple[int, str]:
        free = obs.resources.get("cpus_free")
        total = obs.resources.get("cpu_count")
        limit = free if isinstance(free, int) and free > 0 else 1
        workers = max(1, min(n_trials, limit, self.max_workers or limit))
        return workers, f"{free if free is not None else 'unknown'} free CPUs of {total if total is not None else 'unknown'}, {n_trials} trials" + (
            f", max_workers {self.max_workers}" if self.max_workers else "")

    def _trial_epochs(self, configured_epochs: int, because) -> dict:
        """``trial_epochs`` (most epochs per trial: a fraction of the training's when the winner is
        continued) and ``min_trial_epochs`` (the pruner's first rung for such short trials)."""
        epochs = max(1, math.ceil(configured_epochs * self.trial_epochs_fraction))
        if not self.warm_start or epochs >= configured_epochs:
            return {"trial_epochs": None, "min_trial_epochs": None}
        because(f"tune.trial_epochs={epochs}", f"trials train at most trial_epochs_fraction {self.trial_epochs_fraction:g} x the "
                f"{configured_epochs} training epochs: the search only has to rank settings, and the final training continues the "
                "best trial from its checkpoint (warm start) instead of paying for every trial's full run")
        first = max(1, min(epochs, round(epochs * self.min_trial_epochs_fraction)))
        because(f"tune.min_trial_epochs={first}", f"no trial is pruned before min_trial_epochs_fraction {self.min_trial_epochs_fraction:g} x "
                f"its {epochs} epochs: a first rung at epoch 1 ranks short trials on one noisy epoch, and a fast starter "
                "pushes out a better setting")
        return {"trial_epochs": epochs, "min_trial_epochs": first}

    def _tune(self, obs: Observation, because, *, configured_epochs: int) -> dict | None:
        done = len(obs.trials)
        if not obs.completed_trials:
            if self.initial_trials == 0:
                because("tune=null", "no completed trial and initial_trials is 0")
                return None
            n = min(self.initial_trials, self.max_trials - done)
            if n <= 0:
                because("tune=null (no more trials)", f"max_trials {self.max_trials} reached ({done} trials, none completed)")
                return None
            workers, why = self._workers(obs, n)
            because(f"tune.n_trials={n}", f"no completed trial yet ({done} trials seen): a first round on the default search space")
            because(f"tune.n_workers={workers}", why)
            return {"n_trials": n, "n_workers": workers, "search_space": None, "seed_studies": [],
                    **self._trial_epochs(configured_epochs, because)}
        improving, gain = self.tuning_progress(obs)
        remaining = self.max_trials - done
        if not improving or remaining <= 0:
            why = (f"max_trials {self.max_trials} reached ({done} trials)" if remaining <= 0 else
                   f"the best value improved by {gain:.6g} over the last {self.improvement_window} trials, "
                   f"not more than min_improvement {self.min_improvement:g}")
            because("tune=null (no more trials)", why)
            return None
        n = min(self.trials_per_round, remaining)
        tuned = {k: v for k, v in obs.best_trial["params"].items() if k in obs.tuned_params} or obs.best_trial["params"]
        space, notes = self.narrow(tuned)
        workers, why = self._workers(obs, n)
        because(f"tune.n_trials={n}", "the best value is still improving" + (
            f" (+{gain:.6g} over the last {self.improvement_window} trials)" if gain is not None else
            f" (only {len(obs.best_value_history) or len(obs.completed_trials)} completed trials, fewer than improvement_window "
            f"{self.improvement_window})"))
        because(f"tune.n_workers={workers}", why)
        because("tune.search_space narrowed", "around the best trial: " + "; ".join(notes) if notes else "no numeric parameter to narrow")
        seeds = sorted({t["study"] for t in obs.trials if t.get("study")})
        if seeds:
            because(f"tune.seed_studies={seeds}", "replay the trials seen so far into the new round's study: its pruner compares "
                    "new trials with them (a fresh study lets its first trials run to the end) and its sampler starts from them")
        return {"n_trials": n, "n_workers": workers, "search_space": space or None, "seed_studies": seeds,
                **self._trial_epochs(configured_epochs, because)}

    def budget(self, observation, request: dict) -> dict:
        """The first tuning round, planned before any trial from what can be seen then (phase ``budget``).

        * a follow-up round (``seed_studies`` set: its conf is this agent's plan of the earlier
          round) or ``n_trials`` 0 keeps the Params;
        * ``n_trials``: at most ``initial_trials``, and never more than the Params' ``n_trials``
          (the person's budget cap);
        * ``trial_epochs`` / ``min_trial_epochs``: short trials with a later first rung, as
          after a round (:meth:`_trial_epochs`), unless the Params set them;
        * the champion's history: when it was tuned on the same data with the same model, its
          study seeds this one and the space narrows around its best trial
          (:meth:`_from_champion`), and the round is ``trials_per_round`` long;
        * ``n_workers``: at most the trials, the Params' ``tuning_workers`` (the slots a person
          gave the search; this task's CPUs are not the cluster's) and ``max_workers``, and
          fewer when memory says so: each worker holds the data set (its float32 size from the
          validate task's summary, :data:`WORKER_MEMORY_FACTOR` copies) within half the free
          memory of this machine, when the workers run on this machine (a local executor, or
          one not named) and the data is held in memory (not a streamed image folder).
        """
        from dlagent.ml.config import TrainConfig

        obs = observation if isinstance(observation, Observation) else Observation.from_dict(observation)
        reasons: list[dict] = []

        def because(decision: str, why: str):
            reasons.append({"decision": decision, "because": why})

        asked = {key: None if request.get(key) == "" else request.get(key) for key in TUNE_KEYS}  # "": a Param left empty
        asked["seed_studies"] = list(asked["seed_studies"] or [])
        plan = {"action": "deploy", "tune": asked, "policy": {"name": self.name, "arm": None, "context": None}, "reasons": reasons}
        if asked["seed_studies"]:
            because("tune: as the Params say", f"a follow-up round (seed studies {asked['seed_studies']}): its settings are the "
                    "agent's plan of the earlier round")
            return plan
        if not asked["n_trials"]:
            because("tune: none", "n_trials is 0 in the Params: no tuning")
            return plan
        data = request.get("data") or {}
        if self.initial_trials == 0:
            because("tune: none", "initial_trials is 0: no first round")
            plan["tune"] = {**asked, "n_trials": 0}
            return plan
        config = {**TrainConfig().to_dict(), **obs.config}
        start = self._from_champion(obs, data, asked, config, because)
        n = min(int(asked["n_trials"]), self.initial_trials if start is None else self.trials_per_round)
        because(f"tune.n_trials={n}", (f"a first round of at most initial_trials {self.initial_trials}" if start is None else
                                       f"a round of at most trials_per_round {self.trials_per_round} after the champion's "
                                       f"{start['trials']} trials") + f", within the Params' n_trials {asked['n_trials']} (the budget cap)")
        cap = int(asked["n_workers"] or 1)
        workers = max(1, min(n, cap, self.max_workers or cap))
        why = (f"{n} trials, the Params' tuning_workers {cap} (the slots a person gave the search: on Celery or Kubernetes "
               "this task's own CPUs say nothing of the cluster's)" + (f", max_workers {self.max_workers}" if self.max_workers else ""))
        shares_machine = _workers_share_this_machine(request.get("executor"))
        fit = _workers_in_memory(data, obs.resources.get("memory_free_gb")) if shares_machine and not data.get("streamed") else None
        if fit is not None and fit < workers:
            workers, why = fit, why + f"; memory: {fit} worker(s) hold the data set within half the free memory"
        because(f"tune.n_workers={workers}", why + (f"; data: {data.get('n_train')} training samples of shape "
                                                     f"{data.get('input_shape')}" if data else ""))
        configured_epochs = int(config["epochs"])
        epochs = {"trial_epochs": asked["trial_epochs"], "min_trial_epochs": asked["min_trial_epochs"]}
        if asked["trial_epochs"] is None:
            epochs = self._trial_epochs(configured_epochs, because)
            if epochs["trial_epochs"] is None:
                because("tune.trial_epochs: the training's", f"warm_start is off or {configured_epochs} epochs are too few to shorten: "
                        "each trial trains them all")
        else:
            because(f"tune.trial_epochs={asked['trial_epochs']}", "set in the Params")
        if asked["min_trial_epochs"] is not None:  # a person's first rung wins; trials then run at least that long
            trial = epochs["trial_epochs"]  # None: the training's epochs
            epochs = {"trial_epochs": None if trial is None else max(trial, asked["min_trial_epochs"]),
                      "min_trial_epochs": asked["min_trial_epochs"]}
            because(f"tune.min_trial_epochs={asked['min_trial_epochs']}", "set in the Params")
        plan["tune"] = {**asked, "n_trials": n, "n_workers": workers, **epochs}
        if start is not None:
            plan["tune"].update(seed_studies=[start["study"]], search_space=start["space"] or asked["search_space"])
        return plan

    def _from_champion(self, obs: Observation, data: dict, asked: dict, config: dict, because) -> dict | None:
        """Where the champion's own search can start this one: ``{"study", "trials", "space"}``, or
        ``None`` (the default first round), with the reason either way.

        It can when the champion was tuned by a pipeline run on the same data (the same content
        digest and split sizes) with the same model (:data:`MODEL_KEYS`): its study's trials are replayed into the new study (its
        sampler and pruner start from them), and, unless the Params give a search space, the space
        narrows around its best parameters once it has ``improvement_window`` completed trials, as
        a later round narrows around the best trial. On changed data its trials say nothing.
        """
        from dlagent.ml.config import TrainConfig

        champion = obs.champion
        if champion is None:
            because("tune: no champion to start from", "no version of this model name holds the alias 'champion': a first search")
            return None
        history, version = champion.get("history"), champion.get("version")
        digest = data.get("digest")
        why = None
        splits = {key: data.get(key) for key in ("n_train", "n_val", "n_test")}
        theirs = {**TrainConfig().to_dict(), **(history or {}).get("config", {})}
        differs = [key for key in MODEL_KEYS if (theirs.get(key) or None) != (config.get(key) or None)]
        if history is None:
            why = f"champion version {version} was not trained by a pipeline run (its run has no parent run)"
        elif history.get("unreadable"):
            why = f"the history of champion version {version} could not be read from MLflow ({history['unreadable']})"
        elif not history["study"] or not history["trials_complete"]:
            why = f"the run that trained champion version {version} completed no tuning trial"
        elif not digest or history["data_digest"] != digest:
            why = (f"champion version {version} trained on other data (digest {history['data_digest']}; this run's {digest or 'unknown'}):"
                   " its trials say nothing of this data")
        elif history["splits"] != splits:
            why = (f"champion version {version} split the same data otherwise ({history['splits']}; this run {splits}): "
                   "its trials' validation values do not compare with this run's")
        elif differs:
            why = (f"champion version {version} trained another model ({', '.join(f'{k} {theirs.get(k)!r}' for k in differs)}; "
                   f"this run {', '.join(f'{k} {config.get(k)!r}' for k in differs)})")
        if why is not None:
            because("tune: a first search, not the champion's", why)
            return None
        trials = history["trials_complete"]
        because(f"tune.seed_studies=[{history['study']}]", f"champion version {version} was tuned on this very data (digest {digest}) "
                f"with the same model in study {history['study']} ({trials} completed trials): they are replayed into this round's "
                "study, so its sampler starts from them and its pruner compares new trials with them")
        space = None
        if asked["search_space"]:
            because("tune.search_space: the Params'", "the Params give a search space: the champion's trials inside it are replayed")
        elif trials >= self.improvement_window and history["best_params"]:
            space, notes = self.narrow(history["best_params"])
            because("tune.search_space narrowed", f"around the champion's best trial ({trials} completed trials, at least improvement_window "
                    f"{self.improvement_window}): " + ("; ".join(notes) if notes else "no numeric parameter to narrow"))
        return {"study": history["study"], "trials": trials, "space": space or None}

    def narrow(self, params: dict) -> tuple[dict, list[str]]:
        """A search space around ``params`` (the best trial's), with one note per parameter
        (:func:`dlagent.ml.tuning.narrow_search_space` with ``search_width``)."""
        from dlagent.ml.tuning.space import narrow_search_space

        return narrow_search_space(params, width=self.search_width)


def _workers_share_this_machine(executor) -> bool:
    """Whether tuning workers run beside this task (Local/Sequential executor, or unknown: assume so)."""
    return not executor or any(word in str(executor) for word in ("Local", "Sequential"))


def _workers_in_memory(data: dict, memory_free_gb) -> int | None:
    """How many tuning workers fit the data set within half the free memory (``None``: unknown)."""
    if not data or not finite(memory_free_gb) or not data.get("input_shape"):
        return None
    samples = sum(int(data.get(k) or 0) for k in ("n_train", "n_val", "n_test"))
    per_worker = samples * math.prod(int(d) for d in data["input_shape"]) * 4 * WORKER_MEMORY_FACTOR
    if per_worker <= 0:
        return None
    return max(1, int(memory_free_gb * 2**30 * 0.5 // per_worker))
