"""The confs the whole-DAG tests run dl_agent_pipeline with: tiny, so a run takes a minute or two.

Two mapped tuning workers share one 3-trial study of 3-epoch trials; training uses its best
params. On the live services every task is its own process (it imports TensorFlow), so
``LIVE_CONF`` also lists two compression candidates instead of the agent's four: two mapped
``compress`` tasks still show the mapping, at half the processes.

The candidate is chosen on the validation split and gated on the test split, 45 samples each
(of 300): one sample is 2.2 accuracy points, and a candidate within 1 point on validation was
seen to lose 4 test samples (8.9 points). These runs test the flow, so the compression budget is
wide (12.5 points; not a whole number: the trigger form shows 10.0 as "10"); the gate's own checks are tested in ``tests/ml/test_gate.py``.
"""

from __future__ import annotations

TINY_SPACE = {"learning_rate": {"type": "float", "low": 0.001, "high": 0.03, "log": True}, "units": {"type": "int", "low": 16, "high": 64}}
TINY_CONF = {"max_samples": 300, "epochs": 4, "model": "mlp", "experiment_name": "e2e",
             "n_trials": 3, "tuning_workers": 2, "search_space": TINY_SPACE, "tune_trial_epochs": 3,
             "tune_min_trial_epochs": 2, "max_metric_drop_points": 12.5}
#: The same tiny run with the user's example builder (include/models/example.py), one of its model
#: arguments tuned next to the learning rate.
BUILDER_SPACE = {"learning_rate": TINY_SPACE["learning_rate"], "model_args.width": {"type": "int", "low": 16, "high": 64}}
BUILDER_CONF = {**TINY_CONF, "model": "include.models.example:build", "model_args": {"depth": 1}, "search_space": BUILDER_SPACE}
LIVE_CANDIDATES = [{"quantization": "dynamic"}, {"quantization": "int8", "sparsity": 0.5}]
LIVE_CONF = {**TINY_CONF, "experiment_name": "live", "compression_candidates": LIVE_CANDIDATES}
