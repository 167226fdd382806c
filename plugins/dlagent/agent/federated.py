"""The agent between federated rounds: read the rounds so far, decide how the next one runs.

Pure (no Airflow, MLflow or TensorFlow): the round-plan task gives it the history the
aggregation tasks recorded (each round's sites, sample counts, the sites' training losses and
the global model's validation scores) and logs what it returns, reasons included.

The rules, each stated in the reason it writes:

- **converged**: the global validation score has not improved by ``min_delta`` (in the
  metric's points: 0.2 accuracy points, or 0.2 % of the error for rmse/mae) for ``patience``
  rounds: stop early, the rounds left would cost time for nothing.
- **got worse**: the last round's global score fell more than ``drop_points`` below the best
  one: the sites' updates overshoot, so the learning rate is halved for the next round.
- **client drift**: the global score fell while every site's own training loss fell: the
  sites fit their own data at the global model's expense (label skew), so local epochs are
  halved (at least 1).
- **too few sites**: the global score fell in a round that drew only some of the sites: the
  average followed the few drawn, so the next rounds draw one site more.

``policy="off"`` runs every round exactly as the Params say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dlagent.errors import ConfigError

POLICIES = ("rules", "off")
PATIENCE = 2  # rounds without improvement before stopping
MIN_DELTA_POINTS = 0.2  # improvement that counts, in the metric's points
DROP_POINTS = 2.0  # a fall of the global score that halves the learning rate
MIN_LEARNING_RATE = 1e-6


@dataclass(frozen=True)
class RoundPlan:
    """How round ``round`` runs (``action`` ``train``), or that it does not (``stop``), and why."""

    round: int
    action: str
    local_epochs: int
    learning_rate: float
    sites_per_round: int
    reasons: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"round": self.round, "action": self.action, "local_epochs": self.local_epochs, "learning_rate": self.learning_rate,
                "sites_per_round": self.sites_per_round, "reasons": list(self.reasons)}


def points(value: float, reference: float, *, higher_is_better: bool, relative: bool) -> float:
    """How much better ``value`` is than ``reference``, in points (positive: better)."""
    gain = (value - reference) if higher_is_better else (reference - value)
    if relative:
        return 100.0 * gain / max(abs(reference), 1e-12)
    return 100.0 * gain


def plan_round(history: list[dict], *, round_number: int, rounds: int, local_epochs: int, learning_rate: float,
               sites_per_round: int, metric: str, higher_is_better: bool = True, relative: bool = False,
               policy: str = "rules", n_sites: int | None = None) -> RoundPlan:
    """The plan of round ``round_number`` (from 1) after the rounds in ``history``.

    ``history``: one record per finished round, oldest first, each with ``val`` (``{"val_<metric>":
    score}``) and ``train_loss`` (the sites' losses), and the ``local_epochs`` / ``learning_rate``
    it ran with. The other arguments are the Params' settings (``n_sites``: all the sites there are).
    """
    if policy not in POLICIES:
        raise ConfigError("agent_policy", f"unknown policy {policy!r} for federated rounds.", f"use one of {list(POLICIES)}.")
    last = history[-1] if history else {}
    epochs = int(last.get("local_epochs", local_epochs))
    rate = float(last.get("learning_rate", learning_rate))
    drawn = int(last.get("sites_per_round", sites_per_round))
    n_sites = n_sites or sites_per_round
    plan = {"round": round_number, "local_epochs": epochs, "learning_rate": rate, "sites_per_round": drawn}
    if round_number > rounds:
        return RoundPlan(action="stop", reasons=[f"all {rounds} rounds the Params ask for have run"], **plan)
    if policy == "off" or not history:
        why = "agent_policy is off: the Params' settings" if policy == "off" else "first round: the Params' settings"
        return RoundPlan(action="train", reasons=[why], **{**plan, "local_epochs": local_epochs, "learning_rate": learning_rate,
                                                           "sites_per_round": sites_per_round})
    key = f"val_{metric}"
    scores = [record["val"][key] for record in history]
    better = lambda a, b: points(a, b, higher_is_better=higher_is_better, relative=relative)  # noqa: E731
    best_index = max(range(len(scores)), key=lambda i: scores[i] if higher_is_better else -scores[i])
    improved_at, reference = 0, scores[0]  # the last round that beat the rounds before it by min_delta (Keras' EarlyStopping)
    for index, score in enumerate(scores[1:], start=1):
        if better(score, reference) >= MIN_DELTA_POINTS:
            improved_at, reference = index, score
    if len(scores) - 1 - improved_at >= PATIENCE:
        return RoundPlan(action="stop", reasons=[
            f"converged: {key} has not improved by {MIN_DELTA_POINTS} points in {len(scores) - 1 - improved_at} rounds "
            f"(best {reference:.4g} at round {improved_at + 1}); the {rounds - round_number + 1} rounds left are not run"], **plan)
    reasons = []
    if len(scores) >= 2:
        fell = -better(scores[-1], scores[best_index])
        if fell > DROP_POINTS:
            rate = max(rate / 2.0, MIN_LEARNING_RATE)
            reasons.append(f"got worse: {key} {scores[-1]:.4g} is {fell:.1f} points below the best {scores[best_index]:.4g}: "
                           f"learning rate halved to {rate:.3g}")
        previous_losses, losses = history[-2].get("train_loss") or [], last.get("train_loss") or []
        same_sites = last.get("sites") == history[-2].get("sites")
        sites_fitted = same_sites and bool(losses) and len(losses) == len(previous_losses) and all(a < b for a, b in zip(losses, previous_losses, strict=True))
        if better(scores[-1], scores[-2]) < 0 and sites_fitted and epochs > 1:
            epochs = max(1, epochs // 2)
            reasons.append(f"client drift: every site's training loss fell while {key} fell ({scores[-2]:.4g} -> {scores[-1]:.4g}): "
                           f"local epochs halved to {epochs}")
        if better(scores[-1], scores[-2]) < 0 and len(last.get("sites") or []) < n_sites and drawn < n_sites:
            drawn += 1
            reasons.append(f"too few sites: {key} fell ({scores[-2]:.4g} -> {scores[-1]:.4g}) in a round of {drawn - 1} of {n_sites} "
                           f"sites: {drawn} sites per round from now on")
    if not reasons:
        reasons.append(f"improving: {key} {scores[-1]:.4g} (best {scores[best_index]:.4g}): same settings")
    return RoundPlan(action="train", reasons=reasons, **{**plan, "local_epochs": epochs, "learning_rate": rate, "sites_per_round": drawn})
