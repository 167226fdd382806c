"""The agent pipeline against the static pipeline on MNIST, at the same compute budget.

    .venv/bin/python bench/agent_vs_static.py            # ../shared/data/mnist-t10k, 3 seeds
    .venv/bin/python bench/agent_vs_static.py --quick    # a small smoke run (about a minute)

Both pipelines run the ML core directly (``dlagent.ml.tuning``, ``dlagent.ml.training``,
``dlagent.agent``; no Airflow), with dl_agent_pipeline's default settings (``epochs`` 20,
``batch_size`` 32, ``learning_rate`` 0.001, ``dropout`` 0.2, early-stopping patience 5; 6
tuning trials on the model's default search space, TPE + Hyperband), on the same stratified
split of the MNIST test set per seed (70/15/15). The model is ``mlp`` by default so that 3
seeds fit on 2 cores (``--model cnn`` for the Params' default model, several times slower).

* **static**: tune ``n_trials`` trials, train the best parameters for ``epochs`` epochs with
  early stopping, evaluate on the test split. No agent.
* **agent**: the rules policy decides after observing MLflow (a temporary SQLite store with
  the same runs the operators write): tuning in rounds (a first round of half the trials, then
  more only while the best value still improves, on a space narrowed around the best trial and
  seeded with the earlier rounds' trials; each trial trains at most ``trial_epochs``, 0.4 x the
  epochs by default, ``--trial-epochs-fraction`` to change it), then the final training, which
  continues the best trial from its checkpoint (warm start), its epochs (from the best trial's
  learning curve, less those the trial already ran), dropout (on a
  train/validation gap) and the in-training controller (learning rate on plateau, divergence
  recovery). Same budget: never more trials in total, nor more final-training epochs, than the
  static pipeline (``max_trials`` and ``max_epochs`` of the rules policy); it may use less.
  Training and evaluation are the same functions as the static pipeline's. Each tuning round
  is its own Optuna study; its trials are renumbered after the previous rounds' so the agent
  reads them in order.

Printed per pipeline: test accuracy, model size (the ``.keras`` file without optimizer state),
total training epochs (every tuning trial's epochs plus the final training's) and the ratios.

**learning vs rules** (simulated): a synthetic pipeline environment with a known best action,
in which a run's test accuracy is ``A - alpha * log2(lr / lr_best)**2 - beta * exp(-epochs / tau)``
plus noise, with ``lr_best`` twice the rules policy's learning rate (the rules are too careful,
as learning-rate schedule work such as super-convergence suggests) and ``tau`` a quarter of the
rules' epochs (accuracy saturates early). The reward is the learning policy's own formula
``a * (accuracy - baseline) - b * seconds - c * epochs`` with its default weights. The rules
policy and the learning policy (default settings: 9 arms, Thompson sampling) each make 10 plans
in a row (the learning one is rewarded after each; its state is reloaded every run), repeated
over ``--sim-repeats`` noise and policy seeds. ``learning_vs_rules_reward`` is the mean reward
over those 10 runs, learning minus rules (exploration included);
``learning_vs_rules_reward_after_10`` is the expected reward of the learning policy's choice
once the 10 runs are learnt, minus the rules'.

The last line is ``RESULT {json}``. Goals (issue 6): the agent at least as accurate with at most
70 % of the static pipeline's training epochs, or 0.5 points more accurate at the same budget;
the learning policy's reward above the rules policy's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR / "plugins"))

DEFAULT_DATA = "../shared/data/mnist-t10k"
FULL = {"seeds": [0, 1, 2], "max_samples": None, "epochs": 20, "n_trials": 6, "early_stopping_patience": 5}
QUICK = {"seeds": [0, 1, 2], "max_samples": 1000, "epochs": 5, "n_trials": 4, "early_stopping_patience": 2}
SIM_RUNS = 10
RESOURCES = {"cpu_count": 1, "cpus_free": 1}  # one worker: the benchmark runs trials one after the other


# --------------------------------------------------------------------------- the two pipelines


def base_config(args, settings, seed: int):
    from dlagent.ml.config import TrainConfig

    return TrainConfig(model=args.model, epochs=settings["epochs"], early_stopping_patience=settings["early_stopping_patience"],
                       seed=seed)


def tune(workdir: Path, study: str, splits, base, space, n_trials: int, seed: int, *, client=None, experiment_id=None,
         parent_run_id=None, seed_from=(), min_resource=1) -> dict:
    """One tuning round: a new study (seeded with ``seed_from``'s trials), ``n_trials`` trials
    (TPE + Hyperband over min_resource..epochs)."""
    from dlagent.ml import tuning

    url = f"sqlite:///{workdir / 'optuna.db'}"
    settings = tuning.StudySettings(space=space, sampler="tpe", pruner="hyperband", seed=seed, max_resource=base.epochs,
                                    min_resource=min_resource)
    tuning.create_study(url, study, settings, seed_from=list(seed_from) or None)
    worker = tuning.WorkerSettings(storage_url=url, study_name=study, base_config=base, n_trials=n_trials, experiment_id=experiment_id,
                                   parent_run_id=parent_run_id, worker_tags={"bench": "agent_vs_static"})
    tuning.run_worker(worker, splits, client=client)
    return tuning.study_summary(url, study)


def final_training(splits, config, callbacks=(), *, warm_start=None, client=None) -> dict:
    import keras
    from dlagent.ml.evaluation import keras_model_size
    from dlagent.ml.model_store import load_checkpoint
    from dlagent.ml.training import evaluate, fit

    initial = load_checkpoint(client, warm_start) if warm_start else None
    result = fit(splits, config, callbacks=list(callbacks), initial_model=initial)
    out = {"test_accuracy": evaluate(result.model, splits)["test_accuracy"], "size_bytes": keras_model_size(result.model),
           "epochs": result.epochs_run, "config": config.to_dict()}
    keras.backend.clear_session()
    return out


def static_pipeline(workdir: Path, splits, base, settings, seed: int) -> dict:
    from dlagent.ml import tuning

    started = time.perf_counter()
    space = tuning.default_search_space(base.model)
    summary = tune(workdir, f"static-{seed}", splits, base, space, settings["n_trials"], seed)
    final = final_training(splits, base.replace(**summary["best_params"]))
    return {**final, "tuning_epochs": summary["epochs_total"], "trials": summary["n_finished"],
            "total_epochs": summary["epochs_total"] + final["epochs"], "seconds": time.perf_counter() - started,
            "decisions": [f"fixed: {settings['n_trials']} trials, best params {summary['best_params']}, {base.epochs} epochs"]}


def agent_pipeline(workdir: Path, splits, base, settings, seed: int) -> dict:
    from dlagent.agent import run_agent
    from dlagent.agent.controller import controller_from_plan
    from dlagent.agent.policies.rules import RulesPolicy
    from dlagent.ml import tracking, tuning
    from mlflow import MlflowClient

    started = time.perf_counter()
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, f"agent-{seed}", str(workdir / "artifacts"))
    parent = client.create_run(experiment_id, run_name=f"agent pipeline seed {seed}", tags={"dlagent.kind": "pipeline"}).info.run_id
    tracking.log_params_safely(client, parent, {**base.to_dict(), "dataset": splits.name})
    budget = settings["n_trials"]
    first = max(1, budget // 2)
    # The same budget as the static pipeline: at most its trials, at most its epochs for the final training.
    policy = RulesPolicy(initial_trials=first, trials_per_round=max(1, budget - first), max_trials=budget,
                         improvement_window=max(1, first - 1), max_epochs=base.epochs, max_workers=1,
                         **({"trial_epochs_fraction": settings["trial_epochs_fraction"]} if settings.get("trial_epochs_fraction") else {}))
    plan, _ = run_agent(client, experiment_id, parent, policy=policy, resources=RESOURCES)
    tuning_epochs, rounds, ran = 0, 0, 0
    # The bench also holds the budget itself: with no completed trial the rules ask for a first
    # round again, whatever max_trials says.
    while plan["tune"] and plan["tune"]["n_trials"] > 0 and ran < budget:
        space = plan["tune"]["search_space"] or tuning.default_search_space(base.model)
        study = f"agent-{seed}-round{rounds}"
        n_trials = min(plan["tune"]["n_trials"], budget - ran)
        trial_base = base.replace(epochs=min(base.epochs, plan["tune"]["trial_epochs"] or base.epochs))
        summary = tune(workdir, study, splits, trial_base, space, n_trials, seed + rounds, client=client,
                       experiment_id=experiment_id, parent_run_id=parent,
                       seed_from=plan["tune"]["seed_studies"], min_resource=plan["tune"]["min_trial_epochs"] or 1)
        tuning_epochs += summary["epochs_total"]
        ran += n_trials
        _number_trials_across_rounds(client, experiment_id, study)
        rounds += 1
        plan, _ = run_agent(client, experiment_id, parent, policy=policy, resources=RESOURCES)
    trials = sum(1 for r in client.search_runs([experiment_id], "tags.`optuna.trial_number` != ''")
                 if r.data.tags.get("optuna.state") in ("COMPLETE", "PRUNED"))
    decisions = [f"{r['decision']}: {r['because']}" for r in plan["reasons"]]
    config = base.replace(**plan["train"])
    final = final_training(splits, config, controller_from_plan(plan["controller"]), warm_start=plan["warm_start"], client=client)
    return {**final, "tuning_epochs": tuning_epochs, "trials": trials, "rounds": rounds,
            "total_epochs": tuning_epochs + final["epochs"], "seconds": time.perf_counter() - started, "decisions": decisions}


def _number_trials_across_rounds(client, experiment_id: str, study: str) -> None:
    """Number this round's trials after the previous rounds' (each round is its own Optuna study,
    numbered from 0): the agent reads the trials in number order to see whether the best value
    still improves."""
    earlier = [r for r in client.search_runs([experiment_id], "tags.`optuna.trial_number` != ''") if r.data.tags.get("optuna.study") != study]
    offset = 1 + max((int(r.data.tags["optuna.trial_number"]) for r in earlier), default=-1)
    if offset == 0:
        return
    for run in client.search_runs([experiment_id], f"tags.`optuna.study` = '{study}'"):
        client.set_tag(run.info.run_id, "optuna.trial_number", str(offset + int(run.data.tags["optuna.trial_number"])))


# --------------------------------------------------------------------------- learning vs rules (simulated)


def simulate_policies(repeats: int) -> dict:
    """Mean reward of the rules and learning policies over SIM_RUNS runs of a synthetic pipeline."""
    from dlagent.agent.curves import analyze_curve
    from dlagent.agent.observe import Observation
    from dlagent.agent.plan import validate_plan
    from dlagent.agent.policies.learning import LearningPolicy, MemoryStateStore
    from dlagent.agent.policies.rules import RulesPolicy

    curve = analyze_curve({  # a run that over-fits: training accuracy far above validation accuracy
        "loss": [1.2, 0.6, 0.35, 0.2, 0.12, 0.08, 0.05, 0.03], "val_loss": [1.1, 0.7, 0.5, 0.42, 0.40, 0.41, 0.43, 0.45],
        "accuracy": [0.6, 0.85, 0.92, 0.96, 0.98, 0.99, 0.995, 0.999], "val_accuracy": [0.62, 0.80, 0.86, 0.89, 0.90, 0.90, 0.895, 0.89]})
    observation = Observation(experiment_id="sim", parent_run_id="sim", config={"learning_rate": 0.001, "epochs": 10, "early_stopping_patience": 3},
                              curves=[{"run_id": "sim", "step": "train", "params": {}, **curve}], resources=RESOURCES)
    weights = LearningPolicy()  # the reward formula and its default weights
    rules_plan = validate_plan(RulesPolicy().decide(observation))
    defaults = {**observation.config, **rules_plan["train"]}
    lr_rules, epochs_rules = float(defaults["learning_rate"]), int(defaults["epochs"])
    env = {"A": 0.97, "alpha": 0.01, "beta": 0.05, "lr_best": 2 * lr_rules, "tau": epochs_rules / 4, "noise": 0.002,
           "baseline": 0.95, "seconds_per_epoch": 5.0}

    def accuracy(lr: float, epochs: int) -> float:
        return env["A"] - env["alpha"] * math.log2(lr / env["lr_best"]) ** 2 - env["beta"] * math.exp(-epochs / env["tau"])

    def reward(plan: dict, rng: random.Random | None) -> float:
        train = {**defaults, **plan["train"]}
        lr, epochs = float(train["learning_rate"]), int(train["epochs"])
        acc = accuracy(lr, epochs) + (rng.gauss(0, env["noise"]) if rng else 0.0)
        return weights.reward(acc - env["baseline"], epochs * env["seconds_per_epoch"], epochs)

    rules_means, learning_means, after_means, learning_choices = [], [], [], []
    for repeat in range(repeats):
        rng = random.Random(1000 + repeat)
        rules_means.append(statistics.fmean(reward(validate_plan(RulesPolicy().decide(observation)), rng) for _ in range(SIM_RUNS)))
        store = MemoryStateStore()
        rewards = []
        for _ in range(SIM_RUNS):
            policy = LearningPolicy(store=store, seed=repeat)  # a fresh policy each run, state reloaded
            plan = validate_plan(policy.decide(observation))
            value = reward(plan, rng)
            policy.update(value, plan=plan)
            rewards.append(value)
        learning_means.append(statistics.fmean(rewards))
        # After the 10 runs: what its next plans earn (expected reward, no noise, no more learning).
        policy = LearningPolicy(store=store, seed=repeat)
        after_means.append(reward(validate_plan(policy.decide(observation)), None))
        learning_choices.append(policy.decide(observation)["policy"]["arm"])
    rules_expected = reward(rules_plan, None)
    arms = {arm: reward(_scaled(defaults, lr, ep), None) for arm, (lr, ep) in LearningPolicy().arms.items()}
    return {
        "rules_mean_reward": statistics.fmean(rules_means), "learning_mean_reward": statistics.fmean(learning_means),
        "learning_reward_after": statistics.fmean(after_means), "rules_expected_reward": rules_expected,
        "best_arm": max(arms, key=arms.get), "arm_rewards": arms, "choices_after": learning_choices, "env": env,
        "rules_plan": {"learning_rate": lr_rules, "epochs": epochs_rules},
    }


def _scaled(defaults: dict, lr_scale: float, epoch_scale: float) -> dict:
    return {"train": {"learning_rate": defaults["learning_rate"] * lr_scale,
                      "epochs": max(1, int(round(defaults["epochs"] * epoch_scale)))}}


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"MNIST IDX folder (default {DEFAULT_DATA}, from the project root)")
    parser.add_argument("--quick", action="store_true", help="1,000 samples, 5 epochs, 4 trials: a smoke run, not the figures")
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"], help="model of both pipelines (default mlp)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="data/model seeds (default 0 1 2)")
    parser.add_argument("--trial-epochs-fraction", type=float, default=None,
                        help="the rules policy's trial_epochs_fraction (default: the policy's own default)")
    parser.add_argument("--sim-repeats", type=int, default=20, help="repetitions of the 10 simulated runs")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir() or not (list(data.glob("*images-idx3-ubyte*")) and list(data.glob("*labels-idx1-ubyte*"))):
        print(f"[bench] MNIST IDX data not found in {str(data)!r} (need t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz).\n"
              f"        Pass --data <folder>; in this workspace it is {DEFAULT_DATA} (run from the project root).", file=sys.stderr)
        return 2
    settings = dict(QUICK if args.quick else FULL)
    if args.seeds:
        settings["seeds"] = args.seeds
    if args.trial_epochs_fraction is not None:
        settings["trial_epochs_fraction"] = args.trial_epochs_fraction
    if len(settings["seeds"]) < 3 and not args.quick:
        print("[bench] give at least 3 seeds for the figures", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from dlagent.ml.data import load_dataset

    total_started = time.perf_counter()
    print(f"{'QUICK' if args.quick else 'full'} mode | model {args.model} | settings {settings}", flush=True)
    rows = []
    for seed in settings["seeds"]:
        splits = load_dataset(f"mnist-idx:{data.resolve()}", seed=seed, max_samples=settings["max_samples"])
        base = base_config(args, settings, seed)
        print(f"\nseed {seed}: {splits.summary()}", flush=True)
        with tempfile.TemporaryDirectory(prefix="dlagent-agent-bench-") as tmp:
            static = static_pipeline(Path(tmp), splits, base, settings, seed)
            _print_run("static", static)
            agent = agent_pipeline(Path(tmp), splits, base, settings, seed)
            _print_run("agent", agent)
            for line in agent["decisions"]:
                print(f"      agent: {line}")
        rows.append({"seed": seed, "static": static, "agent": agent})

    print(f"\nsimulated learning vs rules: {SIM_RUNS} runs x {args.sim_repeats} repeats", flush=True)
    sim = simulate_policies(args.sim_repeats)
    print(f"  environment {json.dumps(sim['env'])}; rules plan {sim['rules_plan']}")
    print("  expected reward per arm: " + ", ".join(f"{arm} {value:.3f}" for arm, value in sorted(sim["arm_rewards"].items())))
    print(f"  best arm {sim['best_arm']}; learning policy's choice after {SIM_RUNS} runs: "
          + ", ".join(f"{arm} x{sim['choices_after'].count(arm)}" for arm in sorted(set(sim["choices_after"]))))
    print(f"  mean reward over the {SIM_RUNS} runs: rules {sim['rules_mean_reward']:.3f}, learning {sim['learning_mean_reward']:.3f}; "
          f"expected reward after them: rules {sim['rules_expected_reward']:.3f}, learning {sim['learning_reward_after']:.3f}")

    def mean(pipeline, key):
        return statistics.fmean(r[pipeline][key] for r in rows)

    static_acc, agent_acc = mean("static", "test_accuracy"), mean("agent", "test_accuracy")
    static_epochs, agent_epochs = mean("static", "total_epochs"), mean("agent", "total_epochs")
    epochs_ratio = sum(r["agent"]["total_epochs"] for r in rows) / sum(r["static"]["total_epochs"] for r in rows)
    final_ratio = sum(r["agent"]["epochs"] for r in rows) / sum(r["static"]["epochs"] for r in rows)
    gain = (agent_acc - static_acc) * 100
    size_ratio = mean("agent", "size_bytes") / mean("static", "size_bytes")
    learning_vs_rules = sim["learning_mean_reward"] - sim["rules_mean_reward"]
    learning_after = sim["learning_reward_after"] - sim["rules_expected_reward"]
    width = 2 + 7 * len(rows)
    print(f"\n{'pipeline':<9}{'test acc (mean)':>16}{'per seed':>{width}}{'size bytes':>12}{'epochs':>8}{'tuning':>8}{'final':>7}{'trials':>7}{'wall s':>8}")
    for name in ("static", "agent"):
        per_seed = " ".join(f"{r[name]['test_accuracy']:.4f}" for r in rows)
        print(f"{name:<9}{mean(name, 'test_accuracy'):>16.4f}{per_seed:>{width}}{mean(name, 'size_bytes'):>12.0f}{mean(name, 'total_epochs'):>8.1f}"
              f"{mean(name, 'tuning_epochs'):>8.1f}{mean(name, 'epochs'):>7.1f}{mean(name, 'trials'):>7.1f}{mean(name, 'seconds'):>8.1f}")
    print(f"\nagent/static total epochs {epochs_ratio:.3f} (final training only {final_ratio:.3f}); size ratio {size_ratio:.3f}; "
          f"test accuracy agent - static {gain:+.2f} points")
    print(f"learning - rules reward: {learning_vs_rules:+.3f} over the {SIM_RUNS} runs (exploration included), "
          f"{learning_after:+.3f} after them")
    goals = {
        "as_accurate_with_le_70pct_epochs": agent_acc >= static_acc and epochs_ratio <= 0.7,
        "stretch_le_50pct_epochs": agent_acc >= static_acc and epochs_ratio <= 0.5,
        "plus_0.5_points_same_budget": gain >= 0.5 and epochs_ratio <= 1.0,
        "learning_beats_rules_over_10_runs": learning_vs_rules > 0,
        "learning_beats_rules_after_10_runs": learning_after > 0,
    }
    print(f"goals: {goals}")
    print(f"total wall time {(time.perf_counter() - total_started) / 60:.1f} min")
    if args.quick:
        print("(quick mode: a smoke run on 1,000 samples; the goals are for the full run)")
    print("RESULT " + json.dumps({
        "static_test_acc": round(static_acc, 4), "agent_test_acc": round(agent_acc, 4),
        "epochs_ratio": round(epochs_ratio, 4), "acc_gain_points": round(gain, 3),
        "learning_vs_rules_reward": round(learning_vs_rules, 4),
        "learning_vs_rules_reward_after_10": round(learning_after, 4),
        "static_epochs": round(static_epochs, 2), "agent_epochs": round(agent_epochs, 2), "final_epochs_ratio": round(final_ratio, 4),
        "static_size_bytes": round(mean("static", "size_bytes")), "agent_size_bytes": round(mean("agent", "size_bytes")),
        "size_ratio": round(size_ratio, 4), "static_trials": mean("static", "trials"), "agent_trials": mean("agent", "trials"),
        "per_seed": [{"seed": r["seed"], "static_acc": round(r["static"]["test_accuracy"], 4), "agent_acc": round(r["agent"]["test_accuracy"], 4),
                      "static_epochs": r["static"]["total_epochs"], "agent_epochs": r["agent"]["total_epochs"]} for r in rows],
        "model": args.model, "seeds": settings["seeds"], "quick": args.quick, "goals": goals,
        "total_s": round(time.perf_counter() - total_started, 1),
    }))
    return 0


def _print_run(name: str, run: dict) -> None:
    print(f"  {name:<7} test_accuracy {run['test_accuracy']:.4f}  size {run['size_bytes']} B  epochs {run['total_epochs']} "
          f"(tuning {run['tuning_epochs']} in {run['trials']} trials, final {run['epochs']})  {run['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
