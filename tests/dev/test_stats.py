"""The benchmarks' intervals: two runs on different seeds pooled equal one run on all the seeds."""

from __future__ import annotations

import random

import pytest
from dlagent_dev.stats import interval, pooled, std_from_interval


def test_pooled_sets_give_the_interval_of_all_their_values():
    rng = random.Random(7)
    first, second = [rng.gauss(-0.2, 0.7) for _ in range(20)], [rng.gauss(0.3, 0.5) for _ in range(20)]
    whole = interval(first + second)
    parts = [(interval(v)["mean"], interval(v)["std"], len(v)) for v in (first, second)]
    together = pooled(parts)
    assert together["n"] == 40
    assert together["mean"] == pytest.approx(whole["mean"], abs=1e-3) and together["std"] == pytest.approx(whole["std"], abs=1e-3)
    assert together["ci95"] == pytest.approx(whole["ci95"], abs=2e-3)


def test_the_standard_deviation_is_read_back_from_a_printed_interval():
    values = [0.1, -0.5, 0.9, 0.3, -0.2, 0.4]
    summary = interval(values)
    assert std_from_interval(summary["ci95"], len(values)) == pytest.approx(summary["std"], abs=1e-3)
