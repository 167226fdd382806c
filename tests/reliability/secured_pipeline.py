"""A short real pipeline, operator by operator, in its own process (used by ``test_security.py``).

    python tests/reliability/secured_pipeline.py OUT.json

Runs ``validate_inputs -> create_study -> tune (1 trial) -> tune_summary -> agent_plan -> train
-> compression_candidates -> compress (1 candidate) -> evaluate -> agent_decide -> deploy ->
retune_conf -> finish`` the way the DAG wires them, each with ``execute()`` on a stub task
instance, against whatever the environment's Connections and ``DLAGENT_*`` variables say.
Logging is at DEBUG (Python logging and Airflow's task logger) and goes to this process's
stdout/stderr, which the caller captures whole. Every return value and every XCom a task
pushed is written to ``OUT.json`` (``repr`` for anything that is not JSON, so the caller can
see it), with the XCom sizes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
DAG_ID = "dl_agent_pipeline"
RUN_ID = "manual__secured"
MODEL_NAME = "secured-classifier"
DATA = {"dataset": "digits", "data_options": {"max_samples": 300}}
TRAIN = {"model": "mlp", "epochs": 2, "units": 16, "seed": 0, "early_stopping_patience": 0}
SPACE = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}


def main(out_path: str) -> int:
    sys.path.insert(0, str(PROJECT_DIR))
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # SQL statements and result rows at DEBUG would drown the log (SQLAlchemy never prints a password:
    # its URLs render as ***); everything else stays at DEBUG.
    for noisy in ("sqlalchemy", "matplotlib", "PIL", "h5py", "absl", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from dlagent.operators.agent import AgentOperator, PlanConfOperator
    from dlagent.operators.compress import CompressionCandidatesOperator, CompressOperator
    from dlagent.operators.deploy import DeployOperator
    from dlagent.operators.evaluate import EvaluateOperator
    from dlagent.operators.pipeline import FinishPipelineOperator, ValidateInputsOperator
    from dlagent.operators.train import TrainOperator
    from dlagent.operators.tune import CreateStudyOperator, TuneOperator, TuneSummaryOperator

    from tests.operators.context import make_context

    returned: dict = {}
    pushed: dict = {}

    def run(operator, map_index: int = -1, upstream: dict | None = None):
        context = make_context(operator.task_id, dag_id=DAG_ID, run_id=RUN_ID, map_index=map_index)
        for (task_id, key), value in (upstream or {}).items():
            context["ti"].xcoms[(task_id, key)] = value
        value = operator.execute(context)
        name = operator.task_id + (f"[{map_index}]" if map_index >= 0 else "")
        returned[name] = value
        pushed[name] = {str(k): v for k, v in context["ti"].xcoms.items() if not isinstance(k, tuple)}
        print(f"[secured] {name} done", flush=True)
        return value

    common = {"experiment_name": "secured"}
    tuning = {**DATA, "train_config": TRAIN, "search_space": SPACE, "n_trials": 1, "sampler": "random", **common}
    validate = run(ValidateInputsOperator(task_id="validate_inputs", dataset="digits", data_options=DATA["data_options"],
                                          train_config=TRAIN, compression_candidates=[{"quantization": "dynamic"}],
                                          model_name=MODEL_NAME, search_space=SPACE, **common))
    for index in run(CreateStudyOperator(task_id="create_study", n_workers=1, **tuning)):
        run(TuneOperator(task_id="tune", worker_index=index, **tuning), map_index=index)
    summary = run(TuneSummaryOperator(task_id="tune_summary", **tuning))
    agent = {"policy": "rules", "champion_name": MODEL_NAME, "fixed_resources": {"cpu_count": 2, "cpus_free": 1}, **common}
    plan = run(AgentOperator(task_id="agent_plan", phase="plan", **agent))
    plan_train = {k: v for k, v in plan["train"].items() if k != "epochs"}  # keep the run short
    train = run(TrainOperator(task_id="train", **DATA, train_config=TRAIN, overrides=[summary["best_params"], plan_train],
                              controller=plan["controller"], **common))
    candidates = run(CompressionCandidatesOperator(task_id="compression_candidates", candidates=[{"quantization": "dynamic"}],
                                                   seed=0, **common))
    compressed = [run(CompressOperator(task_id="compress", model_uri=train["model_uri"], compression=candidate, seed=0,
                                       latency_runs=5, **DATA, **common), map_index=index)
                  for index, candidate in enumerate(candidates)]
    evaluation = run(EvaluateOperator(task_id="evaluate", model_uri=train["model_uri"], candidates=compressed, seed=0,
                                      model_name=MODEL_NAME, explain=False, latency_runs=5, **DATA, **common))
    decision = run(AgentOperator(task_id="agent_decide", phase="decide", **agent))
    deployed = run(DeployOperator(task_id="deploy", evaluation=evaluation, model_name=MODEL_NAME, **common))
    run(PlanConfOperator(task_id="retune_conf", plan=decision, observed_run_id=decision.get("observed_run_id"),
                         base_conf={"experiment_name": "secured", "model_name": MODEL_NAME}, **common))
    run(FinishPipelineOperator(task_id="finish", collect={"test_accuracy": "evaluate.test_accuracy", "deployed_version": "deploy.version"},
                               **common),
        upstream={("evaluate", "return_value"): evaluation, ("deploy", "return_value"): deployed})

    sizes = {}
    for name, value in returned.items():
        try:
            sizes[name] = len(json.dumps(value).encode("utf-8"))
        except (TypeError, ValueError):
            sizes[name] = None
    Path(out_path).write_text(json.dumps({"returned": returned, "pushed": pushed, "sizes": sizes,
                                          "validate": validate, "deployed": deployed}, default=repr))
    print(f"[secured] wrote {out_path}; tracking at {os.environ.get('DLAGENT_ARTIFACT_ROOT')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
