"""dlagent's developer tooling: the local services, the command line, process hygiene.

Not part of what Airflow loads: the plugin package (``plugins/dlagent``) never imports
``dlagent_dev`` (``tests/dev/test_boundary.py`` checks it). This package may import ``dlagent``.

* :mod:`dlagent_dev.env`      where the project is, the embedded stack's environment, its set-up
* :mod:`dlagent_dev.procs`    start processes in their own group, stop the whole group, find leftovers
* :mod:`dlagent_dev.stack`    the real services as processes (``make ui``, the live tests) and a REST client
* :mod:`dlagent_dev.progress` one line per task of ``airflow dags test`` output (``make run``)
* :mod:`dlagent_dev.cli`      ``python -m dlagent_dev.cli setup|run|env|rollback|ui|serve|mlflow-ui``
"""
