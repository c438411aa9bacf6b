"""QA findings on the admin and `manage.py reproq`: permissions, bad numbers, cancel, pass-through
flags of reproq-django's interface, allowlist --write/--show-tasks, Task.using(run_after=...)."""

from __future__ import annotations

import datetime as dt
import io
import re
import tomllib

import pytest
import yaml
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.tasks.exceptions import InvalidTask
from django.urls import reverse
from django.utils import timezone

from reproq_django.management.commands import reproq as reproq_command
from reproq_django.models import TaskRun
from reproq_django.workflows import chain
from tests.django.sampleapp import tasks


def manage(*args: str, command: str = "reproq") -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def row(proxy) -> TaskRun:
    return TaskRun.objects.get(result_id=int(proxy.id))


# --- admin actions need the matching permission -----------------------------------------------

CHANGELIST = "admin:reproq_django_taskrun_changelist"
ALL_ACTIONS = {
    "replay_tasks",
    "retry_failed_tasks",
    "discard_failed_tasks",
    "cancel_tasks",
    "delete_successful_tasks",
}


def staff_client(client, *codenames: str):
    user = User.objects.create_user("staffer", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


def offered_actions(client, changelist: str = CHANGELIST) -> set[str]:
    response = client.get(reverse(changelist))
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is offered
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


@pytest.mark.django_db
def test_a_view_only_user_is_offered_no_action_and_cannot_post_one(client):
    viewer = staff_client(client, "view_taskrun")
    assert offered_actions(viewer) & ALL_ACTIONS == set()
    done = row(tasks.add.enqueue(1, 1))
    queued = row(tasks.add.enqueue(2, 2))
    failed = row(tasks.add.enqueue(3, 3))
    TaskRun.objects.filter(pk=done.pk).update(status="SUCCESSFUL")
    TaskRun.objects.filter(pk=failed.pk).update(status="FAILED")
    for name, target in (
        ("delete_successful_tasks", done),
        ("cancel_tasks", queued),
        ("discard_failed_tasks", failed),
        ("retry_failed_tasks", failed),
        ("replay_tasks", done),
    ):
        viewer.post(reverse(CHANGELIST), {"action": name, "_selected_action": [target.pk]})
    assert sorted(TaskRun.objects.values_list("status", flat=True)) == [
        "FAILED",
        "READY",
        "SUCCESSFUL",
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("codenames", "expected"),
    [
        (("view_taskrun", "change_taskrun"), {"retry_failed_tasks", "cancel_tasks"}),
        (("view_taskrun", "delete_taskrun"), {"discard_failed_tasks", "delete_successful_tasks"}),
        (("view_taskrun", "can_replay_taskrun"), {"replay_tasks"}),
    ],
)
def test_each_action_needs_its_own_permission(client, codenames, expected):
    assert offered_actions(staff_client(client, *codenames)) & ALL_ACTIONS == expected


@pytest.mark.django_db
def test_replay_runs_with_the_replay_permission(client):
    replayer = staff_client(client, "view_taskrun", "can_replay_taskrun")
    done = row(tasks.add.enqueue(1, 1))
    TaskRun.objects.filter(pk=done.pk).update(status="SUCCESSFUL")
    replayer.post(reverse(CHANGELIST), {"action": "replay_tasks", "_selected_action": [done.pk]})
    assert TaskRun.objects.filter(spec_hash=done.spec_hash, status="READY").count() == 1


@pytest.mark.django_db
def test_worker_and_queue_actions_need_more_than_view(client):
    viewer = staff_client(client, "view_worker", "view_queuecontrol")
    assert offered_actions(viewer, "admin:reproq_django_worker_changelist") == set()
    assert offered_actions(viewer, "admin:reproq_django_queuecontrol_changelist") == set()
    User.objects.get(username="staffer").user_permissions.add(
        *Permission.objects.filter(codename__in=["delete_worker", "change_queuecontrol"])
    )
    assert offered_actions(viewer, "admin:reproq_django_worker_changelist") >= {
        "delete_stale_workers"
    }
    assert offered_actions(viewer, "admin:reproq_django_queuecontrol_changelist") == {
        "pause_queues",
        "resume_queues",
    }


# --- a negative --limit is refused ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("subcommand", ["prune", "prune-successful", "reclaim"])
def test_a_negative_limit_is_refused_and_nothing_is_touched(subcommand):
    old = timezone.now() - dt.timedelta(days=30)
    for i in range(2):
        proxy = tasks.add.enqueue(i, 100)
        status = "RUNNING" if subcommand == "reclaim" else "SUCCESSFUL"
        TaskRun.objects.filter(result_id=int(proxy.id)).update(
            status=status, finished_at=old, leased_until=old
        )
    before = sorted(TaskRun.objects.values_list("result_id", "status"))
    with pytest.raises(
        CommandError, match=r"^--limit must be 0 \(no limit\) or a positive number, not -1; "
    ):
        manage(subcommand, "--older-than", "0s", "--limit", "-1")
    assert sorted(TaskRun.objects.values_list("result_id", "status")) == before
    out, _ = manage(subcommand, "--older-than", "0s", "--limit", "1", "--dry-run")
    assert " 1 task(s)" in out


# --- cancel -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_a_queued_task_cancels_it_and_fails_what_waits_on_it():
    steps = chain((tasks.add, (10, 10)), (tasks.add, (20, 20))).enqueue()
    out, _ = manage("cancel", "--id", steps[0].id)
    assert out.strip() == f"Cancelled task run {steps[0].id} (was READY)."
    first, second = row(steps[0]), row(steps[1])
    assert (first.status, first.finished_at is not None) == ("CANCELLED", True)
    assert (second.status, second.errors_json[-1]["kind"]) == ("FAILED", "parent_failed")


@pytest.mark.django_db
def test_cancel_a_running_task_requests_it_once():
    proxy = tasks.add.enqueue(6, 7)
    TaskRun.objects.filter(result_id=int(proxy.id)).update(status="RUNNING")
    out, _ = manage("cancel", "--id", proxy.id)
    assert out.strip() == f"Cancellation requested for task run {proxy.id}."
    assert (row(proxy).status, row(proxy).cancel_requested) == ("RUNNING", True)
    out, err = manage("cancel", "--id", proxy.id)
    assert (out, err.strip()) == ("", "warning: Cancel already requested.")


@pytest.mark.django_db
def test_cancel_a_finished_task_warns_and_changes_nothing():
    proxy = tasks.add.enqueue(8, 9)
    TaskRun.objects.filter(result_id=int(proxy.id)).update(status="SUCCESSFUL")
    _, err = manage("cancel", "--id", proxy.id)
    assert "already SUCCESSFUL" in err
    assert (row(proxy).status, row(proxy).cancel_requested) == ("SUCCESSFUL", False)


@pytest.mark.django_db
@pytest.mark.parametrize("missing", ["999999", "default:999999", "99999999999999999999"])
def test_cancel_of_an_unknown_id_is_an_error(missing):
    with pytest.raises(CommandError, match=rf"^Task run {re.escape(missing)} not found\.$"):
        manage("cancel", "--id", missing)


@pytest.mark.django_db
def test_cancel_of_a_non_numeric_id_names_it():
    with pytest.raises(CommandError, match=r"^--id 'abc' is not a task run id; give a number"):
        manage("cancel", "--id", "abc")


# --- worker --queue, config --mode all / --print ----------------------------------------------


@pytest.fixture
def cli_calls(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(
        reproq_command.Command, "_run_cli", lambda self, args, env: calls.append(args)
    )
    return calls


@pytest.mark.django_db
def test_worker_queue_is_the_deprecated_form_of_queues(cli_calls):
    _, err = manage("worker", "--queue", "high", "--burst")
    assert cli_calls == [["worker", "--queues", "high", "--burst"]]
    assert "warning: --queue is deprecated; use --queues" in err
    manage("worker", "--queue=high")
    # --queues wins when both are given, as reproq-django's `queues or queue`.
    manage("worker", "--queue", "high", "--queues", "default")
    assert cli_calls[1:] == [["worker", "--queues", "high"], ["worker", "--queues", "default"]]


@pytest.mark.django_db
def test_config_mode_all_prints_every_view_and_print_is_accepted(capfd):
    manage("config", "--mode", "all", "--print")
    out = capfd.readouterr().out
    assert out.count("Config file:") == 2
    assert "worker.concurrency" in out
    assert "metrics.port" in out or "metrics_port" in out
    assert "beat.interval" in out or "\ninterval" in out
    manage("config", "--print")
    assert capfd.readouterr().out.count("Config file:") == 1
    with pytest.raises(CommandError, match=r"^--mode all prints two views, --json one document"):
        manage("config", "--mode=all", "--json")


# --- allowlist --show-tasks / --write ----------------------------------------------------------


def test_allowlist_show_tasks_lists_the_task_paths():
    out, _ = manage("allowlist", "--show-tasks")
    lines = out.splitlines()
    assert "# tests.django.sampleapp.tasks.add" in lines
    assert lines[-1].startswith("ALLOWED_TASK_MODULES=")
    assert "# tests.django.sampleapp.tasks.add" not in manage("allowlist")[0]


@pytest.mark.parametrize("name", ["reproq.yaml", "reproq.toml"])
def test_allowlist_write_sets_the_config_files_allow_list(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REPROQ_CONFIG", raising=False)
    path = tmp_path / name
    if name.endswith(".toml"):
        path.write_text(
            'dsn = "postgres://u@h/db"\n[worker]\nconcurrency = 4\nqueues = ["a", "b"]\n'
            'allowed_task_modules = ["old."]\n[beat]\ninterval = "10s"\n'
        )
    else:
        path.write_text(
            yaml.safe_dump(
                {"worker": {"concurrency": 4, "allowed_task_modules": ["old."]}, "beat": {}}
            )
        )
    out, _ = manage("allowlist", "--write")
    assert out.startswith("Wrote worker.allowed_task_modules = ")
    expected, _ = reproq_command.discover_allowed_modules()
    if name.endswith(".toml"):
        data = tomllib.loads(path.read_text())
        assert data["dsn"] == "postgres://u@h/db"
        assert data["beat"] == {"interval": "10s"}
        assert data["worker"]["queues"] == ["a", "b"]
    else:
        data = yaml.safe_load(path.read_text())
    assert data["worker"]["concurrency"] == 4
    assert data["worker"]["allowed_task_modules"] == expected
    assert "tests.django.sampleapp.tasks." in expected
    # The file it wrote is one the CLI reads, with the new list.
    from reproq_cli.config import resolve

    config = resolve("worker", config_path=str(path), env={})
    assert config.values["worker.allowed_task_modules"].value == expected


def test_allowlist_write_needs_an_existing_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REPROQ_CONFIG", raising=False)
    with pytest.raises(CommandError, match=r"^allowlist --write needs an existing config file"):
        manage("allowlist", "--write")
    with pytest.raises(CommandError, match=r"missing\.yaml is not one; pass --config FILE"):
        manage("allowlist", "--write", "--config", str(tmp_path / "missing.yaml"))
    assert list(tmp_path.iterdir()) == []


def test_toml_text_round_trips():
    data = {
        "dsn": 'a "quoted" \\ value',
        "worker": {"n": 1, "x": 1.5, "on": True, "l": ["é", 2], "sub": {"k": "v"}},
        "odd key": {"inline": {"a": 1}},
    }
    assert tomllib.loads(reproq_command.toml_text(data)) == data


# --- bad numbers are one-line errors -----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--recent-limit", "-1"), r"^--recent-limit must be 0 or more, not -1$"),
        (("--stale-minutes", "-5"), r"^--stale-minutes must be 0 or more, not -5$"),
        (("--stale-minutes", "99999999999"), r"^--stale-minutes 99999999999 is out of range; "),
    ],
)
def test_health_refuses_numbers_it_cannot_use(args, message):
    with pytest.raises(CommandError, match=message):
        manage(*args, command="reproq_health")


@pytest.mark.django_db
@pytest.mark.parametrize("sleep", ["nan", "-1", "inf"])
def test_stress_test_refuses_a_sleep_no_task_can_do(sleep):
    with pytest.raises(CommandError, match=r"^--sleep must be a finite number >= 0 \(seconds\)"):
        manage("stress-test", "--count", "2", "--sleep", sleep)
    assert TaskRun.objects.count() == 0


# --- reclaim --action fail writes the worker's timestamp form ---------------------------------


@pytest.mark.django_db
def test_reclaim_fail_writes_a_utc_z_timestamp():
    proxy = tasks.add.enqueue(1, 2)
    old = timezone.now() - dt.timedelta(hours=1)
    TaskRun.objects.filter(result_id=int(proxy.id)).update(status="RUNNING", leased_until=old)
    manage("reclaim", "--action", "fail")
    at = row(proxy).errors_json[-1]["at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", at), at


# --- Task.using(run_after=timedelta) -----------------------------------------------------------


@pytest.mark.django_db
def test_task_using_a_timedelta_run_after_defers_the_task():
    before = timezone.now()
    deferred = tasks.add.using(run_after=dt.timedelta(hours=1))
    run = row(deferred.enqueue(1, 2))
    assert (
        before + dt.timedelta(minutes=59) < run.run_after < timezone.now() + dt.timedelta(hours=1)
    )


def test_task_using_other_run_after_values_is_an_invalid_task():
    with pytest.raises(InvalidTask, match=r"^run_after must be a datetime or timedelta, not str$"):
        tasks.add.using(run_after="tomorrow")
    with pytest.raises(InvalidTask, match=r"aware datetime"):
        tasks.add.using(run_after=dt.datetime(2030, 1, 1))  # naive
    # Django's other checks still apply to a task deferred by a timedelta.
    with pytest.raises(InvalidTask, match=r"Queue 'nope' is not valid"):
        tasks.add.using(run_after=dt.timedelta(hours=1), queue_name="nope")
