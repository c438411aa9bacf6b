"""`reproq worker --executor ray` against a private local Ray cluster, and
reproq_django.distributed on Ray and without it.

One Ray head (2 CPUs) is started for the module; every worker here is a real `reproq worker`
process whose Ray bridge connects to it. Evidence that work happened on Ray comes from the
tasks themselves (``ray.is_initialized()`` inside them, pids and marker files they write).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.tasks import TaskResultStatus
from django.utils import timezone

from reproq_django.distributed import parallel_map, parallel_starmap, scatter_gather
from reproq_django.models import TaskRun
from tests.django.sampleapp import ray_tasks, tasks
from tests.support.harness import (
    REPO_ROOT,
    WorkerFactory,
    parse_logs,
    process_alive,
    wait_for,
)
from tests.support.ports import free_port

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs reproq[ray]"),
]

ALLOWED = ["tests.django.sampleapp."]
# Tests with workers of their own use this queue; the shared worker polls only "default".
ISOLATED = "high"


@pytest.fixture(scope="module", autouse=True)
def _flush_survives_the_shared_worker():
    """pytest-django empties the tables after each test with one TRUNCATE of all of them, while
    the module's shared worker keeps polling. TRUNCATE locks the tables one by one, so it can
    deadlock with a worker statement that reads two of them, and PostgreSQL may abort the
    TRUNCATE (seen in CI). Retrying it is safe: the failed one rolled back."""
    from django.db import OperationalError, connection

    operations = type(connection.ops)
    flush = operations.execute_sql_flush

    def retrying_flush(self, sql_list):
        for attempt in range(5):
            try:
                return flush(self, sql_list)
            except OperationalError as exc:
                if getattr(exc.__cause__, "sqlstate", None) != "40P01" or attempt == 4:
                    raise

    operations.execute_sql_flush = retrying_flush
    yield
    operations.execute_sql_flush = flush


@pytest.fixture(scope="module")
def ray_cluster():
    from tests.support.ray_cluster import start_ray

    env = dict(os.environ)
    # Ray workers import the test tasks and reach the test database like executor children.
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Explicitly off: with the mode unset, `ray start` turns token auth on whenever a
    # ~/.ray/auth_token exists (a local ray.init() elsewhere writes one).
    env["RAY_AUTH_MODE"] = "disabled"
    cluster = start_ray(env, num_cpus=2)
    yield cluster
    cluster.stop()


class RayWorkers(WorkerFactory):
    def __init__(self, dsn: str, workdir: Path, address: str) -> None:
        super().__init__(dsn, workdir, executor="ray")
        self.address = address

    def config(self, **worker):
        worker.setdefault("ray_address", self.address)
        worker.setdefault("executor_module", "reproq_django.executor")
        worker.setdefault("allowed_task_modules", ALLOWED)
        return super().config(**worker)

    def env(self, extra=None):
        """The worker's environment; a key given as None is removed."""
        env = super().env(
            {
                "DJANGO_SETTINGS_MODULE": "tests.django.settings",
                "RAY_AUTH_MODE": "disabled",  # as the module's cluster
                **(extra or {}),
            }
        )
        return {key: value for key, value in env.items() if value is not None}


@pytest.fixture
def ray_workers(tmp_path, ray_cluster):
    factory = RayWorkers(os.environ["REPROQ_TEST_DJANGO_DSN"], tmp_path, ray_cluster.address)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="module")
def shared_worker(ray_cluster, django_db_setup, tmp_path_factory):
    """One long-running worker for the tests that need no worker of their own: its Ray job
    keeps warm Ray worker processes, so each test pays for its tasks, not for start-up."""
    factory = RayWorkers(
        os.environ["REPROQ_TEST_DJANGO_DSN"], tmp_path_factory.mktemp("ray"), ray_cluster.address
    )
    proc = factory.start(
        "--concurrency", "4", "--heartbeat-seconds", "1", "--worker-id", "shared",
        "--queues", "default",
    )  # fmt: skip
    wait_for(
        lambda: "Starting reproq worker" in factory.output(proc) or proc.poll() is not None,
        timeout=60,
        what="the shared worker connected to Ray",
    )
    assert proc.poll() is None, factory.output(proc)[-3000:]
    yield factory
    _stop(factory, proc)
    factory.cleanup()


def _status(result) -> str:
    return TaskRun.objects.get(result_id=int(result.id)).status


def _wait_status(results, *statuses: str, timeout: float = 60.0, factory=None, worker=None) -> None:
    """Wait for every result to reach one of ``statuses``; with ``worker``, fail at once,
    with its error output, if it exits first (it would never get there)."""

    def reached() -> bool:
        if worker is not None and worker.poll() is not None:
            err = factory.outputs[worker.pid][1].read_text()
            raise AssertionError(f"the worker exited ({worker.returncode}): {err[-2000:]}")
        return all(_status(r) in statuses for r in results)

    wait_for(reached, timeout=timeout, what=f"{len(results)} task(s) {'/'.join(statuses)}")


def _stop(factory: WorkerFactory, proc) -> None:
    proc.send_signal(signal.SIGTERM)
    factory.finish(proc, timeout=60)


def _bridge_pid(worker_pid: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == worker_pid and b"reproq_cli.core.rayexec" in cmdline:
            return int(entry.name)
    return None


def test_fifty_tasks_run_on_ray_and_an_impossible_one_fails(shared_worker):
    results = [ray_tasks.square.enqueue(i) for i in range(50)]
    greedy = ray_tasks.needs_gpus.enqueue()
    assert TaskRun.objects.get(result_id=int(greedy.id)).spec_json["ray"] == {"num_gpus": 8}
    _wait_status([*results, greedy], "SUCCESSFUL", "FAILED")
    for i, result in enumerate(results):
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL, result.errors_json
        value = result.return_value
        assert value["value"] == i * i
        assert value["in_ray"] is True  # the body ran inside a Ray worker
        assert value["rows"] is True  # with Django set up and the database reachable
    # Refused at once with the reason, not left waiting for GPUs that will never come.
    greedy.refresh()
    assert greedy.status == TaskResultStatus.FAILED
    (error,) = greedy.errors_json
    assert error["kind"] == "infra_error"
    assert "GPU=8 (cluster has 0)" in error["message"]


def test_failing_task_retries_then_succeeds_or_fails(shared_worker):
    flaky = ray_tasks.flaky.enqueue()
    bad = tasks.explode.enqueue("on ray")
    wait_for(
        lambda: all(TaskRun.objects.get(result_id=int(r.id)).errors_json for r in (flaky, bad)),
        what="first attempts failed",
    )
    flaky.refresh()
    bad.refresh()
    assert flaky.raw_status == bad.raw_status == "READY"  # retries scheduled (MAX_ATTEMPTS 2)
    assert flaky.errors_json[0]["message"] == "first attempt fails"
    assert bad.errors[0].exception_class is ValueError
    TaskRun.objects.filter(result_id__in=[int(flaky.id), int(bad.id)]).update(run_after=None)
    _wait_status([flaky, bad], "SUCCESSFUL", "FAILED")
    flaky.refresh()
    bad.refresh()
    assert flaky.status == TaskResultStatus.SUCCESSFUL
    assert flaky.return_value == 2
    assert bad.status == TaskResultStatus.FAILED
    assert [e["message"] for e in bad.errors_json] == ["on ray", "on ray"]


def test_timeout_stops_the_ray_task(shared_worker, tmp_path):
    began = time.time()
    # Deferred until its row has the short timeout: the shared worker claims within
    # milliseconds of an enqueue.
    later = timezone.now() + dt.timedelta(hours=1)
    slow = ray_tasks.sleeper.using(run_after=later).enqueue(str(tmp_path), 60)
    TaskRun.objects.filter(result_id=int(slow.id)).update(
        timeout_seconds=3, max_attempts=1, run_after=None
    )
    _wait_status([slow], "FAILED")
    slow.refresh()
    (error,) = slow.errors_json
    assert error["kind"] == "timeout"
    assert error["message"] == "task exceeded its time limit of 3s"
    # The task body was interrupted (its finally ran), long before its 60 s sleep.
    ended = wait_for(
        lambda: (tmp_path / f"{slow.id}-1.ended").exists(), timeout=20, what="task ended"
    )
    assert ended
    assert float((tmp_path / f"{slow.id}-1.ended").read_text()) - began < 30


def test_a_spec_nested_past_pythons_decoder_fails_with_the_executors_reason(shared_worker):
    # Was RecursionError in the worker (reading the spec's Ray options): the row stayed
    # RUNNING until its lease ran out, then the same again.
    from django.db import connection

    later = timezone.now() + dt.timedelta(hours=1)
    deep = tasks.add.using(run_after=later).enqueue(1, 2)
    nested = "[" * 3000 + "]" * 3000
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE task_runs SET spec_json = jsonb_set(spec_json, '{args}', %s::jsonb),"
            " max_attempts = 1, run_after = NULL WHERE result_id = %s",
            [nested, int(deep.id)],
        )
    _wait_status([deep], "FAILED", "SUCCESSFUL")
    (error,) = TaskRun.objects.get(result_id=int(deep.id)).errors_json
    assert error["kind"] == "app_error", error
    assert error["message"] == "the spec is nested too deeply for Python's JSON decoder", error


def test_cancellation_stops_the_ray_task(shared_worker, tmp_path):
    slow = ray_tasks.sleeper.enqueue(str(tmp_path), 60)
    started = tmp_path / f"{slow.id}-1.started"
    wait_for(started.exists, timeout=60, what="task started on Ray")
    requested = time.time()
    TaskRun.objects.filter(result_id=int(slow.id)).update(cancel_requested=True)
    wait_for(
        lambda: TaskRun.objects.get(result_id=int(slow.id)).status == "FAILED",
        timeout=30,
        what="cancelled",
    )
    ended = tmp_path / f"{slow.id}-1.ended"
    wait_for(ended.exists, timeout=20, what="task body interrupted")
    assert float(ended.read_text()) - requested < 20
    slow.refresh()
    assert slow.errors_json[0]["kind"] == "cancelled"
    assert slow.attempts == 1


def test_killed_worker_tasks_are_reclaimed_by_another(ray_workers, tmp_path):
    # Different sleeps, so deduplication keeps two rows.
    slow = [
        ray_tasks.sleeper.using(queue_name=ISOLATED).enqueue(
            str(tmp_path), 60 + i, only_first_attempt=True
        )
        for i in (0, 1)
    ]
    doomed = ray_workers.start(
        "--worker-id", "doomed", "--concurrency", "2", "--queues", ISOLATED,
        "--lease-seconds", "3", "--heartbeat-seconds", "1",
    )  # fmt: skip
    started = [tmp_path / f"{r.id}-1.started" for r in slow]
    wait_for(lambda: all(p.exists() for p in started), timeout=60, what="both running on Ray")
    pids = [int(p.read_text()) for p in started]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    # Its bridge saw the worker go and stopped the Ray tasks it had started.
    wait_for(
        lambda: not any(process_alive(pid) for pid in pids), timeout=30, what="ray tasks stopped"
    )
    rescuer = ray_workers.start(
        "--worker-id", "rescuer", "--concurrency", "2", "--reclaim-interval-seconds", "1",
        "--queues", ISOLATED,
    )  # fmt: skip
    wait_for(
        lambda: all(TaskRun.objects.get(result_id=int(r.id)).status == "SUCCESSFUL" for r in slow),
        timeout=90,
        what="reclaimed and rerun",
    )
    _stop(ray_workers, rescuer)
    for result in slow:
        result.refresh()
        assert result.return_value == 2
        row = TaskRun.objects.get(result_id=int(result.id))
        assert row.worker_ids == ["doomed", "rescuer"]
        assert row.errors_json[0]["kind"] == "lease_expiry"


def test_lost_ray_connection_leaves_the_task_to_reclaim_and_reconnects(ray_workers, tmp_path):
    slow = ray_tasks.sleeper.using(queue_name=ISOLATED).enqueue(
        str(tmp_path), 60, only_first_attempt=True
    )
    proc = ray_workers.start(
        "--lease-seconds", "3", "--heartbeat-seconds", "1", "--reclaim-interval-seconds", "1",
        "--queues", ISOLATED,
    )  # fmt: skip
    wait_for((tmp_path / f"{slow.id}-1.started").exists, timeout=60, what="running on Ray")
    bridge = wait_for(lambda: _bridge_pid(proc.pid), what="the worker's Ray bridge")
    os.kill(bridge, signal.SIGKILL)  # the driver is gone: as if the cluster dropped away
    wait_for(
        lambda: TaskRun.objects.get(result_id=int(slow.id)).status == "SUCCESSFUL",
        timeout=90,
        what="reclaimed after lease expiry and rerun after reconnecting",
    )
    assert _bridge_pid(proc.pid) not in (None, bridge)
    _stop(ray_workers, proc)
    messages = [entry["msg"] for entry in parse_logs(ray_workers.output(proc))]
    assert any(m.startswith("Task abandoned: executor connection lost") for m in messages)
    assert "Reconnected to Ray" in messages
    slow.refresh()
    assert slow.return_value == 2
    assert slow.errors_json[0]["kind"] == "lease_expiry"


def test_parallel_map_of_a_nested_function_inside_a_ray_task(shared_worker):
    result = ray_tasks.fan_out.enqueue(1000)
    _wait_status([result], "SUCCESSFUL", "FAILED", timeout=90)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors_json
    value = result.return_value
    assert value["in_ray"] is True
    assert value["values"] == [i * i + 7 for i in range(1000)]
    (_, long_end), *short = value["spans"]
    # A sliding window of two, not batches of two: the last short call began before the long
    # first one ended (with batches it would wait for the whole first pair).
    assert short[-1][0] < long_end


def _square_on(ray_workers, address: str, *flags: str, env=None) -> list[dict]:
    """Run three tasks through a worker connected to ``address``; return its log entries."""
    results = [ray_tasks.square.using(queue_name=ISOLATED).enqueue(100 + i) for i in range(3)]
    proc = ray_workers.start("--queues", ISOLATED, *flags, env=env, ray_address=address)
    _wait_status(results, "SUCCESSFUL", "FAILED", timeout=180, factory=ray_workers, worker=proc)
    _stop(ray_workers, proc)
    for i, result in enumerate(results):
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL, result.errors_json
        assert result.return_value["value"] == (100 + i) ** 2
        assert result.return_value["in_ray"] is True
    return parse_logs(ray_workers.output(proc))


def test_ray_client_address_and_ignored_resource_caps(ray_workers, ray_cluster):
    logs = _square_on(
        ray_workers, ray_cluster.client_address,
        "--task-memory-limit", "512", "--task-cpu-limit", "30",
    )  # fmt: skip
    connected = next(e for e in logs if e["msg"] == "Connected to Ray")
    assert connected["address"] == ray_cluster.client_address
    (warning,) = [e for e in logs if e["msg"].startswith("--task-memory-limit and --task-cpu")]
    assert warning["level"] == "WARN"
    assert (warning["task_memory_limit_mb"], warning["task_cpu_limit"]) == (512, 30)


def test_local_address_starts_a_private_ray(ray_workers, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    logs = _square_on(
        ray_workers, "local", "--concurrency", "1",
        env={"HOME": str(home), "RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None},
    )  # fmt: skip
    connected = next(e for e in logs if e["msg"] == "Connected to Ray")
    assert connected["address"] == "local"
    # Its own single-node Ray, sized by --concurrency, not the module's 2-CPU cluster.
    assert "CPU=1" in str(connected["resources"])
    # Token auth on, with a token of its own: nothing saved where later clusters look.
    assert not (home / ".ray" / "auth_token").exists()


def _run_to_exit(factory: RayWorkers, args: list[str], *, timeout: float):
    """``python <args>`` in the factory's directory and environment, its output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=factory.workdir,
        env=factory.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_unreachable_ray_address_is_a_one_line_error(ray_workers):
    address = f"ray://127.0.0.1:{free_port()}"
    ray_workers.config(ray_address=address)
    proc = _run_to_exit(ray_workers, ["-m", "reproq_cli", "worker", "--burst"], timeout=240)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"cannot connect to Ray at {address!r}" in errors[0]
    assert "hint: check --ray-address" in proc.stderr


def test_without_ray_executor_says_how_to_install(ray_workers):
    ray_workers.config()
    code = (
        "import sys; sys.modules['ray'] = None; from reproq_cli.cli import main; "
        "main(['worker', '--burst'])"
    )
    proc = _run_to_exit(ray_workers, ["-c", code], timeout=60)
    assert proc.returncode != 0
    assert "error: --executor ray needs Ray, which is not installed" in proc.stderr
    assert "pip install 'reproq[ray]'" in proc.stderr


# --- reproq_django.distributed without Ray: a local process pool --------------------------------


def test_local_fallback_keeps_order_and_sends_nested_functions():
    base = 3

    def combine(a: int, b: int = 0) -> int:
        return a * base + b

    assert parallel_map(combine, range(200), b=1, max_concurrency=2) == [
        i * 3 + 1 for i in range(200)
    ]
    assert parallel_starmap(combine, [(1, 2), (3, 4)]) == [5, 13]
    assert scatter_gather([(combine, (1,), {"b": 5}), (lambda: "x", ()), lambda: "y"]) == [
        8,
        "x",
        "y",
    ]
    assert parallel_map(combine, []) == []


def test_local_fallback_raises_the_first_error():
    def boom(item: int) -> int:
        if item == 3:
            raise KeyError("three")
        return item

    with pytest.raises(KeyError, match="three"):
        parallel_map(boom, range(8), max_concurrency=2)
