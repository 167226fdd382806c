"""Benchmark: what a scheduler pays to parse dlagent's DAG files and load its plugin.

    .venv/bin/python bench/parse_time.py [--repeats 7]

Every figure is measured in a fresh interpreter, as the DAG processor and the api-server pay
it: after ``airflow.sdk`` (or ``airflow.plugins_manager``) is already loaded, the time to run
one DAG file (or to import ``dlagent.plugin``). The baseline, measured in the same run and the
same way, is an Airflow-only DAG file with the same shape of imports and operators from
``airflow.providers.standard`` (what any DAG costs). Repeated ``--repeats`` times; the median
and the spread (min..max) are reported, and the ratio of medians to the baseline.

These timings used to be assertions inside the test suite, where a loaded machine made them
flake; the tests keep the part that cannot flake (no heavy import at parse time).

The last line is ``RESULT {json}``. Goals: each DAG file parses in under 1 s and at most 1.5x
the Airflow-only baseline; the plugin imports in under 1 s on top of Airflow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((PROJECT_DIR / "dags").glob("dl_agent_*.py"))
BASELINE_DAG = '''
from datetime import timedelta
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Param

with DAG(dag_id="baseline", schedule=None, params={f"p{i}": Param(i, type="integer", minimum=0) for i in range(30)},
         default_args={"retries": 1, "retry_delay": timedelta(seconds=10)}) as dag:
    tasks = [PythonOperator(task_id=f"t{i}", python_callable=print) for i in range(12)]
    for first, second in zip(tasks, tasks[1:]):
        first >> second
    tasks[-1] >> EmptyOperator(task_id="end")
'''
PROBE_DAG = ("import json, runpy, sys, time\nimport airflow.sdk\nstart = time.perf_counter()\nrunpy.run_path({path!r})\n"
             "print(json.dumps(time.perf_counter() - start))\n")
PROBE_PLUGIN = ("import json, time\nimport airflow.plugins_manager\nstart = time.perf_counter()\nimport dlagent.plugin\n"
                "print(json.dumps(time.perf_counter() - start))\n")


def measure(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_DIR, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 4), "min_s": round(min(values), 4), "max_s": round(max(values), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        baseline_file = Path(folder) / "baseline_dag.py"
        baseline_file.write_text(BASELINE_DAG)
        samples: dict[str, list[float]] = {"baseline": [], "plugin": [], **{f.name: [] for f in DAG_FILES}}
        for repeat in range(args.repeats):  # interleaved, so a load spike hits every contender alike
            samples["baseline"].append(measure(PROBE_DAG.format(path=str(baseline_file))))
            for dag_file in DAG_FILES:
                samples[dag_file.name].append(measure(PROBE_DAG.format(path=str(dag_file))))
            samples["plugin"].append(measure(PROBE_PLUGIN))
            print(f"[bench] repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in samples.items()), flush=True)
    figures = {name: summary(values) for name, values in samples.items()}
    base = figures["baseline"]["median_s"]
    for name in (f.name for f in DAG_FILES):
        figures[name]["ratio_to_baseline"] = round(figures[name]["median_s"] / base, 3)
    print("\n".join(f"{name:<24} median {f['median_s']:.3f} s  ({f['min_s']:.3f}..{f['max_s']:.3f})"
                    + (f"  {f['ratio_to_baseline']:.2f}x the Airflow-only DAG" if "ratio_to_baseline" in f else "")
                    for name, f in figures.items()))
    worst = max(figures[f.name]["median_s"] for f in DAG_FILES)
    print("RESULT " + json.dumps({
        "dag_parse_worst_s": worst, "dag_parse_worst_ratio": max(figures[f.name]["ratio_to_baseline"] for f in DAG_FILES),
        "plugin_import_s": figures["plugin"]["median_s"], "baseline_dag_parse_s": base, "repeats": args.repeats,
        "figures": figures,
    }))


if __name__ == "__main__":
    main()
