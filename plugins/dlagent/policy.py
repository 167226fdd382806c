"""Airflow cluster policy (entry point ``airflow.policy``): a federated site's tasks go to its own queue.

``dl_agent_federated`` expands its site tasks (``check_site``, ``round_NN.local``) over every
site, so map index ``i`` is site ``i`` in every round. A mapped task's ``queue`` is the same for
all its map indexes in Airflow 3.3 (the scheduler copies the task's own), so the routing happens
where Airflow lets a deployment change a task instance before it is queued: the
``task_instance_mutation_hook``, given the DAG run, reads ``site_queues[i]`` from its conf and
sets the instance's Celery queue. A worker at site ``i`` then listens only to that queue
(``airflow celery worker --queues <site_queues[i]>``) and no other worker runs that site's tasks.

The hook runs in the scheduler, inside its transaction: it opens no session and reads only the
``dag_run`` it is given (Airflow's own warning in ``airflow.policies``).
"""

from __future__ import annotations

from airflow.policies import hookimpl

FEDERATED_DAG = "dl_agent_federated"
SITE_TASKS = ("check_site", "local")  # the last part of the task id; map index = site index


def site_queue(dag_id: str, task_id: str, map_index: int | None, conf) -> str | None:
    """The queue a federated site's task instance belongs on, or ``None`` to leave it alone."""
    if dag_id != FEDERATED_DAG or task_id.rsplit(".", 1)[-1] not in SITE_TASKS or map_index is None or map_index < 0:
        return None
    queues = (conf or {}).get("site_queues") if isinstance(conf, dict) else None
    if not isinstance(queues, list) or map_index >= len(queues) or not isinstance(queues[map_index], str) or not queues[map_index]:
        return None
    return queues[map_index]


@hookimpl
def task_instance_mutation_hook(task_instance, dag_run) -> None:
    queue = site_queue(task_instance.dag_id, task_instance.task_id, task_instance.map_index,
                       getattr(dag_run, "conf", None) if dag_run is not None else None)
    if queue is not None:
        task_instance.queue = queue
