"""The ``rules`` policy: transparent defaults a person can read, check and override.

Decisions, in order (each one appends a ``{"decision", "because"}`` reason):

1. **train**: start from the best trial's parameters; set ``epochs`` from the learning curve
   (best epoch + ``early_stopping_patience``, or ``still_improving_factor`` x the epochs run
   when validation loss was still improving at the end); on divergence lower
   ``learning_rate`` by ``divergence_lr_factor``; on a train/validation accuracy gap above
   ``gap_threshold`` raise ``dropout`` by ``dropout_step`` (up to ``max_dropout``); on an
   under-fitting plateau double ``units`` (up to ``max_units``).
   **warm start**: when the best trial saved its weights (a checkpoint) and the final
   training keeps its architecture, training continues from them instead of starting over
   (``warm_start``): when its validation loss was still improving, for the epochs a
   from-scratch training would run (the curve's estimate or the configured epochs, the
   larger) less those the trial ran (at least
   ``early_stopping_patience``; early stopping ends it sooner), else for
   ``early_stopping_patience`` epochs at ``fine_tune_lr_factor`` x its learning rate (a
   fine-tuning step; the starting weights stay when no epoch beats them). The trial already
   trained those weights: retraining them from scratch repeats its epochs. Not for an
   ensemble (``ensemble``, a regression ``mlp``'s default): the trial trained one network, and
   the members must start from their own random weights.
2. **tune**: no completed trial -> a first round of ``initial_trials`` on the default space;
   otherwise add ``trials_per_round`` trials only while the best value improved by more than
   ``min_improvement`` over the last ``improvement_window`` trials (and ``max_trials`` is not
   reached), on a space narrowed around the best trial for the parameters the trials varied (``learning_rate`` in
   [best / ``search_width``, best x ``search_width``] on a log scale, ``dropout``/``momentum``
   +-0.1, ``units``/``filters``/``batch_size`` in [best / 2, best x 2], categoricals fixed).
   ``n_workers`` = min(trials, free CPUs, ``max_workers``). With warm start on, each trial
   trains at most ``trial_epochs`` = ``trial_epochs_fraction`` x the training's epochs: the
   search only ranks settings, and the winner goes on training from its checkpoint, so short
   trials lose little and save most of the search's epochs; the pruner's first rung is then
   ``min_trial_epochs`` = ``min_trial_epochs_fraction`` x those epochs (not epoch 1, whose
   ranking is noisy). ``seed_studies`` lists the
   studies seen so far: their trials are replayed into the new round's study, so its pruner
   compares new trials with them and its sampler starts from what they learnt.
3. **controller**: the in-training controller with a plateau patience of half the
   early-stopping patience (the learning rate drops before training stops); with a warm start,
   without its start rule (an epoch's loss above 1.1x the first batch's), which a continued
   training with a fresh optimizer trips without diverging.
4. **compress**: with measured candidates, the smallest one whose primary metric is within
   ``accuracy_budget_points`` (points of that metric: 0.01 of accuracy, 1 % of an rmse; the
   name is kept from when accuracy was the only metric) of the uncompressed model; without,
   ``compress_candidates``.
5. **action**: ``deploy`` only when the gate blessed the run and the candidate beats the
   champion by more than ``min_champion_gain_points`` on the validation split, or is as good
   there (within the gate's ``tie_tolerance_points``) and smaller or faster by the gate's
   ``min_efficiency_gain`` (size and latency do not depend on a split): the gate's two ways to
   bless, asked of the validation split, so a blessed tie is not left undeployed; ``stop`` when it
   beats it but the gate (which reads the test split) refused: the gate vetoes, it never asks
   for more tuning; else ``retune`` when more trials are planned; else ``stop``.
"""

from __future__ import annotations

import math

from dlagent.agent.observe import Observation
from dlagent.agent.policies.base import Policy
from dlagent.agent.policies.rules_tuning import TuningRules
from dlagent.errors import ConfigError
from dlagent.validation import check_int, check_number, finite, significant

ARCHITECTURE = ("model", "units", "hidden_layers", "linear_path", "filters")  # settings that change the weights' shapes


class RulesPolicy(TuningRules, Policy):
    """Transparent rules (see the module docstring). Every argument is validated eagerly."""

    name = "rules"

    def __init__(self, *, initial_trials: int = 8, trials_per_round: int = 8, max_trials: int = 64,
                 min_improvement: float = 0.002, improvement_window: int = 4, search_width: float = 3.0,
                 gap_threshold: float = 0.05, dropout_step: float = 0.1, max_dropout: float = 0.5,
                 divergence_lr_factor: float = 0.3, max_epochs: int = 200, still_improving_factor: float = 1.5,
                 max_units: int = 1024, accuracy_budget_points: float = 1.0, min_champion_gain_points: float = 0.0,
                 compress_candidates: list | None = None, max_workers: int | None = None, warm_start: bool = True,
                 fine_tune_lr_factor: float = 0.3, trial_epochs_fraction: float = 0.4, min_trial_epochs_fraction: float = 0.25):
        from dlagent.ml.config import TrainConfig
        from dlagent.ml.tuning.settings import TuneConfig

        trials_limit = TuneConfig.bounds("n_trials").high  # every limit shared with the Params is read, not restated
        _int("initial_trials", initial_trials, 0, trials_limit)
        _int("trials_per_round", trials_per_round, 1, trials_limit)
        _int("max_trials", max_trials, 1, trials_limit)
        _num("min_improvement", min_improvement, 0.0, 1e9)
        _int("improvement_window", improvement_window, 1, 10_000)
        _num("search_width", search_width, 1.0, 1e6, low_open=True)
        _num("gap_threshold", gap_threshold, 0.0, 1.0, low_open=True)
        _num("dropout_step", dropout_step, 0.0, 0.5, low_open=True)
        _num("max_dropout", max_dropout, 0.0, 0.95)
        _num("divergence_lr_factor", divergence_lr_factor, 0.0, 1.0, low_open=True, high_open=True)
        _int("max_epochs", max_epochs, 1, TrainConfig.bounds("epochs").high)
        _num("still_improving_factor", still_improving_factor, 1.0, 10.0)
        _int("max_units", max_units, 1, TrainConfig.bounds("units").high)
        _num("accuracy_budget_points", accuracy_budget_points, 0.0, 100.0)
        _num("min_champion_gain_points", min_champion_gain_points, 0.0, 100.0)
        if max_workers is not None:
            _int("max_workers", max_workers, 1, TuneConfig.bounds("n_workers").high)
        if not isinstance(warm_start, bool):
            raise ConfigError("warm_start", f"must be true or false, got {warm_start!r}.", "give true to continue from the best trial's weights.")
        _num("fine_tune_lr_factor", fine_tune_lr_factor, 0.0, 1.0, low_open=True)
        _num("trial_epochs_fraction", trial_epochs_fraction, 0.0, 1.0, low_open=True)
        _num("min_trial_epochs_fraction", min_trial_epochs_fraction, 0.0, 1.0, low_open=True)
        from dlagent.ml.selection import default_candidates, validate_candidates

        if compress_candidates is None:
            compress_candidates = default_candidates()
        compress_candidates = validate_candidates(compress_candidates, "compress_candidates", allow_empty=True)
        self.initial_trials = initial_trials
        self.trials_per_round = trials_per_round
        self.max_trials = max_trials
        self.min_improvement = min_improvement
        self.improvement_window = improvement_window
        self.search_width = search_width
        self.gap_threshold = gap_threshold
        self.dropout_step = dropout_step
        self.max_dropout = max_dropout
        self.divergence_lr_factor = divergence_lr_factor
        self.max_epochs = max_epochs
        self.still_improving_factor = still_improving_factor
        self.max_units = max_units
        self.accuracy_budget_points = accuracy_budget_points
        self.min_champion_gain_points = min_champion_gain_points
        self.compress_candidates = compress_candidates
        self.max_workers = max_workers
        self.warm_start = warm_start
        self.fine_tune_lr_factor = fine_tune_lr_factor
        self.trial_epochs_fraction = trial_epochs_fraction
        self.min_trial_epochs_fraction = min_trial_epochs_fraction

    # ------------------------------------------------------------------ decide
    def decide(self, observation) -> dict:
        from dlagent.agent.controller import ControllerSettings
        from dlagent.ml.config import TrainConfig

        obs = observation if isinstance(observation, Observation) else Observation.from_dict(observation)
        reasons: list[dict] = []

        def because(decision: str, why: str):
            reasons.append({"decision": decision, "because": why})

        current = {**TrainConfig().to_dict(), **obs.config}
        configured_epochs = int(current["epochs"])  # before the plan changes them
        train: dict = {}

        def set_train(name, value, why):
            train[name] = value
            current[name] = value
            because(f"train.{name}={value}", why)

        # 1. train ---------------------------------------------------------------
        best = obs.best_trial
        if best is not None:
            # Every parameter the trials varied is set, equal to the settings or not: the tuning summary's best may be a
            # trial replayed from an earlier study (the champion's, an earlier round's), and the final training must not mix
            # its values with this best trial's (whose weights a warm start continues).
            # Not what a trial sets for itself alone: its epochs (capped at trial_epochs) and its one network (``ensemble`` 1).
            own = {"epochs"} if "ensemble" in obs.tuned_params else {"epochs", "ensemble"}
            changed = {k: v for k, v in sorted(best["params"].items())
                       if k in current and k not in own and (current.get(k) != v or k in obs.tuned_params)}
            for key, value in changed.items():
                train[key] = value
                current[key] = value
            because("train: best trial parameters",
                    f"trial {best['number']} has the best value {best['value']:.6g} ({obs.direction}) of "
                    f"{len(obs.completed_trials)} completed trials; adopted {changed or 'no changes'}")
        curve = obs.main_curve
        if curve is None or not curve["epochs"]:
            because("train: epochs unchanged", "no learning curve observed yet")
        else:
            where = f"the {'best trial' if curve['step'] == 'trial' else 'training run'} {curve['run_id'][:8]}"
            if curve["diverged"]:
                lr = significant(current["learning_rate"] * self.divergence_lr_factor)
                set_train("learning_rate", lr, f"the loss of {where} diverged (epoch {(curve['divergence_epoch'] or 0) + 1}): "
                          f"learning_rate x{self.divergence_lr_factor:g}")
            elif curve["best_epoch"] is not None:
                patience = int(current["early_stopping_patience"])
                if curve["still_improving"]:
                    epochs = math.ceil(curve["epochs"] * self.still_improving_factor) + patience
                    why = (f"validation loss of {where} was still improving at its last epoch {curve['epochs']}: "
                           f"x{self.still_improving_factor:g} + early_stopping_patience {patience}")
                else:
                    epochs = curve["best_epoch"] + 1 + patience
                    why = (f"{where} reached its best validation loss at epoch {curve['best_epoch'] + 1} of {curve['epochs']}: "
                           f"+ early_stopping_patience {patience}")
                epochs = max(1, min(self.max_epochs, epochs))
                if epochs != current["epochs"]:
                    set_train("epochs", epochs, why + (f" (capped at max_epochs {self.max_epochs})" if epochs == self.max_epochs else ""))
                else:
                    because(f"train.epochs={epochs} unchanged", why)
            linear = current["model"] == "mlp" and int(current["hidden_layers"]) == 0  # no hidden layer: dropout and units act on nothing
            if curve["gap"] is not None and curve["gap"] > self.gap_threshold:
                dropout = round(min(self.max_dropout, current["dropout"] + self.dropout_step), 4)
                if linear:
                    because("train.dropout unchanged", f"accuracy gap {curve['gap']:.3f} is large, but a linear mlp (hidden_layers 0) has "
                            "no hidden layer to drop units from")
                elif dropout > current["dropout"]:
                    set_train("dropout", dropout, f"train/validation accuracy gap {curve['gap']:.3f} > {self.gap_threshold:g}: more regularisation")
                else:
                    because("train.dropout unchanged", f"accuracy gap {curve['gap']:.3f} is large but dropout is already at max_dropout {self.max_dropout:g}")
            elif curve["underfitting"] and curve["plateau"]:
                units = min(self.max_units, int(current["units"]) * 2)
                if linear:
                    set_train("hidden_layers", 1, f"training accuracy {curve['final_accuracy']} < 0.9 on a plateau: a linear model "
                              "under-fitting, one hidden layer")
                elif units > current["units"]:
                    set_train("units", units, f"training accuracy {curve['final_accuracy']} < 0.9 on a plateau: under-fitting, a wider model")

        warm_start = self._warm_start(obs, current, set_train, because, configured_epochs=configured_epochs)

        # 2. tune ----------------------------------------------------------------
        tune = self._tune(obs, because, configured_epochs=configured_epochs)

        # 3. controller ------------------------------------------------------------
        patience = max(1, int(current["early_stopping_patience"]) // 2)
        controller = ControllerSettings(patience=patience, **({"start_loss_factor": None} if warm_start else {})).to_dict()
        because(f"controller.patience={patience}",
                f"half the early_stopping_patience {current['early_stopping_patience']}: the learning rate drops on a plateau "
                "before early stopping ends training; divergence restores weights, lowers the rate and clips gradients")
        if warm_start:
            because("controller.start_loss_factor=null",
                    "the training continues trained weights with a fresh optimizer: its first epoch's loss is often above its "
                    "first batch's, which the start rule would take for divergence (restoring the start and cutting the rate "
                    "tenfold: bench/warm_start.py); a loss that doubles its best still counts as divergence")

        # 4. compress --------------------------------------------------------------
        compress, chosen = self._compress(obs, because)

        # 5. action ---------------------------------------------------------------
        action = self._action(obs, tune, chosen, because)
        return {"action": action, "train": train, "tune": tune, "warm_start": warm_start, "compress": compress, "controller": controller,
                "policy": {"name": self.name, "arm": None, "context": None}, "reasons": reasons}

    # ------------------------------------------------------------------ parts
    def _warm_start(self, obs: Observation, current: dict, set_train, because, *, configured_epochs: int) -> str | None:
        """The best trial's checkpoint when the final training can continue from it."""
        best, curve = obs.best_trial, obs.main_curve
        if not self.warm_start or best is None:
            return None
        if not best.get("checkpoint"):
            because("warm_start=null", f"trial {best['number']} saved no weights: the final training starts from scratch")
            return None
        from dlagent.ml.config import TrainConfig, ensemble_members

        members = ensemble_members(str(current.get("model")), current.get("ensemble"), current.get("init_from"), obs.primary.task)
        if members > 1:
            because("warm_start=null", f"the final training averages {members} networks (ensemble) and trial {best['number']} "
                    "trained one: every member starts from its own random weights, which is what makes them differ")
            return None

        # The trial trained the run's settings with its own params on top: a setting it did not tune is the run's.
        trained = {**TrainConfig().to_dict(), **obs.config, **best["params"]}
        changed = sorted(k for k in ARCHITECTURE if k in trained and trained[k] != current.get(k))
        if changed:
            diffs = ", ".join(f"{k} {trained[k]} -> {current[k]}" for k in changed)
            because("warm_start=null", f"the final training changes the architecture ({diffs}): "
                    "the trial's weights do not fit, it starts from scratch")
            return None
        if curve is None or curve["step"] != "trial" or curve["diverged"] or not curve["epochs"]:
            because("warm_start=null", "no healthy learning curve of the best trial: the final training starts from scratch")
            return None
        trained = int(best.get("epochs_run") or curve["epochs"])
        patience = int(current["early_stopping_patience"])
        if curve["still_improving"]:
            # What a from-scratch training would run (step 1's estimate, at least the configured
            # epochs: a trial cut short by trial_epochs says little about when it would stop),
            # less what the trial ran.
            from_scratch = max(int(current["epochs"]), int(configured_epochs))
            epochs = max(1, min(self.max_epochs, max(patience, from_scratch - trained)))
            set_train("epochs", epochs, f"warm start: trial {best['number']} trained {trained} epochs and its validation loss was still "
                      f"improving: the {from_scratch} epochs of a from-scratch training (the curve's estimate or the configured "
                      f"epochs, the larger) less those {trained} (at least early_stopping_patience {patience}); early stopping "
                      "ends it sooner once it converges")
        else:
            epochs = max(1, min(self.max_epochs, patience))
            lr = significant(current["learning_rate"] * self.fine_tune_lr_factor)
            set_train("epochs", epochs, f"warm start: trial {best['number']} converged (best validation loss at epoch "
                      f"{curve['best_epoch'] + 1} of {curve['epochs']}): a fine-tuning of early_stopping_patience {patience} epochs")
            set_train("learning_rate", lr, f"fine-tuning a converged model: learning_rate x{self.fine_tune_lr_factor:g}")
        because(f"warm_start=trial {best['number']}", f"trial {best['number']} saved its weights ({best['checkpoint']}) and the final "
                f"training keeps its architecture: continuing from them saves retraining its {trained} epochs")
        return best["checkpoint"]

    def _compress(self, obs: Observation, because) -> tuple[list, dict | None]:
        from dlagent.ml.gate import GateThresholds
        from dlagent.ml.selection import metric_of, select_candidate, size_of

        metric = obs.primary
        measured = [c for c in obs.candidates if metric_of(c["metrics"], metric) is not None]
        if not measured:
            because(f"compress: {len(self.compress_candidates)} candidates",
                    "no compression measured yet: try each candidate (one mapped task each)")
            return [dict(c) for c in self.compress_candidates], None
        reference = obs.reference_score
        source = f"the uncompressed model's {metric.val_key}"
        if reference is None:
            reference = metric.best(metric_of(c["metrics"], metric) for c in measured)
            source = f"the best candidate's {metric.val_key} (no evaluation run observed)"
        # The evaluate step's and the gate's rule, with this policy's budget (in the metric's points) as the only limit.
        chosen, within = select_candidate(measured, reference, GateThresholds(max_metric_drop_points=self.accuracy_budget_points), metric)
        budget = f"{self.accuracy_budget_points:g} {metric.name} points"
        if chosen is None:
            best = metric.best(metric_of(c["metrics"], metric) for c in measured)
            because("compress: none", f"no candidate within {budget} of {source} {reference:.4f}; best candidate {best:.4f}")
            return [], None
        size = size_of(chosen["metrics"])
        because(f"compress: {chosen['name']}",
                f"the most compressed candidate ({f'{size:.0f} bytes' if finite(size) else 'size unknown'}, gzip when measured) within "
                f"{budget} of {source} {reference:.4f}: {metric.name} {metric_of(chosen['metrics'], metric):.4f}; "
                f"{len(within)} of {len(measured)} candidates within budget")
        return [dict(chosen["config"])], chosen

    def _action(self, obs: Observation, tune: dict | None, chosen: dict | None, because) -> str:
        from dlagent.ml.selection import metric_of

        metric = obs.primary
        # validation scores only: the gate read the test split, this decision does not
        shipped = (obs.gate or {}).get("metrics", {}).get(f"shipped_{metric.val_key}")
        fair = obs.versus_champion("shipped")
        if fair is not None:  # the champion was measured on the validation rows it never trained on: so is the candidate
            value, what = fair, "the gated candidate (both on the validation rows the champion never trained on)"
        elif finite(shipped):  # the candidate the evaluate task picked and the gate judged
            value, what = shipped, "the gated candidate"
        elif chosen is not None:
            value, what = metric_of(chosen["metrics"], metric), f"compressed candidate {chosen['name']}"
        else:
            value, what = obs.reference_score, "evaluated model"
        champion = obs.champion_score
        blessed = obs.gate["blessed"] if obs.gate else None
        as_good = False  # and smaller or faster: the gate's second way to bless, asked of the validation split
        if value is None:
            better, versus = False, f"no evaluated {metric.val_key} observed"
        elif obs.champion is None:
            better, versus = True, f"{what} {metric.val_key} {value:.4f}, no champion deployed"
        elif champion is None:
            better, versus = False, (f"{what} {metric.val_key} {value:.4f}; champion v{obs.champion['version']} has no "
                                     f"{metric.val_key} to compare with")
        else:
            gain = metric.gain_points(value, champion)
            better = gain > self.min_champion_gain_points + 1e-9
            tolerance = ((obs.gate or {}).get("thresholds") or {}).get("tie_tolerance_points")
            smaller, faster = (False, False) if better else (obs.shipped_leaner() or (False, False))  # a latency is noisy: asked only for a tie
            lean = " and ".join(w for w, flag in (("smaller", smaller), ("faster", faster)) if flag)
            as_good = bool(lean) and finite(tolerance) and gain >= -tolerance - 1e-9
            versus = (f"{what} {metric.val_key} {value:.4f} vs champion v{obs.champion['version']} {champion:.4f} "
                      f"({gain:+.2f} points, min gain {self.min_champion_gain_points:g}"
                      + (f"; {lean} than the champion, the gate's tie tolerance {tolerance:g} points" if as_good else "")
                      + ")")
        gate = "not evaluated by the gate" if blessed is None else ("blessed by the gate" if blessed else "rejected by the gate")
        if blessed and better:
            because("action=deploy", f"{gate} and better than the champion: {versus}")
            return "deploy"
        if blessed and as_good:
            because("action=deploy", f"{gate} and as good as the champion on validation (within the gate's tie tolerance) "
                    f"and {lean}: {versus}")
            return "deploy"
        if better and blessed is False:
            because("action=stop", f"better than the champion on validation ({versus}) but {gate}: its verdict, on the test split, "
                    "vetoes the deploy and is not used to ask for more tuning (retuning until the test split agrees would "
                    "select on it)")
            return "stop"
        if tune is not None and tune["n_trials"] > 0:
            because("action=retune", f"not deploying ({gate}; {versus}) and tuning continues: run {tune['n_trials']} trials")
            return "retune"
        because("action=stop", f"not deploying ({gate}; {versus}) and no more tuning is planned")
        return "stop"




def _int(name, value, low, high):
    check_int(name, value, low=low, high=high)


def _num(name, value, low, high, *, low_open=False, high_open=False):
    check_number(name, value, low=low, high=high, low_open=low_open, high_open=high_open)
