"""`manage.py reproq systemd` writes what systemd reads as meant; `init` runs `install`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from reproq_django import binary
from reproq_django.models import RateLimit
from tests.django.support import sqlite_env
from tests.django.test_manage import manage


def unit_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def verify(unit: Path) -> None:
    """systemd's own parser accepts the unit without a warning (where systemd-analyze is
    installed; the lines themselves are checked either way)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, ""), unit.name


def test_systemd_units_quote_what_systemd_would_expand_or_split(tmp_path, monkeypatch):
    # A space splits an unquoted ExecStart= word; systemd expands `%x` everywhere and `$X`,
    # `${X}` in ExecStart= arguments; `"` and `\` are its quoting and escapes.
    project = tmp_path / "my app%i"
    project.mkdir()
    (project / "manage.py").write_text("")
    monkeypatch.chdir(project)
    out, err = manage(
        "systemd", "--user", "app", "--queues", "default,high", "--logs-dir", "logs $HOME",
        "--env-file", "conf dir/reproq.env", "--metrics-auth-token", 'to$k"en\\',
        "--metrics-allow-cidrs", "10.0.0.0/8 192.168.0.0/16", "--schedule",
    )  # fmt: skip
    assert err == ""
    # systemd refuses a unit name with a space or a `%`.
    names = ["worker-my-app-i.service", "beat-my-app-i.service", "schedule-my-app-i.service",
             "schedule-my-app-i.timer"]  # fmt: skip
    assert out.splitlines() == [f"Wrote {project}/reproq-{name}" for name in names]
    here = str(project).replace("%", "%%")
    python = sys.executable
    worker = unit_lines(project / "reproq-worker-my-app-i.service")
    assert "Description=reproq worker (my app%%i)" in worker
    assert f"WorkingDirectory={here}" in worker
    assert f"EnvironmentFile={here}/conf dir/reproq.env" in worker  # relative: ignored by systemd
    assert 'Environment="METRICS_AUTH_TOKEN=to$k\\"en\\\\"' in worker  # no variables here
    assert 'Environment="METRICS_ALLOW_CIDRS=10.0.0.0/8 192.168.0.0/16"' in worker
    assert (
        f'ExecStart={python} "{here}/manage.py" reproq worker --concurrency 10 '
        '--queues default,high --logs-dir "logs $$HOME"'
    ) in worker
    # bash, not systemd, must read ${REPROQ_SCHEDULER_MODE:-beat}: systemd 254 and later
    # replace a braced name that is not a variable name with "" in ExecStart=, so beat slept.
    beat = unit_lines(project / "reproq-beat-my-app-i.service")
    assert (
        'ExecStart=/bin/bash -c "if [ \\"$${REPROQ_SCHEDULER_MODE:-beat}\\" = beat ]; then exec '
        f"{python} '{here}/manage.py' reproq beat; else sleep infinity; fi\""
    ) in beat
    schedule = unit_lines(project / "reproq-schedule-my-app-i.service")
    assert (
        'ExecStart=/bin/bash -c "if [ \\"$${REPROQ_SCHEDULER_MODE:-beat}\\" = cron ]; then exec '
        f"{python} '{here}/manage.py' reproq schedule; fi\""
    ) in schedule
    assert "Description=reproq schedule timer (my app%%i)" in unit_lines(
        project / "reproq-schedule-my-app-i.timer"
    )
    for name in names:
        verify(project / f"reproq-{name}")


def test_systemd_refuses_what_systemd_would_change_and_no_quoting_keeps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for flag, value in (("--env-file", "/etc/reproq.env "), ("--user", "app\\")):
        with pytest.raises(CommandError, match=rf"^{flag} .* starts or ends with a space or "):
            manage("systemd", flag, value)
    odd = tmp_path / "py$thon"
    odd.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(odd))
    manage("systemd")
    worker = unit_lines(tmp_path / f"reproq-worker-{tmp_path.name}.service")
    # The program is not expanded but argv[0] is (Python finds its virtualenv from it).
    assert any(line.startswith(f'ExecStart=@"{odd}" "{tmp_path}/py$$thon" ') for line in worker)
    verify(tmp_path / f"reproq-worker-{tmp_path.name}.service")
    monkeypatch.setattr(sys, "executable", str(tmp_path / 'py"thon'))
    with pytest.raises(CommandError, match=r"^systemd refuses .* as a program: it holds a quote"):
        manage("systemd")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--concurrency", "0", "invalid value for --concurrency: 0 must be >= 1; give an integer"),
        ("--concurrency", "1001", "invalid value for --concurrency: 1001 must be <= 1000; "),
        ("--payload-mode", "pipe", 'invalid value for --payload-mode: "pipe" must be one of '),
        ("--metrics-port", "70000", "invalid value for --metrics-port: 70000 must be <= 65535; "),
    ],
)
def test_systemd_refuses_a_worker_flag_the_worker_would_refuse(
    tmp_path, monkeypatch, flag, value, message
):
    """A unit whose worker refuses its flags fails only when systemd starts it, with the reason
    in the journal: the value is refused here, with the worker's words, and nothing written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CommandError) as refused:
        manage("systemd", flag, value)
    assert str(refused.value).startswith(message)
    assert list(tmp_path.iterdir()) == []
    manage("systemd", "--concurrency", "1000", "--payload-mode", "file", "--metrics-port", "9090")
    worker = unit_lines(tmp_path / f"reproq-worker-{tmp_path.name}.service")
    (start,) = (line for line in worker if line.startswith("ExecStart="))
    assert start.endswith(" worker --concurrency 1000 --payload-mode file --metrics-port 9090")


@pytest.fixture
def no_install(monkeypatch) -> list[dict[str, object]]:
    """binary.install recorded, not run: these tests must not download anything."""
    calls: list[dict[str, object]] = []

    def install(**kwargs: object) -> tuple[Path, str]:
        calls.append(kwargs)
        return Path(".reproq/bin/reproq"), "reproq 0.0.0"

    monkeypatch.setattr(binary, "install", install)
    return calls


def test_init_skips_install_and_both_migrations(tmp_path, monkeypatch, no_install):
    monkeypatch.chdir(tmp_path)
    out, _ = manage("init", "--skip-install", "--skip-migrate", "--skip-worker-migrate")
    assert out.splitlines()[0] == "Wrote reproq.yaml"
    assert "allowed_task_modules" in (tmp_path / "reproq.yaml").read_text()
    assert no_install == []
    assert not (tmp_path / ".reproq").exists()
    assert "Ran " not in out


def test_init_runs_install_with_its_flags(tmp_path, monkeypatch, no_install):
    monkeypatch.chdir(tmp_path)
    out, _ = manage(
        "init", "--skip-migrate", "--skip-worker-migrate", "--source", "/srv/reproq",
        "--build", "--tag", "v9.9.9",
    )  # fmt: skip
    (call,) = no_install
    del call["log"]
    assert call == {"tag": "v9.9.9", "source": "/srv/reproq", "build_here": True, "verify": True}
    assert "Installed reproq 0.0.0 at " in out


@pytest.mark.django_db(transaction=True)
def test_init_runs_migrate_worker(tmp_path, monkeypatch, no_install):
    monkeypatch.chdir(tmp_path)
    # Transactional tests empty the tables: the seeded global rate limit is migrate's to add.
    RateLimit.objects.filter(key="global").delete()
    out, _ = manage("init", "--skip-install", "--skip-migrate")
    assert "Ran migrate-worker." in out
    assert RateLimit.objects.filter(key="global").exists()
    assert no_install == []


def test_init_reports_a_failed_install_in_one_line(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(CommandError, match=rf"^--source {missing}: no such file; give the path"):
        manage("init", "--skip-migrate", "--skip-worker-migrate", "--source", str(missing),
               "--config", str(tmp_path / "a.yaml"))  # fmt: skip
    # As manage.py runs it: the one line, exit 1, no traceback, nothing installed.
    # (a DSN for the worker's schema, which the failed install comes before)
    done = manage_py(tmp_path, "init", "--source", str(missing), DATABASE_URL=UNREACHABLE)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # (after the system check's warning about SQLite)
    assert done.stderr.splitlines()[-1] == (
        f"CommandError: --source {missing}: no such file; give the path of a reproq .pyz "
        "(with its .sha256 next to it) or an http(s) URL"
    )
    assert "Wrote reproq.yaml" in done.stdout
    assert not (tmp_path / ".reproq").exists()


UNREACHABLE = "postgresql://u@127.0.0.1:1/none"
NOT_POSTGRES = (
    "CommandError: DATABASES['default'] is django.db.backends.sqlite3, not PostgreSQL, and "
    "reproq has no DSN of its own; reproq needs the PostgreSQL database this project enqueues "
    "into: point DATABASES at PostgreSQL, set DATABASE_URL or `dsn:` in reproq.yaml, or "
)


def manage_py(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m django reproq ARGS` on the SQLite settings, as a user runs manage.py."""
    return subprocess.run(
        [sys.executable, "-m", "django", "reproq", *args],
        env=sqlite_env(**env),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_a_project_on_sqlite_gets_no_worker_on_an_unrelated_database(tmp_path):
    """Without a DSN the CLI falls back to its embedded PostgreSQL, where a SQLite project's
    tasks can never be: its worker waited there for them, and `init` migrated it. The
    embedded server is on for this run, so the old fallback would have been taken."""
    env = {"REPROQ_EMBEDDED": "", "REPROQ_EMBEDDED_DIR": str(tmp_path / "never-made")}
    for args, fix in (
        (("worker", "--burst"), "pass --database ALIAS"),
        (("beat", "--once"), "pass --database ALIAS"),
        (("migrate-worker",), "pass --database ALIAS"),
        (("init", "--skip-install"), "pass --skip-worker-migrate"),
    ):
        done = manage_py(tmp_path, *args, **env)
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines()[-1] == NOT_POSTGRES + fix
        assert "Running:" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # init wrote nothing, no server was made

    # A DSN of the CLI's own is used as before: the CLI runs, and goes there.
    (tmp_path / "reproq.yaml").write_text(f"dsn: '{UNREACHABLE}'\n")
    done = manage_py(tmp_path, "worker", "--burst", **env)
    assert "Running:" in done.stderr
    assert "error: cannot connect to postgresql://u@127.0.0.1:1/none" in done.stderr

    # init without the worker's schema: the project is set up for enqueueing, and told so.
    (tmp_path / "reproq.yaml").unlink()
    done = manage_py(tmp_path, "init", "--skip-install", "--skip-worker-migrate", **env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "Tasks can be enqueued into this project's database; a worker needs PostgreSQL: point "
        "DATABASES at it, then run python manage.py reproq worker"
    )
    assert not (tmp_path / "never-made").exists()


def test_init_help_lists_the_install_flags():
    done = subprocess.run(
        [sys.executable, "-m", "django", "reproq", "init", "--help"],
        env=sqlite_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--skip-install", "--source", "--build", "--tag"):
        assert flag in done.stdout
