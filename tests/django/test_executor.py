"""`python -m reproq_django.executor` as a process: flags, envelopes, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.django.support import sqlite_env
from tests.support.harness import wait_for


def run(*flags: str, stdin: str | None = None, settings: str | None = "tests.django.settings"):
    env = sqlite_env()  # SQLite in memory: these tasks need no database
    if settings:
        env["DJANGO_SETTINGS_MODULE"] = settings
    else:
        env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-m", "reproq_django.executor", *flags],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.strip().splitlines()
    return result.returncode, (json.loads(lines[-1]) if lines else None), result.stderr


def spec(task: str, *args, **kwargs) -> str:
    return json.dumps(
        {"task_path": f"tests.django.sampleapp.tasks.{task}", "args": list(args), "kwargs": kwargs}
    )


@pytest.mark.parametrize("mode", ["stdin", "file", "json"])
def test_payload_modes(tmp_path, mode):
    payload = spec("add", 2, 3)
    if mode == "stdin":
        code, envelope, _ = run("--payload-stdin", stdin=payload)
    elif mode == "file":
        path = tmp_path / "spec.json"
        path.write_text(payload)
        code, envelope, _ = run("--payload-file", str(path))
    else:
        code, envelope, _ = run("--payload-json", payload)
    assert (code, envelope) == (0, {"ok": True, "return": 5})


def test_task_exception_envelope():
    code, envelope, _ = run("--payload-json", spec("explode", "bad"))
    assert code == 1
    assert envelope["ok"] is False
    assert envelope["exception_class"] == "builtins.ValueError"
    assert envelope["message"] == "bad"
    assert "Traceback" in envelope["traceback"]


@pytest.mark.parametrize(
    ("task", "args", "message"),
    [
        ("add", [1e308, 1e308], "Out of range float values are not JSON compliant"),
        ("shout", ["a\x00b"], "cannot store the task's return value: a string holds a NUL"),
    ],
)
def test_a_return_value_that_cannot_be_stored_fails_the_task(task, args, message):
    code, envelope, _ = run("--payload-json", spec(task, *args))
    assert (code, envelope["ok"], envelope["exception_class"]) == (1, False, "builtins.ValueError")
    assert envelope["message"].startswith(message)


def test_prints_are_kept_off_stdout():
    code, envelope, stderr = run("--payload-json", spec("shout", "hey"))
    assert (code, envelope) == (0, {"ok": True, "return": "HEY"})
    assert "[reproq executor] Task wrote" in stderr
    assert "this print must not reach" not in stderr


def test_bad_payload_is_reported_before_django_setup():
    code, envelope, _ = run("--payload-json", "{not json", settings=None)
    assert code == 1
    assert envelope["exception_class"] == "PayloadError"


def test_unimportable_task():
    code, envelope, _ = run("--payload-json", json.dumps({"task_path": "nope.missing"}))
    assert code == 1
    assert envelope["exception_class"] == "ImportError"
    assert "Failed to import task 'nope.missing'" in envelope["message"]


def test_a_spec_field_of_the_wrong_type_is_reported_in_the_envelope():
    payload = json.dumps({**json.loads(spec("add", 1, 2)), "priority": "hi"})
    code, envelope, _ = run("--payload-json", payload)
    assert code == 1
    assert envelope["exception_class"] == "ValueError"
    assert envelope["message"] == ("Invalid spec: invalid literal for int() with base 10: 'hi'")


def test_task_path_flag_and_settings_flag():
    code, envelope, _ = run(
        "--payload-json",
        spec("explode", "quiet"),
        "--task-path",
        "tests.django.sampleapp.tasks.shout",
    )
    assert (code, envelope) == (0, {"ok": True, "return": "QUIET"})
    code, envelope, _ = run(
        "--payload-json",
        spec("settings_module"),
        "--settings",
        "tests.django.settings",
        settings=None,
    )
    assert (code, envelope) == (0, {"ok": True, "return": "tests.django.settings"})


def test_settings_from_spec():
    payload = json.loads(spec("settings_module"))
    payload["django"] = {"settings_module": "tests.django.settings"}
    code, envelope, _ = run("--payload-json", json.dumps(payload), settings=None)
    assert (code, envelope) == (0, {"ok": True, "return": "tests.django.settings"})


def test_usage_errors_exit_2():
    code, envelope, stderr = run("--payload-json", "{}", "--payload-stdin")
    assert code == 2
    assert envelope is None
    assert "not allowed with argument" in stderr


def test_sigterm_gives_a_terminated_envelope():
    env = sqlite_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reproq_django.executor", "--payload-json",
         json.dumps({"task_path": "reproq_django.tasks.debug_noop_task", "kwargs": {"sleep_seconds": 30}})],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Wait until the executor catches SIGTERM (its handler goes in once Django is set up):
    # a process seen sleeping earlier may still be loading, and SIGTERM would kill it.
    wait_for(lambda: _catches(proc.pid, signal.SIGTERM), timeout=30, what="a SIGTERM handler")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    envelope = json.loads(out.strip().splitlines()[-1])
    assert envelope["exception_class"] == "Terminated"


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False
