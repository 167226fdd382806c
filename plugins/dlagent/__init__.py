"""dlagent: Apache Airflow operators and an agent for adaptive deep-learning workflows.

The package is importable without Airflow, TensorFlow, MLflow or Optuna being imported:
heavy libraries are imported inside the functions that need them, so a DAG file that
imports ``dlagent`` parses in milliseconds.
"""

__version__ = "0.1.0"

from dlagent.errors import ConfigError

__all__ = ["ConfigError", "__version__"]
