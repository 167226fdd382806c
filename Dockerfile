# dlagent's image: the official Airflow image extended the way Airflow's docs show
# ("Extending the image", https://airflow.apache.org/docs/docker-stack/build.html): the pinned
# requirements installed as the airflow user, then the dlagent package. Every service of
# docker-compose.yaml runs it (the Airflow components and the MLflow server); the Kubernetes
# executor and the official Helm chart can run it as is (docs/deploy.md).
#
#   docker build -t dlagent-airflow:3.3.2 .        (docker compose build does this)
FROM apache/airflow:3.3.2-python3.11

# Mount points of the named volumes (dlagent home, deploy folder, data, MLflow artifacts, the
# admin password file). A new named volume takes the owner and mode of the image's folder, so
# the airflow user (and any UID in group 0, as the official image supports) can write to it
# without a root init step.
USER root
RUN install -d -o airflow -g 0 -m 2775 /opt/dlagent /opt/dlagent/home /opt/dlagent/deploy \
        /opt/dlagent/data /opt/dlagent/mlflow-artifacts \
    && install -d -o airflow -g 0 -m 2770 /opt/dlagent/auth
USER airflow

# The same pins as `make install`: requirements.txt, constrained by constraints.txt (pip freeze
# of a tested install). apache-airflow==${AIRFLOW_VERSION} keeps pip from changing Airflow itself.
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/dlagent/requirements/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/dlagent/requirements/requirements.txt \
        -c /opt/dlagent/requirements/constraints.txt

# The package, installed in editable mode from /opt/airflow/plugins (pyproject.toml: packages
# under plugins/ and dev/): docker compose mounts ./plugins there, so the running code is the
# checkout's; without that mount (Kubernetes), the copy baked in here is used. Its Airflow plugin
# registers through the `airflow.plugins` entry point; plugins/.airflowignore keeps Airflow's
# plugin-folder walk out of it. dev/ is the command line (`python -m dlagent_dev.cli rollback`);
# Airflow never imports it.
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 dev/ /opt/airflow/dev/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow \
    && rm -rf /opt/airflow/dlagent.egg-info /opt/airflow/plugins/dlagent.egg-info

# DAGs and include/ baked in too (compose mounts the checkout's over them, read-only).
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 include/ /opt/airflow/include/

ENV DLAGENT_HOME=/opt/dlagent/home \
    DLAGENT_DEPLOY_DIR=/opt/dlagent/deploy \
    TF_CPP_MIN_LOG_LEVEL=2
