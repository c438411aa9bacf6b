"""Pure items of the Go worker's test inventory (go-worker.md §11) not pinned elsewhere."""

from __future__ import annotations

import itertools

import pytest

from reproq_cli.core.events import Event, EventFilter
from reproq_cli.models import TaskStatus


def test_task_status_values_are_the_schema_words():
    # TestTaskStatusValues: the text the status column holds, shared with reproq-django.
    assert [s.value for s in TaskStatus] == ["READY", "RUNNING", "WAITING", "SUCCESSFUL", "FAILED"]


EVENT = Event(level="info", type="task_started", msg="m", queue="q", worker_id="w", task_id=7)
RIGHT = {"queue": "q", "worker_id": "w", "task_id": 7}
WRONG = {"queue": "other", "worker_id": "w2", "task_id": 8}


@pytest.mark.parametrize("fields", [c for n in range(4) for c in itertools.combinations(RIGHT, n)])
def test_an_event_filter_matches_only_when_every_given_field_matches(fields):
    # TestEventFilterMatches: every subset of fields, each either right or wrong.
    for wrong in (c for n in range(len(fields) + 1) for c in itertools.combinations(fields, n)):
        given = {f: (WRONG if f in wrong else RIGHT)[f] for f in fields}
        assert EventFilter(**given).matches(EVENT) is (not wrong), given


def test_an_empty_database_url_loads_and_leaves_the_dsn_empty(tmp_path):
    # TestLoadAllowsEmptyDatabaseURL: no DSN is not a load error (the worker decides later).
    from reproq_cli.config import resolve

    config = resolve("worker", env={"DATABASE_URL": ""}, cwd=tmp_path)
    assert config.get("dsn") == ""
    assert config.values["dsn"].source == "default"
