"""Federated training: sites train on their own shards and share only weights, which are averaged.

The design the project grows from: deep-learning agents each train on their own part of the
data and share only model parameters, which a coordinator averages into a global model
(FedAvg, McMahan et al. 2017; FedProx, Li et al. 2020, adds a proximal term that keeps a
site's update near the global model when the sites' data differ). Nothing here knows about
Airflow; each piece is one step a task can run:

- :mod:`.settings`: the validated settings (``FederatedConfig``), limits declared once;
- :mod:`.shards`: one data set split into N shards for experiments (IID or label-skewed);
- :mod:`.aggregate`: the sample-weighted average, client selection, weights on disk;
- :mod:`.local`: one site's local training from the global weights (FedAvg or FedProx);
- :mod:`.rounds`: the whole loop in one process (benchmarks, tests, a notebook).

Why not Flower's strategies: flwr 1.42 requires ``fastapi>=0.138,<0.139``, and
apache-airflow-core 3.3.2 requires ``fastapi<0.137`` (it also pins ``protobuf<7`` and
``starlette<1.4``), so it cannot be installed beside Airflow. What dlagent would take from it,
FedAvg's weighted mean and FedProx's proximal term, is a few lines of numpy and TensorFlow,
written and tested here (tests/ml/test_federated.py checks the mean against a hand computation).
Airflow's executors do the distribution Flower's server would: a site is a Celery queue.
"""
