"""`python -m reproq_django.executor --serve`: the pool protocol, spoken directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from reproq_cli.core.executor import ExecSpec
from reproq_cli.core.pool import ExecutorPool
from tests.django.support import REPO_ROOT, sqlite_env


class Server:
    def __init__(self, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reproq_django.executor", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=sqlite_env(**env),
            text=True,
        )
        assert self.proc.stdout is not None
        self.ready = json.loads(self.proc.stdout.readline())

    def ask(self, spec: dict | str, result_id: int = 0, attempt: int = 1) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        text = spec if isinstance(spec, str) else json.dumps(spec)
        request = {"result_id": result_id, "attempt": attempt, "spec": text}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=30)
        return code, self.proc.stderr.read()


def task(name: str, *args, **extra) -> dict:
    return {"task_path": f"tests.django.sampleapp.tasks.{name}", "args": list(args), **extra}


@pytest.fixture
def server():
    s = Server()
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def test_ready_then_one_answer_per_request(server):
    assert server.ready == {"ready": True, "pid": server.proc.pid}
    assert server.ask(task("add", 2, 3)) == {"result": {"ok": True, "return": 5}, "stderr": ""}
    failed = server.ask(task("explode", "bad"))["result"]
    assert failed["ok"] is False
    assert failed["exception_class"] == "builtins.ValueError"
    assert failed["message"] == "bad"
    # the same process goes on after a failure
    assert server.ask(task("add", 1, 1))["result"] == {"ok": True, "return": 2}
    assert server.close()[0] == 0  # end of input ends the loop


def test_task_output_is_returned_with_its_task(server):
    answer = server.ask(task("shout", "hi"))
    assert answer["result"] == {"ok": True, "return": "HI"}
    assert "Task wrote" in answer["stderr"] and "suppressed" in answer["stderr"]
    assert server.ask(task("add", 0, 0))["stderr"] == ""


def test_bad_requests_get_failed_envelopes(server):
    assert server.ask("not json")["result"]["exception_class"] == "PayloadError"
    assert server.ask("[1, 2]")["result"]["exception_class"] == "PayloadError"
    missing = server.ask(task("nope"))["result"]
    assert missing["exception_class"] == "ImportError"
    other = server.ask(task("add", 1, 2, django={"settings_module": "other.settings"}))
    assert other["result"]["exception_class"] == "ImproperlyConfigured"
    assert "'tests.django.settings'" in other["result"]["message"]
    queue = server.ask(task("add", 1, 2, queue_name=["x"]))["result"]
    assert queue["message"] == "Invalid spec: queue_name must be a string, not list"
    priority = server.ask(task("add", 1, 2, priority="hi"))["result"]
    assert priority["exception_class"] == "ValueError"
    assert priority["message"].startswith("Invalid spec: invalid literal for int()")
    # jsonb takes 10,000 levels of nesting; Python's decoder raised RecursionError, which
    # ended the pool process.
    deep = server.ask('{"task_path": "x.y", "args": ' + "[" * 3000 + "]" * 3000 + "}")["result"]
    assert deep["exception_class"] == "PayloadError"
    assert deep["message"] == "the spec is nested too deeply for Python's JSON decoder"
    assert server.ask(task("add", 1, 2))["result"]["ok"] is True
    assert server.proc.poll() is None  # the same process answered them all


def test_broken_settings_fail_each_task_with_the_reason():
    server = Server(DJANGO_SETTINGS_MODULE="no.such.settings")
    try:
        assert server.ready["ready"] is True
        for _ in range(2):
            result = server.ask(task("add", 1, 2))["result"]
            assert result["ok"] is False
            assert result["exception_class"] == "ImproperlyConfigured"
            assert result["message"] == "No module named 'no'"
    finally:
        server.close()


def test_start_up_skips_what_a_task_does_not_need(server):
    """Each pool process pays its start-up again when it is replaced: the worker's config
    parsers (YAML, TOML) and the scheduler's cron parser stay out of it."""
    heavy = [
        "yaml",
        "tomllib",
        "reproq_cli.config",
        "reproq_cli.core.cron",
        "reproq_django.recurring",
    ]
    answer = server.ask(
        {"task_path": "tests.django.sampleapp.probe.loaded", "args": [heavy], "kwargs": {}}
    )
    assert answer["result"] == {"ok": True, "return": []}


def _forked_answers(task_path: str, count: int, *args: object, **env: str) -> list:
    """What ``count`` runs of a task answered in a pool of one process replaced after each."""
    spec = ExecSpec(sys.executable, "reproq_django.executor", "stdin", 1 << 20, 1 << 20, 1 << 20)
    pool = ExecutorPool(
        spec, size=1, max_tasks=1, max_memory_mb=0, env=sqlite_env(**env), cwd=str(REPO_ROOT)
    )
    payload = json.dumps({"task_path": task_path, "args": list(args)})
    pool.start()
    try:
        assert pool.wait_ready() == 1
        answers = []
        for _ in range(count):
            result = pool.run_attempt(result_id=1, attempt=1, payload=payload, timeout=60)
            assert result.envelope is not None and result.envelope.ok, result.stderr
            answers.append(json.loads(result.envelope.return_raw or "null"))
    finally:
        pool.close()
    return answers


def test_the_pool_forks_its_processes_from_one_django_set_up():
    seen = _forked_answers("tests.django.sampleapp.probe.parent", 3)
    pids = [pid for pid, _ in seen]
    parents = {parent for _, parent in seen}
    assert len(set(pids)) == 3  # a process per task (--pool-max-tasks 1)
    (server,) = parents  # all made by the one fork server, not started by the worker
    assert server != os.getpid()


def test_the_fork_server_builds_the_task_backends_before_it_forks():
    """A forked process's first task used to build the backends and import what run_spec
    needs itself, ~10 ms of CPU that every process of a new pool paid at the same moment."""
    (built,) = _forked_answers("tests.django.sampleapp.probe.built_at_import", 1)
    assert built == sorted(settings.TASKS)


def test_a_forked_process_logs_its_own_memory():
    (threads,) = _forked_answers(
        "tests.django.sampleapp.probe.threads", 1, REPROQ_MEMORY_LOG_INTERVAL="60"
    )
    assert "reproq-memory-logger" in threads["names"]
    assert threads["parent"] == 1  # the fork server forks from a process with one thread
