"""``make ui`` (cli.run_ui + LocalStack) leaves no process behind: Ctrl-C, SIGTERM and SIGHUP
stop every service with its whole process group; a ``make ui`` killed with SIGKILL leaves its
services, and the next one of the same home stops them first and reuses the ports.

The services are small HTTP servers (``tests/dev/fake_stack.py``: MLflow's has a helper process;
the api-server renames itself with setproctitle, as Airflow's does, which hides its environment);
the code that starts, watches and stops them is the real one. The real services are started in
tests/e2e and tests/reliability (``live_stack``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from dlagent_dev import procs
from dlagent_dev.stack import LocalStack, free_port

from tests.conftest import PROJECT_DIR
from tests.dev.fake_stack import FakeStack, fake_env


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Ui:
    """One `make ui` (the fake stack's driver) in a process group of its own, like a terminal's job.

    Started with SIGINT ignored, as a background job of a script starts it: Ctrl-C (SIGINT)
    must stop it all the same."""

    def __init__(self, home, airflow_port: int, mlflow_port: int):
        self.process = subprocess.Popen([sys.executable, "-m", "tests.dev.fake_stack", str(home), str(airflow_port), str(mlflow_port)],
                                        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True, preexec_fn=_ignore_sigint)  # noqa: PLW1509 (no threads start it)
        self.lines: list[str] = []

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            line = self.process.stdout.readline()
            if not line:
                pytest.fail(f"`make ui` exited ({self.process.wait()}) before {text!r}:\n" + "".join(self.lines))
            self.lines.append(line)
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n" + "".join(self.lines)

    def finish(self, timeout: float = 60) -> str:
        rest, _ = self.process.communicate(timeout=timeout)
        return "".join(self.lines) + rest


def _stack_processes(tag: str) -> set[int]:
    """Every live process of the stack's groups (found by the record and the tag)."""
    return {p.pid for pgid in procs.tagged_groups(tag) for p in procs.group_members(pgid)}


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (servers set SO_REUSEADDR: TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def ui_setup(tmp_path):
    home = tmp_path / "home"
    tag = f"stack:{home.resolve()}"
    ports = (free_port(), free_port())
    started: list[Ui] = []
    yield home, tag, ports, started
    for ui in started:  # whatever happened: no driver, no service left
        procs.stop_group(ui.process, grace=5)
    procs.stop_orphans(tag)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_make_ui_stops_every_service_and_its_helpers_on(ui_setup, sig):
    home, tag, ports, started = ui_setup
    ui = Ui(home, *ports)
    started.append(ui)
    ui.wait_for("Airflow UI:")
    assert len(procs.tagged_groups(tag)) == 3 and len(_stack_processes(tag)) == 4  # 3 services, mlflow with a helper
    assert len(procs.tagged(tag)) == 3  # the renamed api-server no longer shows its environment
    assert not any(_port_free(port) for port in ports)
    ui.process.send_signal(sig)
    output = ui.finish()
    assert ui.process.returncode == 0, output
    assert "all services stopped" in output
    assert _stack_processes(tag) == set()  # run_ui returned only once every group was empty
    assert all(_port_free(port) for port in ports)


def test_a_killed_make_ui_leaves_its_services_and_the_next_one_stops_them_and_reuses_the_ports(ui_setup):
    home, tag, ports, started = ui_setup
    first = Ui(home, *ports)
    started.append(first)
    first.wait_for("Airflow UI:")
    left = _stack_processes(tag)
    assert len(left) == 4
    first.process.kill()  # SIGKILL: it cannot stop anything
    first.process.wait()
    assert _stack_processes(tag) == left and not any(_port_free(port) for port in ports)

    second = Ui(home, *ports)  # same home, same ports
    started.append(second)
    second.wait_for("Airflow UI:")
    assert any(f"stopped {len(left)} process(es) a killed earlier stack" in line for line in second.lines), second.lines
    assert not left & _stack_processes(tag)  # the old ones are gone (the renamed one too), the new ones serve the ports
    second.process.send_signal(signal.SIGTERM)
    assert second.finish() and second.process.returncode == 0
    assert _stack_processes(tag) == set() and all(_port_free(port) for port in ports)


def test_a_second_make_ui_of_a_running_home_refuses_and_touches_nothing(ui_setup):
    home, tag, ports, started = ui_setup
    first = Ui(home, *ports)
    started.append(first)
    first.wait_for("Airflow UI:")
    running = _stack_processes(tag)
    second = Ui(home, free_port(), free_port())
    started.append(second)
    output = second.finish()
    assert second.process.returncode != 0 and "are running, started by process" in output, output
    assert _stack_processes(tag) == running
    first.process.send_signal(signal.SIGINT)
    assert first.finish() and _stack_processes(tag) == set()


def test_stop_waits_until_each_services_group_is_empty_and_a_crashed_service_is_restarted_whole(tmp_path):
    stack = FakeStack(fake_env(str(tmp_path / "home")), airflow_port=free_port(), mlflow_port=free_port())
    assert isinstance(stack, LocalStack)
    with stack:
        mlflow = stack.processes["mlflow"]
        helper = next(p for p in procs.group_members(mlflow.pid) if p.pid != mlflow.pid)
        mlflow.kill()  # the service crashes; its helper lives on and would hold resources
        deadline = time.monotonic() + 30
        while stack.processes["mlflow"] is mlflow:  # replaced once the old group is stopped and a new one started
            assert time.monotonic() < deadline, "the watchdog did not restart mlflow"
            time.sleep(0.2)
        assert stack.restarts["mlflow"] == 1
        assert procs.read_process(helper.pid) is None or not procs.read_process(helper.pid).alive
        groups = [p.pid for p in stack.processes.values()]
    assert all(procs.group_members(pgid) == [] for pgid in groups)
    assert _stack_processes(stack.tag) == set()


FORKING_WORKER = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"


class CeleryFakeStack(FakeStack):
    """Two fake Celery workers, each starting a child as Celery's prefork pool does."""

    def commands(self) -> dict[str, list[str]]:
        return {**super().commands(), "celery-worker-1": ["python", "-c", FORKING_WORKER],
                "celery-worker-2": ["python", "-c", FORKING_WORKER]}


def test_each_celery_worker_and_the_processes_it_starts_run_on_its_own_cpus_and_nothing_else_is_pinned(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    wanted = ((cpus[0],), (cpus[-1],))
    stack = CeleryFakeStack(fake_env(str(tmp_path / "home")), airflow_port=free_port(), mlflow_port=free_port(),
                            executor="CeleryExecutor", celery_workers=2, celery_cpus=wanted)
    with stack:
        for index, want in enumerate(wanted, start=1):
            leader = stack.processes[f"celery-worker-{index}"].pid
            deadline = time.monotonic() + 30
            while len(procs.group_members(leader)) < 2:
                assert time.monotonic() < deadline, f"celery-worker-{index} did not start its child"
                time.sleep(0.1)
            assert {p.pid: os.sched_getaffinity(p.pid) for p in procs.group_members(leader)} == {
                p.pid: set(want) for p in procs.group_members(leader)}
        assert os.sched_getaffinity(stack.processes["scheduler"].pid) == set(cpus)


def test_service_cpus_pin_every_service_but_the_workers(tmp_path):
    """bench/federated.py's one-worker arm puts the services on its worker's CPU (``service_cpus``)."""
    cpus = sorted(os.sched_getaffinity(0))
    stack = CeleryFakeStack(fake_env(str(tmp_path / "home")), airflow_port=free_port(), mlflow_port=free_port(),
                            executor="CeleryExecutor", celery_workers=2, celery_cpus=((cpus[-1],), (cpus[-1],)),
                            service_cpus=(cpus[0],))
    with stack:
        pinned = {name: os.sched_getaffinity(process.pid) for name, process in stack.processes.items()}
    assert pinned == {name: {cpus[-1]} if name.startswith("celery-worker-") else {cpus[0]} for name in pinned}
    assert {"scheduler", "mlflow", "celery-worker-1"} <= set(pinned)


def test_fewer_cpu_sets_than_celery_workers_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="celery_cpus gives 1 CPU sets for 2 Celery workers"):
        CeleryFakeStack(fake_env(str(tmp_path / "home")), executor="CeleryExecutor", celery_workers=2, celery_cpus=((0,),))


def test_each_celery_worker_consumes_its_own_queues_and_its_log_tells_which_task_it_ran(tmp_path):
    """Site queues (dl_agent_federated's `site_queues`): worker i gets `--queues celery_queues[i]`,
    and `celery_worker_of` reads back from the workers' logs which worker received which instance."""
    stack = LocalStack(fake_env(str(tmp_path / "home")), executor="CeleryExecutor", celery_workers=2,
                       celery_queues=("default,site_a", "default,site_b"))
    commands = stack.commands()
    for index, queues in ((1, "default,site_a"), (2, "default,site_b")):
        command = commands[f"celery-worker-{index}"]
        assert command[command.index("--queues") + 1] == queues
        assert command[command.index("--celery-hostname") + 1] == f"worker{index}@%h"
    stack.log_dir.mkdir(parents=True)
    line = "[celery] Executing workload: ti=TaskInstance(task_id='{task}', dag_id='d', run_id='{run}', try_number=1, map_index={index})"
    (stack.log_dir / "celery-worker-1.log").write_text("\n".join([
        line.format(task="round_01.local", run="r1", index=0), line.format(task="round_01.local", run="r1", index=2),
        line.format(task="round_01.local", run="r2", index=1), line.format(task="setup", run="r1", index=-1)]))
    (stack.log_dir / "celery-worker-2.log").write_text(line.format(task="round_01.local", run="r1", index=1))
    assert stack.celery_worker_of("r1", "round_01.local") == {0: "celery-worker-1", 1: "celery-worker-2", 2: "celery-worker-1"}
    assert stack.celery_worker_of("r1", "setup") == {-1: "celery-worker-1"}
    with pytest.raises(ValueError, match="celery_queues gives 1 queue lists for 2 Celery workers"):
        LocalStack(fake_env(str(tmp_path / "other")), executor="CeleryExecutor", celery_workers=2, celery_queues=("default",))
