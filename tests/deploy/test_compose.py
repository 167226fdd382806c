"""docker-compose.yaml describes the deployment the local stack runs, without a credential in it.

No Docker engine runs here, so the file is parsed (PyYAML resolves the ``<<: *airflow-common``
merge keys as Compose does) and checked against the local stack (``dlagent_dev.stack``): the same
services, the same command lines, the same ports. Compose's ``${VAR:-default}`` interpolation is
resolved by a small helper below.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from dlagent_dev import stack

PROJECT_DIR = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_DIR / "docker-compose.yaml"

# compose service -> the local stack's service (dlagent_dev.stack.service_commands)
STACK_SERVICE = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "mlflow": "mlflow",
    "airflow-worker": "celery-worker",
}
AIRFLOW_SERVICES = ["airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "flower", "airflow-cli"]
DEFAULT_SERVICES = ["postgres", "postgres-init", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                    "airflow-dag-processor", "airflow-triggerer", "mlflow"]
CELERY_SERVICES = ["redis", "airflow-worker"]
ONE_SHOT_SERVICES = {"postgres-init", "airflow-init", "airflow-cli"}
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"

SECRET_KEY = re.compile(r"password|secret|key|token", re.IGNORECASE)
REQUIRED_VAR = re.compile(r"^\$\{([A-Z][A-Z0-9_]*):\?[^}]+\}$")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's interpolation with no variable set: ``${VAR:-default}`` gives the default, a
    required ``${VAR:?message}`` gives ``<VAR>``, ``$$`` gives ``$``."""

    def replace(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return f"<{name}>"
        return ""

    return INTERPOLATION.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def common(compose) -> dict:
    return compose["x-airflow-common"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _leading(command: list[str]) -> list[str]:
    """Program and sub-command: the tokens before the first option."""
    tokens = []
    for token in command:
        if token.startswith("-"):
            break
        tokens.append(token)
    return tokens


def _option_names(command: list[str]) -> set[str]:
    return {token.split("=", 1)[0] for token in command if token.startswith("--")}


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _option_prefixed(command: list[str], name: str) -> str:
    return next(token.split("=", 1)[1] for token in command if token.startswith(name + "="))


def _port_mapping(entry: str) -> tuple[str, str]:
    """(published host port, container port) of a short-syntax ``[ip:]host:container`` mapping, defaults applied."""
    parts = interpolate(str(entry)).split(":")
    return parts[-2], parts[-1]


def test_services_exist(services):
    expected = set(DEFAULT_SERVICES) | set(CELERY_SERVICES)
    assert expected <= set(services), f"missing services: {sorted(expected - set(services))}"


def test_plain_up_starts_the_local_executor_stack(services, common):
    for name in DEFAULT_SERVICES:
        assert not services[name].get("profiles"), f"{name} must start with a plain `docker compose up`"
    assert _env(common)["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW__CORE__EXECUTOR:-dlagent.executors.WarmLocalExecutor}"


def test_celery_profile_holds_redis_and_the_worker(services):
    for name in CELERY_SERVICES:
        assert "celery" in services[name].get("profiles", []), f"{name} belongs to the celery profile"
    worker = services["airflow-worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    broker = urlsplit(interpolate(_env(worker)["AIRFLOW__CELERY__BROKER_URL"]))
    assert (broker.scheme, broker.hostname) == ("redis", "redis")
    result_backend = interpolate(_env(worker)["AIRFLOW__CELERY__RESULT_BACKEND"])
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
    assert result_backend.startswith("db+postgresql+psycopg2://")


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_share_the_common_anchor(services, common, name):
    service = services[name]
    assert service["image"] == common["image"]
    assert service["user"] == common["user"]
    env = _env(service)
    for key, value in _env(common).items():
        assert env.get(key) == value, f"{name}: {key} differs from x-airflow-common's environment"
    for volume in common["volumes"]:
        assert volume in service["volumes"], f"{name} lacks the common mount {volume}"


def test_mlflow_runs_the_same_image(services, common):
    assert services["mlflow"]["image"] == common["image"]
    assert services["mlflow"]["build"] == common["build"]


def test_airflow3_settings(common, services):
    env = _env(common)
    api_port = _option(services["airflow-apiserver"]["command"], "--port")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://airflow-apiserver:{api_port}/execution/"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == SIMPLE_AUTH_MANAGER
    airflow_dir = Path(importlib.util.find_spec("airflow").submodule_search_locations[0])
    module = SIMPLE_AUTH_MANAGER.rsplit(".", 1)[0].split(".", 1)[1].replace(".", "/")
    assert (airflow_dir / f"{module}.py").is_file(), "the SimpleAuthManager ships with Airflow core"
    assert interpolate(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]) == f"{stack.ADMIN_USER}:admin"
    assert REQUIRED_VAR.match(env["AIRFLOW__API_AUTH__JWT_SECRET"])
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"].lower() == "true"


def test_connections_point_at_the_compose_services(common, services):
    env = _env(common)
    mlflow_url = f"http://mlflow:{_option(services['mlflow']['command'], '--port')}"
    assert env["AIRFLOW_CONN_MLFLOW_DEFAULT"] == mlflow_url
    assert env["MLFLOW_TRACKING_URI"] == mlflow_url
    optuna = urlsplit(interpolate(env["AIRFLOW_CONN_OPTUNA_DEFAULT"]))
    assert (optuna.scheme, optuna.username, optuna.hostname, optuna.path) == ("postgres", "optuna", "postgres", "/optuna")
    metadata = urlsplit(interpolate(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    assert (metadata.scheme, metadata.hostname, metadata.path) == ("postgresql+psycopg2", "postgres", "/airflow")
    backend = urlsplit(interpolate(_option(services["mlflow"]["command"], "--backend-store-uri")))
    assert (backend.scheme, backend.username, backend.hostname, backend.path) == ("postgresql+psycopg2", "mlflow", "postgres", "/mlflow")


def test_one_postgres_server_holds_the_three_databases(services):
    assert _env(services["postgres"])["POSTGRES_DB"] == "airflow"
    init = services["postgres-init"]
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    sql_target = _option_prefixed(init["command"], "--file")
    mounts = {interpolate(v).split(":")[1]: interpolate(v).split(":")[0] for v in init["volumes"]}
    folder = next(source for target, source in mounts.items() if sql_target.startswith(target + "/"))
    sql_file = PROJECT_DIR / folder / Path(sql_target).name
    assert sql_file.is_file()
    sql = sql_file.read_text()
    for database in ("mlflow", "optuna"):
        assert f"CREATE DATABASE {database} OWNER {database}" in sql
        assert f"ALTER ROLE {database} WITH LOGIN PASSWORD :'{database}_password'" in sql


@pytest.mark.parametrize("compose_name, stack_name", sorted(STACK_SERVICE.items()))
def test_commands_match_the_local_stack(services, compose_name, stack_name):
    expected = stack.service_commands()[stack_name]
    command = services[compose_name]["command"]
    assert isinstance(command, list), f"{compose_name}: write the command as a list"
    assert _leading(command) == _leading(expected), f"{compose_name} runs {_leading(command)}, the local stack {_leading(expected)}"
    assert _option_names(command) == _option_names(expected)


def test_airflow_commands_go_through_the_image_entrypoint(services):
    # The official image's entrypoint drops a leading "airflow" and runs `airflow <args>`;
    # only the MLflow server bypasses it.
    for name in STACK_SERVICE:
        if name != "mlflow":
            assert "entrypoint" not in services[name], name
    assert services["mlflow"]["entrypoint"] == ["/usr/bin/dumb-init", "--"]


def test_ports_match_the_stack_defaults(services):
    api, mlflow = services["airflow-apiserver"], services["mlflow"]
    assert _option(api["command"], "--port") == str(stack.AIRFLOW_PORT)
    assert _option(mlflow["command"], "--port") == str(stack.MLFLOW_PORT)
    assert [_port_mapping(p) for p in api["ports"]] == [(str(stack.AIRFLOW_PORT), str(stack.AIRFLOW_PORT))]
    assert [_port_mapping(p) for p in mlflow["ports"]] == [(str(stack.MLFLOW_PORT), str(stack.MLFLOW_PORT))]


def test_mlflow_serves_artifacts_from_a_named_volume(compose, services):
    command = services["mlflow"]["command"]
    assert "--serve-artifacts" in command
    destination = _option(command, "--artifacts-destination")
    volumes = {v.split(":")[1]: v.split(":")[0] for v in services["mlflow"]["volumes"]}
    assert volumes[destination] in compose["volumes"]
    # The Airflow containers call it as http://mlflow:5000: MLflow must accept that Host header.
    allowed = interpolate(_env(services["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"]).split(",")
    assert {"mlflow", f"mlflow:{stack.MLFLOW_PORT}"} <= set(allowed)


def test_healthchecks_and_start_order(services):
    for name, service in services.items():
        if name not in ONE_SHOT_SERVICES:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert service.get("restart") == "always", name
    for name in AIRFLOW_SERVICES:
        if name in ("airflow-init", "airflow-cli"):
            continue
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
    assert services["airflow-init"]["depends_on"]["postgres-init"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["depends_on"]["postgres-init"]["condition"] == "service_completed_successfully"
    for name in ("airflow-scheduler", "airflow-triggerer", "airflow-worker"):  # tasks and triggers call MLflow
        assert services[name]["depends_on"]["mlflow"]["condition"] == "service_healthy", name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_airflow_init_migrates_and_sets_the_admin_login(services, common):
    init = services["airflow-init"]
    script = init["command"][-1]
    assert "airflow db migrate" in script
    assert "AIRFLOW_ADMIN_PASSWORD" in script and REQUIRED_VAR.match(_env(init)["AIRFLOW_ADMIN_PASSWORD"])
    assert "AIRFLOW_ADMIN_PASSWORD" not in _env(common), "the admin password stays out of the tasks' environment"
    password_file = _env(common)["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    for name, service in services.items():
        mounted = any(password_file.startswith(interpolate(v).split(":")[1] + "/") for v in service.get("volumes", []))
        assert mounted == (name in ("airflow-init", "airflow-apiserver")), f"{name}: admin password volume"


def test_code_is_mounted_read_only(common):
    mounts = {interpolate(v).split(":")[1]: interpolate(v) for v in common["volumes"]}
    for folder in ("dags", "plugins", "include"):
        mount = mounts[f"/opt/airflow/{folder}"]
        assert mount == f"./{folder}:/opt/airflow/{folder}:ro"
        assert (PROJECT_DIR / folder).is_dir()
    assert (PROJECT_DIR / "include" / "README.md").is_file()


def test_dlagent_paths_point_into_volumes(common, compose):
    env = _env(common)
    targets = {interpolate(v).split(":")[1] for v in common["volumes"]}
    paths = [env["DLAGENT_HOME"], env["DLAGENT_DEPLOY_DIR"], *env["DLAGENT_DATA_ROOTS"].split(":")]
    for path in paths:
        assert path in targets, f"{path} is not a mounted volume"
    named = {v.split(":")[0] for v in common["volumes"] if not v.startswith(("$", ".", "/"))}
    named |= {interpolate(v).split(":")[0] for v in common["volumes"] if v.startswith("${DLAGENT_DATA_DIR")}
    assert named <= set(compose["volumes"]), "every named volume is declared"


def _walk(node, path=()):
    """Every (key path, key, value) of the file's mappings and KEY=VALUE list items."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", item):
                key, value = item.split("=", 1)
                yield path, key, value
            yield from _walk(item, path)


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in (str(key), *_strings(value))]
    if isinstance(node, list):
        return [text for item in node for text in _strings(item)]
    return [node] if isinstance(node, str) else []


def test_no_literal_secret_in_the_file(compose):
    for path, key, value in _walk(compose):
        if SECRET_KEY.search(key) and not key.endswith("_FILE") and not isinstance(value, (dict, list)):
            assert REQUIRED_VAR.match(str(value)), f"{'.'.join(path)}.{key} must be a required ${{VAR:?message}}"
    for text in _strings(compose):
        for userinfo in re.findall(r"://([^/@]+)@", text):
            user, _, password = userinfo.partition(":")
            assert password and REQUIRED_VAR.match(password), f"a literal credential in {text!r}"


def test_required_variables_are_documented_with_placeholders(compose):
    required = {name for text in _strings(compose) for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", text)}
    assert {"POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD"} <= required
    example = {}
    for line in (PROJECT_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert set(example) == required, "set in .env.example: exactly the required variables"
    for key, value in example.items():
        assert value.startswith("change-me"), f".env.example: {key} must be an obvious placeholder"
    ignored = (PROJECT_DIR / ".gitignore").read_text().split()
    assert ".env" in ignored


def test_dockerfile_extends_the_official_image():
    lines = [line.strip() for line in (PROJECT_DIR / "Dockerfile").read_text().splitlines()]
    assert "FROM apache/airflow:3.3.2-python3.11" in lines
    pin = re.search(r"^apache-airflow==(\S+)$", (PROJECT_DIR / "requirements.txt").read_text(), re.MULTILINE)
    assert pin and pin.group(1) == "3.3.2", "the image's Airflow is requirements.txt's"
    text = "\n".join(lines).replace("\\\n", " ")
    user = None
    pip_users = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("USER "):
            user = line.split()[1]
        elif "pip install" in line:
            pip_users.append(user)
            if "requirements.txt" in line:
                assert "-r " in line and "-c " in line and "constraints.txt" in line
    assert pip_users and set(pip_users) == {"airflow"}, "pip runs as the airflow user"
    assert "--no-deps -e /opt/airflow" in text
    # the command line (`python -m dlagent_dev.cli rollback`, docs/deploy.md) is in the image beside the plugin
    assert {"COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/", "COPY --chown=airflow:0 dev/ /opt/airflow/dev/"} <= set(lines)
    assert text.index("dev/ /opt/airflow/dev/") < text.index("--no-deps -e /opt/airflow")
