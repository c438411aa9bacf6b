"""Spec texts the tests compare against: the Go beat's byte format with test defaults."""

from __future__ import annotations

import datetime as dt
from typing import Any

from reproq_cli.spec import periodic_spec_json

PERIODIC_DEFAULTS: dict[str, Any] = {
    "task_path": "t.x",
    "args_json": "[]",
    "kwargs_json": "{}",
    "queue_name": "default",
    "priority": 0,
    "concurrency_key": None,
    "concurrency_limit": 0,
    "periodic_name": "n",
    "scheduled_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    "max_attempts": 3,
}


def periodic_spec(**fields: Any) -> str:
    """periodic_spec_json with PERIODIC_DEFAULTS for what ``fields`` leaves out."""
    return periodic_spec_json(**{**PERIODIC_DEFAULTS, **fields})
