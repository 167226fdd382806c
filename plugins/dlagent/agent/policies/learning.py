"""The ``learning`` policy: a contextual bandit on top of the ``rules`` policy.

The rules policy writes the whole plan; the bandit then picks one **arm** and scales the
plan's ``train.learning_rate`` and ``train.epochs`` with it. Arms are every pair of
``lr_scales`` x ``epoch_scales`` (default {0.5, 1, 2} x {0.5, 1, 1.5}: 9 arms, named like
``lr_x2-epochs_x0.5``); an arm that raises the rate stops at ``max_learning_rate`` (default: the
model's built-in search space's top, or a well-scoring trial's higher rate: :func:`rate_ceiling`),
since a rate above what tuning searches can leave a model at chance. The **context** is what the observation says about training, one of
:data:`CONTEXTS` (``diverged``, ``overfit``, ``underfit``, ``improving``, ``plateau``,
``converged``, ``unknown``).

Choosing (deterministic given ``seed`` and the recorded rewards):

* with no reward recorded yet, the **baseline arm** (``lr_x1-epochs_x1``: the rules' plan
  unchanged) is played first: a new bandit starts where the rules are, never worse;
* ``thompson`` (default): Thompson sampling on a Gaussian model of each arm's mean reward.
  Its prior is an **additive model** fitted to every reward so far, ``baseline value +
  effect of the arm's learning-rate factor + effect of its epoch factor`` (ridge-shrunk
  toward 0, i.e. toward "as good as the rules"), so one bad ``lr_x0.5`` arm lowers every
  ``lr_x0.5`` arm and a good ``lr_x2`` raises every ``lr_x2``: 9 arms are learnt from a few
  runs instead of one run each. The prior's spread is ``prior_sd``; the arm's own rewards
  in this context (noise ``noise_sd``, or the spread seen once there are enough) move it
  from there. Each run samples every arm's posterior and plays the highest sample, so
  exploration fades as the posteriors separate;
* ``epsilon_greedy``: the value of an arm in a context is its mean reward there, shrunk
  toward its mean over all contexts (``(sum_ctx + prior_weight * mean_all) / (n_ctx +
  prior_weight)``), so what was learnt in one context helps in another; an arm never tried
  anywhere is tried next (in arm order); with probability ``epsilon`` a random arm, else the
  best; ``ucb``: the same values, the best of value + ``ucb_c`` * sqrt(ln(N + 1) / (n_ctx + 1)).
  Randomness comes from ``random.Random(f"{seed}|{number of rewards}|{context}")``.

Rewarding: after the run the plan produced, call :meth:`LearningPolicy.update` with
``R = a * accuracy_gain - b * seconds - c * compute`` (:meth:`LearningPolicy.reward`;
``accuracy_gain`` a fraction, e.g. new validation accuracy minus the champion's on the same
split (never the test split: what a run reports on must not steer it), ``seconds`` the
wall time, ``compute`` the epochs trained), and the plan (its ``policy.arm`` and
``policy.context`` say what to credit). A ``key`` (e.g. ``dag_id/run_id``) makes the update
idempotent: a retried reward task does not count twice.

State: a store of ``(context, arm, reward)`` records (:mod:`dlagent.agent.policies.state`:
rewards in MLflow for the pipeline, in memory for notebooks and benchmarks).
"""

from __future__ import annotations

import math
import random

from dlagent.agent.observe import Observation
from dlagent.agent.policies.base import Policy
from dlagent.agent.policies.rules import RulesPolicy
from dlagent.agent.policies.state import MemoryStateStore
from dlagent.errors import ConfigError
from dlagent.validation import check_number, finite, significant

CONTEXTS = ("diverged", "overfit", "underfit", "improving", "plateau", "converged", "unknown")
STRATEGIES = ("thompson", "epsilon_greedy", "ucb")
BASELINE_SCALES = (1.0, 1.0)  # the arm that leaves the rules' plan as it is


def arm_name(lr_scale: float, epoch_scale: float) -> str:
    return f"lr_x{lr_scale:g}-epochs_x{epoch_scale:g}"


def rate_ceiling(observation: Observation, current: dict) -> tuple[float, str]:
    """``(rate, where from)``: the highest learning rate an arm may raise the plan's rate to.

    The top of the model's built-in search space (:func:`dlagent.ml.tuning.default_search_space`,
    what tuning searches when the Params give no ``search_space``), raised to the rate of a
    completed trial in the better half of this run's trials when one trained higher (a wider
    ``search_space`` that tuning tried, and that scored well). A poor trial does not raise it: a
    high rate that trained badly is the failure the ceiling is for. The observation does not
    carry the run's search space, so a narrower ``search_space`` does not lower it (set
    ``max_learning_rate`` for that).
    """
    from dlagent.ml.config import AUTO_MODEL
    from dlagent.ml.tuning.space import default_search_space

    model = str(current.get("model", ""))
    known = "cnn" if model == AUTO_MODEL else model  # a run that logged no resolved model: the images' (lower) ceiling
    ceiling = float(default_search_space(known, transfer=bool(current.get("init_from")))["learning_rate"]["high"])
    where = f"the top of the {known or 'model'}'s built-in search space"
    completed = sorted(observation.completed_trials, key=lambda t: t["value"], reverse=observation.direction != "minimize")
    for trial in completed[:max(1, len(completed) // 2)]:  # the better half (the best one at least)
        rate = trial.get("params", {}).get("learning_rate")
        if isinstance(rate, (int, float)) and rate > ceiling:
            ceiling, where = significant(float(rate)), f"trial {trial.get('number')}'s rate (among this run's better half of trials)"
    return ceiling, where


def context_of(observation: Observation) -> str:
    """The bandit's context: what the main learning curve says (see :data:`CONTEXTS`)."""
    curve = observation.main_curve
    if curve is None or not curve["epochs"]:
        return "unknown"
    if curve["diverged"]:
        return "diverged"
    if curve["overfitting"]:
        return "overfit"
    if curve["underfitting"]:
        return "underfit"
    if curve["still_improving"]:
        return "improving"
    if curve["plateau"]:
        return "plateau"
    return "converged"


# --------------------------------------------------------------------------- policy


class LearningPolicy(Policy):
    """A contextual bandit choosing learning-rate and epoch-budget scales (see module doc).

    :param store: a state store (``MLflowStateStore`` in the pipeline; default in-memory).
    :param seed: makes choices reproducible.
    :param strategy: ``thompson`` (default), ``epsilon_greedy`` or ``ucb``.
    :param epsilon: exploration probability of ``epsilon_greedy``, in [0, 1].
    :param ucb_c: exploration weight of ``ucb``, >= 0.
    :param prior_sd: ``thompson``: how far (in reward units) an arm may be from the additive
        model's prediction before its own rewards are seen.
    :param noise_sd: ``thompson``: the spread of one run's reward around its arm's mean,
        used until 3 arms have 2 rewards each (then the pooled spread seen, floored at a tenth of this).
    :param ridge: ``thompson``: shrinkage of the additive model's effects toward 0.
    :param prior_weight: how many context-specific rewards weigh as much as the all-context mean.
    :param accuracy_weight, time_weight, compute_weight: ``a``, ``b``, ``c`` of the reward.
    :param lr_scales, epoch_scales: the arms' factors.
    :param max_learning_rate: the highest rate an arm may scale the plan's rate up to (never below
        the plan's own rate); default: the model's built-in search space's top, or a better-half
        trial's higher rate (:func:`rate_ceiling`). Above the space's top a digits ``cnn`` trained
        from scratch lost 3.4 points at twice it and reached chance on one seed of six at four times
        it (``bench/rate_ceiling.py``). A capped arm is credited as the arm chosen: the bandit learns
        what playing it does, the cap included.
    :param rules: keyword arguments for the underlying :class:`RulesPolicy`.
    """

    name = "learning"
    uses_store = True

    def __init__(self, *, store=None, seed: int = 0, strategy: str = "thompson", epsilon: float = 0.1,
                 ucb_c: float = 1.0, prior_weight: float = 1.0, prior_sd: float = 1.0, noise_sd: float = 0.5,
                 ridge: float = 1.0, accuracy_weight: float = 100.0,
                 time_weight: float = 0.001, compute_weight: float = 0.01,
                 lr_scales=(0.5, 1.0, 2.0), epoch_scales=(0.5, 1.0, 1.5), max_learning_rate: float | None = None,
                 rules: dict | None = None):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError("seed", f"must be a non-negative integer, got seed={seed!r}.", "give e.g. 0.")
        if strategy not in STRATEGIES:
            raise ConfigError("strategy", f"must be one of {list(STRATEGIES)}, got strategy={strategy!r}.", f"pick one of {list(STRATEGIES)}.")
        check_number("epsilon", epsilon, low=0.0, high=1.0)
        check_number("ucb_c", ucb_c, low=0.0, high=1e6)
        check_number("prior_weight", prior_weight, low=0.0, high=1e6)
        check_number("prior_sd", prior_sd, low=0.0, high=1e6, low_open=True)
        check_number("noise_sd", noise_sd, low=0.0, high=1e6, low_open=True)
        check_number("ridge", ridge, low=0.0, high=1e6, low_open=True)
        for name, value in (("accuracy_weight", accuracy_weight), ("time_weight", time_weight), ("compute_weight", compute_weight)):
            check_number(name, value, low=0.0, high=1e9)
        for name, scales in (("lr_scales", lr_scales), ("epoch_scales", epoch_scales)):
            if not isinstance(scales, (list, tuple)) or not scales or len(set(scales)) != len(scales):
                raise ConfigError(name, f"must be a non-empty list of distinct factors, got {name}={scales!r}.", "give e.g. [0.5, 1, 2].")
            for value in scales:
                check_number(name, value, low=0.0, high=100.0, low_open=True)
        check_number("max_learning_rate", max_learning_rate, low=0.0, high=10.0, low_open=True, optional=True)
        if store is None:
            store = MemoryStateStore()
        for method in ("records", "record"):
            if not callable(getattr(store, method, None)):
                raise ConfigError("store", f"must have records() and record(...), got {store!r}.", "pass an MLflowStateStore or MemoryStateStore.")
        self.store = store
        self.seed = seed
        self.strategy = strategy
        self.epsilon = float(epsilon)
        self.ucb_c = float(ucb_c)
        self.prior_weight = float(prior_weight)
        self.prior_sd, self.noise_sd, self.ridge = float(prior_sd), float(noise_sd), float(ridge)
        self.weights = {"a": float(accuracy_weight), "b": float(time_weight), "c": float(compute_weight)}
        self.max_learning_rate = None if max_learning_rate is None else float(max_learning_rate)
        self.arms = {arm_name(lr, ep): (float(lr), float(ep)) for lr in lr_scales for ep in epoch_scales}
        self.rules = RulesPolicy(**(rules or {}))

    # ------------------------------------------------------------------ reward
    def reward(self, accuracy_gain: float, seconds: float, compute: float) -> float:
        """``a * accuracy_gain - b * seconds - c * compute`` with this policy's weights."""
        for name, value in (("accuracy_gain", accuracy_gain), ("seconds", seconds), ("compute", compute)):
            if not finite(value):
                raise ConfigError(name, f"must be a finite number, got {name}={value!r}.", "pass the measured value.")
        if seconds < 0 or compute < 0:
            raise ConfigError("seconds" if seconds < 0 else "compute", "must be >= 0.", "pass the time and compute used.")
        w = self.weights
        return w["a"] * accuracy_gain - w["b"] * seconds - w["c"] * compute

    def reward_from_observation(self, observation, value: float | None, baseline: float | None) -> float:
        """Reward of a finished run: the primary validation metric's gain over ``baseline`` (the
        champion's on the same split; 0 gain without one) as a fraction (points / 100: an accuracy difference,
        or an RMSE's relative improvement), its ``run_seconds`` and ``epochs`` as compute."""
        obs = observation if isinstance(observation, Observation) else Observation.from_dict(observation)
        gain = obs.primary.gain_points(value, baseline) / 100.0 if finite(value) and finite(baseline) else 0.0
        gain = min(1.0, max(-1.0, gain))  # an error 3x the champion's is -2 before the clip: one bad run must not swamp the rest
        return self.reward(gain, float(obs.compute.get("run_seconds") or 0.0), float(obs.compute.get("epochs") or 0.0))

    def update(self, reward: float, *, plan: dict | None = None, arm: str | None = None, context: str | None = None,
               key: str | None = None) -> bool:
        """Credit ``reward`` to the plan's arm in its context; False if ``key`` was already rewarded."""
        if plan is not None:
            section = plan.get("policy") or {}
            arm = arm or section.get("arm")
            context = context or section.get("context")
        if arm not in self.arms:
            raise ConfigError("arm", f"unknown arm {arm!r} (known: {sorted(self.arms)}).", "pass the plan the learning policy made.")
        if context not in CONTEXTS:
            raise ConfigError("context", f"unknown context {context!r} (known: {list(CONTEXTS)}).", "pass the plan the learning policy made.")
        if not finite(reward):
            raise ConfigError("reward", f"must be a finite number, got reward={reward!r}.", "compute it with LearningPolicy.reward(...).")
        return self.store.record(context, arm, float(reward), key)

    # ------------------------------------------------------------------ decide
    def statistics(self, records=None) -> dict:
        """``{"n": total, "all": {arm: [n, sum]}, "by_context": {ctx: {arm: [n, sum]}}}``."""
        records = self.store.records() if records is None else records
        overall = {arm: [0, 0.0] for arm in self.arms}
        by_context: dict = {}
        n = 0
        for context, arm, value in records:
            if arm not in self.arms:
                continue  # an arm of an earlier configuration
            n += 1
            overall[arm][0] += 1
            overall[arm][1] += value
            entry = by_context.setdefault(context, {a: [0, 0.0] for a in self.arms})
            entry[arm][0] += 1
            entry[arm][1] += value
        return {"n": n, "all": overall, "by_context": by_context}

    def values(self, context: str, stats: dict) -> dict:
        """Estimated value of each arm in ``context`` (None: never tried anywhere)."""
        out = {}
        in_context = stats["by_context"].get(context, {})
        for arm in self.arms:
            n_all, sum_all = stats["all"][arm]
            if n_all == 0:
                out[arm] = None
                continue
            n_ctx, sum_ctx = in_context.get(arm, [0, 0.0])
            out[arm] = (sum_ctx + self.prior_weight * (sum_all / n_all)) / (n_ctx + self.prior_weight) if (n_ctx + self.prior_weight) else sum_all / n_all
        return out

    @property
    def baseline_arm(self) -> str | None:
        """The arm that leaves the rules' plan unchanged, when it is one of the arms."""
        return next((arm for arm, scales in self.arms.items() if scales == BASELINE_SCALES), None)

    def additive_prior(self, records) -> dict:
        """Each arm's predicted reward from every record: the baseline arm's value plus the
        effects of its learning-rate factor and its epoch factor (ridge regression; factor 1
        is the reference, so an effect never seen is 0: "as good as the rules")."""
        import numpy as np

        lr_levels = sorted({lr for lr, _ in self.arms.values() if lr != BASELINE_SCALES[0]})
        ep_levels = sorted({ep for _, ep in self.arms.values() if ep != BASELINE_SCALES[1]})

        def features(arm):
            lr, ep = self.arms[arm]
            return [1.0] + [float(lr == level) for level in lr_levels] + [float(ep == level) for level in ep_levels]

        rows = [(features(arm), value) for _, arm, value in records if arm in self.arms]
        x = np.array([r for r, _ in rows]).reshape(len(rows), 1 + len(lr_levels) + len(ep_levels))
        y = np.array([v for _, v in rows])
        penalty = self.ridge * np.eye(x.shape[1])
        penalty[0, 0] = 1e-9  # the baseline value itself is not shrunk
        beta = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        return {arm: float(np.dot(features(arm), beta)) for arm in self.arms}

    def posteriors(self, context: str, records) -> dict:
        """``{arm: (mean, sd, n)}``: the additive prior updated with the arm's rewards in ``context``."""
        import statistics

        prior = self.additive_prior(records)
        own: dict = {arm: [] for arm in self.arms}
        for ctx, arm, value in records:
            if ctx == context and arm in own:
                own[arm].append(value)
        noise = self.noise_sd
        groups = [values for values in own.values() if len(values) >= 2]
        if len(groups) >= 3:  # enough repeats to measure the noise itself
            pooled = sum((len(v) - 1) * statistics.variance(v) for v in groups) / sum(len(v) - 1 for v in groups)
            noise = max(pooled ** 0.5, self.noise_sd / 10)
        out = {}
        for arm in self.arms:
            precision = 1 / self.prior_sd ** 2 + len(own[arm]) / noise ** 2
            mean = (prior[arm] / self.prior_sd ** 2 + sum(own[arm]) / noise ** 2) / precision
            out[arm] = (mean, precision ** -0.5, len(own[arm]))
        return out

    def choose(self, context: str, stats: dict, records=None) -> tuple[str, str]:
        """``(arm, why)`` for ``context`` given the statistics (and, for ``thompson``, the records)."""
        baseline = self.baseline_arm
        if stats["n"] == 0 and baseline is not None:
            return baseline, f"no reward recorded yet: start from the rules' plan (arm {baseline})"
        if self.strategy == "thompson":
            records = self.store.records() if records is None else records
            rng = random.Random(f"{self.seed}|{stats['n']}|{context}")
            posteriors = self.posteriors(context, records)
            samples = {arm: rng.gauss(mean, sd) for arm, (mean, sd, _) in posteriors.items()}
            arm = max(self.arms, key=lambda a: samples[a])
            mean, sd, n = posteriors[arm]
            best_mean = max(self.arms, key=lambda a: posteriors[a][0])
            return arm, (f"Thompson sample {samples[arm]:.4g} is the highest (posterior mean {mean:.4g} +- {sd:.3g} from the additive "
                         f"prior and {n} rewards of this arm here; {stats['n']} rewards in all; best mean: {best_mean} "
                         f"{posteriors[best_mean][0]:.4g}) in context {context!r}")
        values = self.values(context, stats)
        untried = [arm for arm in self.arms if values[arm] is None]
        if untried:
            return untried[0], f"arm {untried[0]} has never been tried ({len(untried)} of {len(self.arms)} untried)"
        rng = random.Random(f"{self.seed}|{stats['n']}|{context}")
        if self.strategy == "epsilon_greedy":
            if rng.random() < self.epsilon:
                arm = rng.choice(list(self.arms))
                return arm, f"exploring (probability epsilon={self.epsilon:g}): random arm {arm}"
            best = max(values.values())
            ties = [arm for arm in self.arms if values[arm] >= best - 1e-12]
            arm = ties[0] if len(ties) == 1 else rng.choice(ties)
            return arm, f"best estimated reward {values[arm]:.4g} in context {context!r} ({stats['n']} rewards so far)"
        in_context = stats["by_context"].get(context, {})
        n_ctx_total = sum(v[0] for v in in_context.values())
        scores = {}
        for arm in self.arms:
            n_ctx = in_context.get(arm, [0, 0.0])[0]
            scores[arm] = values[arm] + self.ucb_c * math.sqrt(math.log(n_ctx_total + 1) / (n_ctx + 1))
        best = max(scores.values())
        arm = next(a for a in self.arms if scores[a] >= best - 1e-12)
        return arm, f"highest upper confidence bound {scores[arm]:.4g} (mean {values[arm]:.4g}) in context {context!r}"

    def budget(self, observation, request: dict) -> dict:
        """The first tuning round: the rules' (:meth:`RulesPolicy.budget`); the bandit acts on the plans after it."""
        plan = self.rules.budget(observation, request)
        return {**plan, "policy": {"name": self.name, "arm": None, "context": None}}

    def decide(self, observation) -> dict:
        from dlagent.ml.config import TrainConfig

        obs = observation if isinstance(observation, Observation) else Observation.from_dict(observation)
        plan = self.rules.decide(obs)
        context = context_of(obs)
        records = self.store.records()
        stats = self.statistics(records)
        arm, why = self.choose(context, stats, records)
        lr_scale, epoch_scale = self.arms[arm]
        current = {**TrainConfig().to_dict(), **obs.config, **plan["train"]}
        train, capped_because = dict(plan["train"]), []
        if lr_scale != 1.0:  # within the settings' declared limits, so the plan's conf is one the Params accept
            rate = min(TrainConfig.bounds("learning_rate").high, significant(current["learning_rate"] * lr_scale))
            if lr_scale > 1.0:
                ceiling, where = ((self.max_learning_rate, "max_learning_rate") if self.max_learning_rate is not None
                                  else rate_ceiling(obs, current))
                limit = max(ceiling, current["learning_rate"])  # the cap never lowers the rules' own rate
                if rate > limit:
                    kept = (f"; the rules' own rate {current['learning_rate']:g}, above it, is kept"
                            if limit > ceiling else "")
                    capped_because.append({
                        "decision": f"learning: learning_rate {limit:g}, not the {rate:g} arm {arm} asked",
                        "because": f"the ceiling {ceiling:g} is {where}{kept}: a higher rate is untested on this data and "
                                   "can leave a model at chance (bench/rate_ceiling.py)",
                    })
                    rate = limit
            train["learning_rate"] = rate
        if epoch_scale != 1.0:
            train["epochs"] = max(1, min(TrainConfig.bounds("epochs").high, int(round(current["epochs"] * epoch_scale))))
        plan["train"] = train
        plan["policy"] = {"name": self.name, "arm": arm, "context": context}
        plan["reasons"].extend([{
            "decision": f"learning: arm {arm} (learning_rate={train.get('learning_rate', current['learning_rate'])}, "
                        f"epochs={train.get('epochs', current['epochs'])})",
            "because": f"context {context!r}: {why} [{self.strategy}, seed {self.seed}]",
        }, *capped_because])
        return plan
