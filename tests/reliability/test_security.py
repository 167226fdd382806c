"""Security checks: safe model loading, passwords kept out of logs/XCom/MLflow, small JSON XCom,
files written only under the configured roots, no credential in the repository.

The middle checks share one short real pipeline (``secured_pipeline.py``, every operator from
``validate_inputs`` to ``finish``) run in its own process with logging at DEBUG, MLflow and
the Optuna study in PostgreSQL reached through Airflow Connections given as
``AIRFLOW_CONN_*`` environment variables, each carrying a password (the MLflow one twice: in
the Connection's password field and inside the tracking URI of its extra). The process's
whole output, its XComs, the MLflow store and every file it wrote are then searched.
Passwords are made up at run time (never written in this file), unless the test server
needs a real one, which is then used instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.conftest import PROJECT_DIR

RELIABILITY_KIND = "security"
SCRIPT = Path(__file__).with_name("secured_pipeline.py")
MODEL_SUFFIXES = (".keras", ".h5", ".tflite", ".pb", ".onnx", ".pkl")
MODEL_NAMES = ("MLmodel", "model.tflite", "labels.json", "metadata.json")


def _made_up_password(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(10)}"


# --------------------------------------------------------------------------- the short real run


@dataclass
class SecuredRun:
    base: Path
    artifacts: Path
    deploy: Path
    home: Path
    cwd: Path
    user_home: Path
    tmp: Path
    tracking_uri: str
    passwords: dict
    returncode: int
    log: str
    out: dict | None

    def require_success(self) -> None:
        assert self.returncode == 0 and self.out is not None, f"the short real run failed:\n{self.log[-6000:]}"


@pytest.fixture(scope="module")
def secured_run(tmp_path_factory, module_postgres_databases) -> SecuredRun:
    from sqlalchemy.engine import make_url

    base = tmp_path_factory.mktemp("secured")
    folders = {name: base / name for name in ("artifacts", "deploy", "home", "cwd", "user_home", "tmp", "airflow")}
    for name, folder in folders.items():
        if name not in ("artifacts", "deploy"):
            folder.mkdir()
    mlflow_db, optuna_db = make_url(module_postgres_databases()), make_url(module_postgres_databases())
    # a server that needs a password gets its real one (then that is the secret that must not leak)
    uri_password = mlflow_db.password or _made_up_password("mlflow-uri")
    optuna_password = optuna_db.password or _made_up_password("optuna-conn")
    passwords = {"mlflow Connection password": _made_up_password("mlflow-conn"), "password inside the MLflow tracking URI": uri_password,
                 "optuna Connection password": optuna_password}
    tracking_uri = mlflow_db.set(password=uri_password).render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "MLFLOW_", "DLAGENT_"))}
    env.update({
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({
            "conn_type": "mlflow", "login": "reliability", "password": passwords["mlflow Connection password"],
            "extra": {"tracking_uri": tracking_uri, "artifact_location": str(folders["artifacts"])}}),
        "AIRFLOW_CONN_OPTUNA_DEFAULT": json.dumps({
            "conn_type": "postgres", "host": optuna_db.host, "port": optuna_db.port or 5432, "login": optuna_db.username,
            "password": optuna_password, "schema": optuna_db.database}),
        "AIRFLOW_HOME": str(folders["airflow"]), "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",
        "DLAGENT_HOME": str(folders["home"]), "DLAGENT_DEPLOY_DIR": str(folders["deploy"]),
        "DLAGENT_ARTIFACT_ROOT": str(folders["artifacts"]), "HOME": str(folders["user_home"]), "TMPDIR": str(folders["tmp"]),
        "PYTHONPATH": str(PROJECT_DIR), "TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_DISABLE_TELEMETRY": "true",
    })
    out_path = base / "xcoms.json"
    completed = subprocess.run([sys.executable, str(SCRIPT), str(out_path)], cwd=folders["cwd"], env=env, capture_output=True,
                               text=True, timeout=540)
    out = json.loads(out_path.read_text()) if out_path.exists() else None
    return SecuredRun(base, folders["artifacts"], folders["deploy"], folders["home"], folders["cwd"], folders["user_home"],
                      folders["tmp"], tracking_uri, passwords, completed.returncode, completed.stdout + completed.stderr, out)


def _leaks(text: str, passwords: dict) -> list[str]:
    return [name for name, value in passwords.items() if value in text]


def _verdict(reliability_record, name: str, problems: list[str], detail: str) -> None:
    reliability_record("security", name, not problems, detail=("; ".join(problems) if problems else detail))
    assert not problems, problems


def test_passwords_never_reach_task_logs(secured_run, reliability_record):
    secured_run.require_success()
    problems = [f"{name} printed in the task log" for name in _leaks(secured_run.log, secured_run.passwords)]
    if "[debug" not in secured_run.log:
        problems.append("the log is not at DEBUG: the check would miss debug lines")
    if "://***@" not in secured_run.log:
        problems.append("no redacted URL in the log: did the run reach the Connections?")
    _verdict(reliability_record, "connection_passwords_not_in_task_logs", problems,
             f"{len(secured_run.log.splitlines())} log lines at DEBUG, 3 passwords, none printed; URLs show as ://***@")


def test_passwords_never_reach_xcom(secured_run, reliability_record):
    secured_run.require_success()
    text = json.dumps(secured_run.out["returned"]) + json.dumps(secured_run.out["pushed"])
    problems = [f"{name} in an XCom" for name in _leaks(text, secured_run.passwords)]
    problems += [f"a URL with credentials in an XCom: {m}" for m in re.findall(r"[a-z+]+://[^/\s\"]+:[^/\s\"]+@", text)]
    _verdict(reliability_record, "connection_passwords_not_in_xcom", problems,
             f"{len(secured_run.out['returned'])} task results and their XComs searched")


def test_passwords_never_reach_mlflow_or_written_files(secured_run, reliability_record):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    secured_run.require_success()
    client = MlflowClient(secured_run.tracking_uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=10_000)
    problems = []
    for run in runs:
        for name in _leaks(json.dumps([run.data.params, run.data.tags]), secured_run.passwords):
            problems.append(f"{name} in the params or tags of MLflow run {run.info.run_id}")
    scanned = 0
    for path in secured_run.base.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 5_000_000:
            scanned += 1
            for name in _leaks(path.read_bytes().decode("utf-8", "replace"), secured_run.passwords):
                problems.append(f"{name} in {path.relative_to(secured_run.base)}")
    _verdict(reliability_record, "connection_passwords_not_in_mlflow_or_files", problems,
             f"{len(runs)} MLflow runs (params, tags) and {scanned} written files searched")


def test_xcom_values_are_json_and_small(secured_run, reliability_record):
    from dlagent.operators.base import MAX_XCOM_BYTES

    secured_run.require_success()
    problems, sizes = [], {}
    for name, value in {**secured_run.out["returned"], **{f"{t}.{k}": v for t, pushed in secured_run.out["pushed"].items()
                                                          for k, v in pushed.items()}}.items():
        try:
            sizes[name] = len(json.dumps(value, allow_nan=True).encode("utf-8"))
        except (TypeError, ValueError) as exc:
            problems.append(f"{name} is not JSON: {exc}")
            continue
        if sizes[name] >= MAX_XCOM_BYTES:
            problems.append(f"{name} is {sizes[name]} bytes (limit {MAX_XCOM_BYTES})")
    expected = {"validate_inputs", "create_study", "tune[0]", "tune_summary", "agent_plan", "train", "compression_candidates",
                "compress[0]", "evaluate", "agent_decide", "deploy", "retune_conf", "finish"}
    missing = expected - set(secured_run.out["returned"])
    if missing:
        problems.append(f"tasks without a result: {sorted(missing)}")
    largest = max(sizes, key=sizes.get)
    _verdict(reliability_record, "xcom_json_and_under_64KiB", problems,
             f"{len(sizes)} XCom values from {len(secured_run.out['returned'])} tasks, all JSON; largest {largest} {sizes[largest]} bytes")


def _under(path: str, root: Path) -> bool:
    path = path[len("file://"):] if path.startswith("file://") else path
    resolved, root = Path(path).resolve(), root.resolve()
    return resolved == root or root in resolved.parents


def test_artifacts_and_deploys_are_written_only_under_the_configured_roots(secured_run, reliability_record):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    secured_run.require_success()
    client = MlflowClient(secured_run.tracking_uri, registry_uri=secured_run.tracking_uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    problems = []
    runs = client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=10_000)
    problems += [f"run {r.info.run_id} stores artifacts at {r.info.artifact_uri}" for r in runs
                 if not _under(r.info.artifact_uri, secured_run.artifacts)]
    models = client.search_logged_models(experiment_ids=experiment_ids)
    problems += [f"logged model {m.model_id} at {m.artifact_location}" for m in models
                 if not _under(m.artifact_location, secured_run.artifacts)]
    versions = [v for rm in client.search_registered_models() for v in client.search_model_versions(f"name = '{rm.name}'")]
    problems += [f"model version {v.name} v{v.version} from {v.source}" for v in versions if not _under(v.source, secured_run.artifacts)]
    bundle = secured_run.out["deployed"]["bundle"]
    if not _under(bundle, secured_run.deploy) or not _under(str(Path(bundle).resolve()), secured_run.deploy):
        problems.append(f"serving bundle at {bundle}")
    for path in secured_run.base.rglob("*"):
        inside = _under(str(path), secured_run.artifacts) or _under(str(path), secured_run.deploy)
        if path.is_file() and not inside and (path.suffix in MODEL_SUFFIXES or path.name in MODEL_NAMES):
            problems.append(f"model file outside the roots: {path.relative_to(secured_run.base)}")
    leftovers = [str(p.relative_to(secured_run.base)) for folder in (secured_run.cwd, secured_run.home) for p in folder.rglob("*")]
    problems += [f"written outside the configured roots: {p}" for p in leftovers]
    if not versions or not models:
        problems.append("nothing was registered or logged: the check proves nothing")
    _verdict(reliability_record, "artifacts_and_deploys_under_configured_roots", problems,
             f"{len(runs)} runs, {len(models)} logged models, {len(versions)} versions under DLAGENT_ARTIFACT_ROOT; bundle under "
             "DLAGENT_DEPLOY_DIR; nothing in the working directory or DLAGENT_HOME; no model file in TMPDIR or HOME")


# --------------------------------------------------------------------------- in-process checks


def test_xcom_limit_is_enforced_for_every_dlagent_task(reliability_record):
    import numpy as np
    from dlagent.operators.base import MAX_XCOM_BYTES, DlagentOperator

    from tests.operators.context import make_context

    class Returns(DlagentOperator):
        def __init__(self, *, value, **kwargs):
            super().__init__(**kwargs)
            self.value = value

        def run(self, context):
            return self.value

    problems = []
    small = {"run_id": "abc", "metrics": {"accuracy": 0.9, "loss": float("nan")}}
    context = make_context("small")
    if Returns(task_id="small", value=small).execute(context) != small or context["ti"].xcoms.get("run_id") != "abc":
        problems.append("a small JSON result was not returned and pushed")
    for label, value, words in (("too big", {"weights": "x" * (MAX_XCOM_BYTES + 1)}, "over the 65536-byte limit"),
                                ("an array", {"x": np.zeros(3)}, "not JSON"), ("a set", {"ids": {1, 2}}, "not JSON"),
                                ("an object", [object()], "not JSON")):
        context = make_context("bad")
        with pytest.raises(AirflowFailException) as error:
            Returns(task_id="bad", value=value).execute(context)
        if words not in str(error.value):
            problems.append(f"{label}: {error.value}")
        if context["ti"].xcoms:
            problems.append(f"{label}: pushed {sorted(context['ti'].xcoms)} before failing")
    _verdict(reliability_record, "xcom_limit_enforced_in_code", problems,
             f"DlagentOperator.execute fails the task (no retry) for a result over {MAX_XCOM_BYTES} bytes or not JSON, pushing nothing")


def test_a_model_carrying_code_is_refused_by_our_loading_path(mlflow_uri, tmp_path, reliability_record):
    """A Keras Lambda layer stores Python code in the model file; safe mode refuses to load it."""
    import keras
    import mlflow
    from dlagent.errors import ConfigError
    from dlagent.ml.model_store import MODEL_PIP_REQUIREMENTS, load_keras_model
    from dlagent.ml.tracking import ensure_experiment
    from dlagent.operators.compress import CompressOperator
    from mlflow import MlflowClient

    from tests.operators.context import make_context

    marker = tmp_path / "code-ran"
    # self-contained code (no closure), as an attacker would ship it: it writes a file when called
    code = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('the model file ran code'), t * 1.0)[1]")  # noqa: S307
    inputs = keras.Input((8, 8), name="features")
    touched = keras.layers.Lambda(code)(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(touched))
    model = keras.Model(inputs, outputs)
    marker.unlink()  # building the model ran the lambda once; from here on it must not run
    experiment = ensure_experiment(MlflowClient(mlflow_uri), "attack", str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:  # the fluent API, through MLFLOW_TRACKING_URI (the mlflow_uri fixture)
        uri = mlflow.keras.log_model(model, name="model", pip_requirements=MODEL_PIP_REQUIREMENTS).model_uri
    problems = []
    with pytest.raises(ConfigError) as error:
        load_keras_model(MlflowClient(mlflow_uri), uri)
    if error.value.field != "model_uri" or "safe mode" not in str(error.value) or not error.value.fix:
        problems.append(f"unclear refusal: {error.value}")
    with pytest.raises(AirflowFailException, match="invalid input, nothing was run: model_uri") as task_error:
        CompressOperator(task_id="compress", model_uri=uri, compression={"quantization": "dynamic"}, dataset="digits",
                         data_options={"max_samples": 300}, seed=0, experiment_name="exp").execute(make_context("compress"))
    if marker.exists():
        problems.append("the model file's code ran while our path loaded it")
    # the same file does run code without safe mode: the refusal above is what protects us
    mlflow.keras.load_model(uri, load_model_kwargs={"safe_mode": False})
    if not marker.exists():
        problems.append("the test model carries no code (unsafe loading did not run it)")
    _verdict(reliability_record, "keras_safe_mode_refuses_code_in_model", problems,
             f"load_keras_model and the compress task refuse run {run.info.run_id}'s Lambda model: {str(task_error.value)[:160]}")


def test_connection_errors_do_not_leak_passwords(monkeypatch, postgres_url, reliability_record):
    """Failures quote URLs, and MLflow's HTTP errors quote them with the credentials.

    What our code reports (Connection tests, our messages) is redacted itself; a third-party
    error that reaches the task log goes through Airflow's secrets masker, which the hooks
    feed with every password found inside a URL (Airflow registers only a Connection's own
    password field). The traceback is checked as the task log shows it.
    """
    from airflow.sdk.log import _secrets_masker
    from dlagent.hooks.mlflow import MLflowHook
    from dlagent.hooks.optuna import OptunaHook
    from dlagent.operators.tune import CreateStudyOperator
    from sqlalchemy.engine import make_url

    from tests.operators.context import make_context

    server = make_url(postgres_url)
    optuna_password = server.password or _made_up_password("optuna")
    url_password = _made_up_password("mlflow-uri")
    monkeypatch.setenv("AIRFLOW_CONN_OPTUNA_DEFAULT", json.dumps({
        "conn_type": "postgres", "host": server.host, "port": server.port or 5432, "login": server.username,
        "password": optuna_password, "schema": "no_such_database_for_reliability"}))
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({
        "conn_type": "mlflow", "extra": {"tracking_uri": f"http://reliability:{url_password}@127.0.0.1:1"}}))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    passwords = {"optuna Connection password": optuna_password, "password inside the MLflow tracking URI": url_password}
    texts = {"Optuna Connection test": OptunaHook().test_connection()[1]}
    ok, texts["MLflow Connection test"] = MLflowHook().test_connection()
    operator = CreateStudyOperator(task_id="create_study", dataset="digits", train_config={"model": "mlp", "epochs": 2}, n_trials=1,
                                   search_space={"units": {"type": "int", "low": 8, "high": 32}})
    with pytest.raises(Exception) as error:  # noqa: PT011 - any failure: its whole text is searched
        operator.execute(make_context("create_study"))
    raw = "".join(traceback.format_exception(error.value))
    texts["create_study failure, as the task log shows it"] = _secrets_masker().redact(raw)
    problems = [f"{name} in the {where}" for where, text in texts.items() for name in _leaks(text, passwords)]
    if ok or "://***@" not in texts["MLflow Connection test"]:
        problems.append(f"the MLflow test did not fail on the redacted URL: {texts['MLflow Connection test']}")
    quoted = [name for name in _leaks(raw, passwords)]
    _verdict(reliability_record, "connection_errors_do_not_leak_passwords", problems,
             "Connection tests redacted; the failing task's traceback "
             + (f"quotes {quoted} (third-party message) and the secrets masker hides it" if quoted else "quotes no password"))


# --------------------------------------------------------------------------- the repository

PLACEHOLDER_MARKERS = ("example", "placeholder", "changeme", "change_me", "change-me", "your", "dummy", "fake", "xxx", "***",
                       "redacted", "secret", "s%40cret", "password", "pass", "test", "airflow", "...", "…")
CREDENTIAL_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?([A-Za-z0-9/+=]{40})"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "password assignment": re.compile(r"(?i)\b(?:password|passwd|pwd|secret|api_key|apikey|access_token|auth_token)\b\s*[=:]\s*['\"]([^'\"\s]{4,})['\"]"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s/:@'\"]+:([^\s/@'\"]+)@"),
}


def _placeholder(value: str) -> bool:
    lowered = value.lower()
    return any(m in lowered for m in PLACEHOLDER_MARKERS) or value.startswith(("$", "%(", "<", "{")) or "{" in value


def scan_for_credentials(text: str) -> list[tuple[int, str]]:
    """(line number, pattern name) of every credential-looking string that is not an obvious placeholder."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        for name, pattern in CREDENTIAL_PATTERNS.items():
            for match in pattern.finditer(line):
                value = match.group(1) if pattern.groups else match.group(0)
                if pattern.groups and _placeholder(value):
                    continue
                hits.append((number, name))
    return hits


def test_the_credential_scanner_finds_what_it_should():
    """Positive samples are assembled at run time, so this file itself holds none."""
    samples = {
        "private key": "-----BEGIN " + "RSA PRIVATE KEY-----",
        "AWS access key id": "key = " + "AKIA" + "Q3EGRIV5OCDNJW7Z",
        "AWS secret access key": "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "4nQz8sKp2Lw0",
        "GitHub token": "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "password assignment": 'password = "' + "Tr0ub4dor-" + "3xkcd" + '"',
        "password in a URL": "postgresql://" + "admin:" + "Hunter2zz" + "@db.internal/prod",
    }
    for name, sample in samples.items():
        assert (1, name) in scan_for_credentials(sample), name
    for clean in ('password = "changeme"', "postgres://tuner:s%40cret@db.internal:5433/studies", "scheme://***@host",
                  "password=os.environ['X']", 'f"{scheme}://{auth}{conn.host}"'):
        assert scan_for_credentials(clean) == [], clean


def test_no_credentials_in_tracked_files(reliability_record):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_DIR, capture_output=True, check=True).stdout.decode().split("\0")
    problems, scanned = [], 0
    for name in filter(None, files):
        path = PROJECT_DIR / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary
        scanned += 1
        problems += [f"{name}:{line}: {kind}" for line, kind in scan_for_credentials(data.decode("utf-8", "replace"))]
    _verdict(reliability_record, "no_credentials_in_tracked_files", problems,
             f"{scanned} tracked text files scanned for private keys, cloud/API tokens, passwords in assignments and URLs")


# ------------------------------------------------------------------- data roots by default (issue 20)

_OPENED: list[str] = []
_WATCHING: list[bool] = [False]


def _watch_opens(event: str, args) -> None:
    """An audit hook: every file Python opens while a check watches (``open`` audit events)."""
    if _WATCHING[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_watch_opens)  # audit hooks cannot be removed: it records only while _WATCHING


def _secret_file(folder: Path) -> tuple[Path, str]:
    """A CSV whose first line holds a token, as a credentials file or another team's data might."""
    token = f"token-{secrets.token_hex(12)}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "credentials.csv"
    path.write_text(f"{token},{token}-2\n1,2\n3,4\n")
    return path, token


def _mlflow_text(uri: str) -> str:
    """Every param, tag and metric name of every run in the store, as one text to search."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(ids, run_view_type=ViewType.ALL, max_results=10_000) if ids else []
    return json.dumps([[r.data.params, r.data.tags, list(r.data.metrics)] for r in runs])


def test_with_the_roots_unset_a_conf_cannot_read_a_file_outside_the_data_folders(tmp_path, mlflow_uri, monkeypatch, caplog,
                                                                                   reliability_record):
    """Unset DLAGENT_DATA_ROOTS means the project's own data folders, not "anywhere": the file is refused
    before it is opened, and its first line reaches no log, exception, XCom or MLflow run."""
    from dlagent import settings
    from dlagent.operators.pipeline import ValidateInputsOperator

    from tests.operators.context import make_context

    monkeypatch.delenv("DLAGENT_DATA_ROOTS", raising=False)
    monkeypatch.setenv("DLAGENT_HOME", str(tmp_path / "home"))
    secret, token = _secret_file(tmp_path / "elsewhere")
    roots = settings.data_roots()
    problems = []
    if str(Path(roots[0])) != str(tmp_path / "home" / "data") or not roots[1].endswith("include"):
        problems.append(f"the default roots are {roots}, not $DLAGENT_HOME/data and include/")
    relative = os.path.relpath(secret, Path.cwd())
    for dataset in (f"csv:{secret}", f"csv:{relative}", f"csv:{secret.parent}/../elsewhere/credentials.csv", "csv:/etc/passwd"):
        context = make_context("validate_inputs", dag_id="dl_agent_pipeline")
        operator = ValidateInputsOperator(task_id="validate_inputs", dataset=dataset, train_config={"model": "mlp", "epochs": 1},
                                          experiment_name="security")
        _OPENED.clear()
        _WATCHING[0] = True
        try:
            with pytest.raises(AirflowFailException) as error:
                operator.execute(context)
        finally:
            _WATCHING[0] = False
        message = str(error.value)
        target = os.path.realpath(dataset.removeprefix("csv:"))
        if any(os.path.realpath(path) == target for path in _OPENED):
            problems.append(f"{dataset}: the file was opened before it was refused")
        if "DLAGENT_DATA_ROOTS" not in message or "outside the allowed data roots" not in message:
            problems.append(f"{dataset}: the refusal does not name the setting and the fix: {message}")
        if context["ti"].xcoms:
            problems.append(f"{dataset}: XCom pushed {sorted(context['ti'].xcoms)}")
        if token in message:
            problems.append(f"{dataset}: the token is in the error")
    if token in caplog.text or token in _mlflow_text(mlflow_uri):
        problems.append("the token reached the task log or MLflow")
    _verdict(reliability_record, "data roots by default: a file outside them is refused before it is opened", problems,
             f"with DLAGENT_DATA_ROOTS unset the roots are {roots}; 4 paths outside them (absolute, relative, '..', "
             "/etc/passwd) refused before any open (audit hook), naming DLAGENT_DATA_ROOTS; the file's first line in no "
             "error, log, XCom or MLflow run")


def test_a_bad_file_inside_the_roots_is_described_never_quoted(tmp_path, mlflow_uri, monkeypatch, caplog, reliability_record):
    """Every loader's error names the file, the line or entry and the kind of problem: no header values,
    no row contents, no decoded bytes."""
    import gzip

    import numpy as np
    from dlagent.operators.pipeline import ValidateInputsOperator

    from tests.operators.context import make_context

    monkeypatch.delenv("DLAGENT_DATA_ROOTS", raising=False)
    monkeypatch.setenv("DLAGENT_HOME", str(tmp_path / "home"))
    data = tmp_path / "home" / "data"
    token = f"token-{secrets.token_hex(12)}"
    data.mkdir(parents=True)
    (data / "header.csv").write_text(f"{token},{token}b\n1,2\n")
    (data / "values.csv").write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(8)) + f"{token},1\n")
    (data / "short.csv").write_text(f"a,label\n1,0\n{token}\n")
    (data / "notes.csv").write_text("note,label\n" + "".join(f"{token} wrote this note number {i},{i % 2}\n" for i in range(30)))
    (data / "unnamed.csv").write_text("a,,label\n" + "".join(f"{i},{token}{i},{i % 2}\n" for i in range(30)))
    np.savez(data / "arrays.npz", **{token: np.zeros(3)})
    idx = data / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte.gz").write_bytes(token.encode())  # not gzip: gzip's own message quotes the bytes
    (idx / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x00"))
    images = data / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        (images / label / "x.png").write_bytes(token.encode())
    cases = {"csv:header.csv": "among its 2 header columns",
             "csv:values.csv": "line 10, column 1: a feature that is not a number",
             "csv:short.csv": "line 3 has 1 fields, the header has 2", "csv:notes.csv": "column 1: 30 different values",
             "csv:unnamed.csv": "column 2 has values but no name", "npz:arrays.npz": "lacks arrays ['x', 'y']",
             "mnist-idx:idx": "cannot read IDX file", "images:images": "cannot decode image"}
    problems = []
    for name, words in cases.items():
        scheme, _, relative = name.partition(":")
        dataset = f"{scheme}:{data / relative}"
        context = make_context("validate_inputs", dag_id="dl_agent_pipeline")
        with pytest.raises(AirflowFailException) as error:
            ValidateInputsOperator(task_id="validate_inputs", dataset=dataset, train_config={"model": "mlp", "epochs": 1},
                                   experiment_name="security").execute(context)
        message = str(error.value)
        if token in message:
            problems.append(f"{name}: the file's content is in the error: {message}")
        if words not in message or "Fix:" not in message or relative.split("/")[0] not in message:
            problems.append(f"{name}: the error does not name the file, the problem ({words!r}) and the fix: {message}")
    if token in caplog.text or token in _mlflow_text(mlflow_uri):
        problems.append("the file's content reached the task log or MLflow")
    _verdict(reliability_record, "bad data files are described, never quoted", problems,
             f"{len(cases)} broken files inside the roots (a CSV header, a value, a ragged row, free text, a nameless column, npz array names, "
             "a non-gzip IDX, undecodable images): each error names the file, the place and the fix, none quotes the file")


@pytest.mark.slow
@pytest.mark.postgres
def test_the_live_services_refuse_a_file_outside_the_roots_and_show_none_of_it(live_stack, tmp_path, reliability_record):
    """The same through the whole DAG on the real services: a person with only the right to trigger a run
    names a file outside the data folders; the run fails in validate_inputs and the file's first line is in no
    task log, XCom or MLflow run the services keep."""
    from tests.conftest import PIPELINE

    api = live_stack.api
    secret, token = _secret_file(tmp_path / "elsewhere")
    problems = []
    if live_stack.env.get("DLAGENT_DATA_ROOTS"):
        problems.append(f"the live stack sets DLAGENT_DATA_ROOTS={live_stack.env['DLAGENT_DATA_ROOTS']}: not the default")
    run_id = api.trigger(PIPELINE, {"dataset": f"csv:{secret}", "model": "mlp", "experiment_name": "security-live"},
                         run_id="outside_the_roots")
    state = api.wait_for_run(PIPELINE, run_id, timeout=600)
    tasks = {t["task_id"]: t for t in api.task_instances(PIPELINE, run_id) if t["map_index"] in (-1, None)}
    validate = tasks.get("validate_inputs", {})
    if state != "failed" or validate.get("state") != "failed" or validate.get("try_number") != 1:
        problems.append(f"run {state}, validate_inputs {validate.get('state')} (try {validate.get('try_number')}): not refused first")
    ran = sorted(t for t, info in tasks.items() if info["state"] == "success" and t != "finish")
    if ran:
        problems.append(f"tasks ran after the refusal: {ran}")
    shown = ""
    for task_id, info in tasks.items():
        if info.get("try_number"):
            for try_number in range(1, info["try_number"] + 1):
                shown += json.dumps(api.get(f"/api/v2/dags/{PIPELINE}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
                                            "?full_content=true"))
    if "DLAGENT_DATA_ROOTS" not in shown or "outside the allowed data roots" not in shown:
        problems.append("validate_inputs' log does not say why (the roots, and the fix)")
    entries = api.get(f"/api/v2/dags/{PIPELINE}/dagRuns/{run_id}/taskInstances/~/xcomEntries?limit=1000")["xcom_entries"]
    for entry in entries:
        shown += json.dumps(api.get(f"/api/v2/dags/{PIPELINE}/dagRuns/{run_id}/taskInstances/{entry['task_id']}/xcomEntries/"
                                    f"{entry['key']}?map_index={entry['map_index']}"))
    shown += _mlflow_text(live_stack.mlflow_url)
    if token in shown:
        problems.append("the token is in a task log, an XCom or an MLflow run")
    _verdict(reliability_record, "live services: a conf outside the data roots shows none of the file", problems,
             f"run {run_id} {state}: validate_inputs failed on its first try naming DLAGENT_DATA_ROOTS, no task after it ran; "
             f"{len(entries)} XComs, every task log and the MLflow server searched: the file's first line is nowhere")
