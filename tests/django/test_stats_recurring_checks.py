"""stats/ and the worker proxies check who asks before the method, stats/ reports the `cron`
scheduler mode as its own, and `@recurring` refuses a priority or max_attempts that enqueue
would refuse (reproq-django.md §4, §6)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY

from reproq_django import recurring as recurring_module
from reproq_django.backend import INT_MAX
from reproq_django.recurring import recurring
from tests.django.test_http_fixes import (
    BEARER,
    cron_server,  # noqa: F401 - a fixture, found by pytest under this name
    scheduler,
    stats_scheduler,
    token,  # noqa: F401 - autouse: METRICS_AUTH_TOKEN for BEARER
)
from tests.django.test_recurring_fixes import one_line_error
from tests.support.pg_cron_server import PgCronServer

pytestmark = pytest.mark.django_db

OTHER_METHODS = ("post", "put", "patch", "delete")
PROXIES = ("/reproq/tui/metrics/", "/reproq/tui/healthz/", "/reproq/tui/events/")


def assert_unauthorized(response: Any) -> None:
    assert (response.status_code, response.json()) == (403, {"error": "Unauthorized"})
    assert "Allow" not in response


def assert_get_only(response: Any, name: str) -> None:
    assert (response.status_code, response["Allow"]) == (405, "GET")
    assert response.json()["error"].startswith(f"{name} takes GET, not ")


# --- stats/ and the proxies: who asks first, then the method -----------------------------------


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_stats_refuses_an_unauthorized_caller_whatever_the_method(client: Any, method: str) -> None:
    """A 405 before the credentials told anyone that stats/ exists and takes GET."""
    assert_unauthorized(getattr(client, method)("/reproq/stats/"))
    wrong = {"HTTP_AUTHORIZATION": "Bearer wrong"}
    assert_unauthorized(getattr(client, method)("/reproq/stats/", **wrong))
    client.force_login(User.objects.create_user("plain", password="pw"))  # not staff
    assert_unauthorized(getattr(client, method)("/reproq/stats/"))


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_stats_answers_405_only_to_an_authorized_caller(client: Any, method: str) -> None:
    assert_get_only(getattr(client, method)("/reproq/stats/", **BEARER), "stats/")
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    assert_get_only(getattr(client, method)("/reproq/stats/"), "stats/")
    assert client.get("/reproq/stats/").status_code == 200


@pytest.mark.parametrize("url", PROXIES)
def test_the_worker_proxies_check_the_caller_before_the_method(client: Any, url: str) -> None:
    """The proxies take stats/'s auth (reproq-django.md §6), so the same order."""
    for method in OTHER_METHODS:
        assert_unauthorized(getattr(client, method)(url))
        name = url.removeprefix("/reproq/")
        assert_get_only(getattr(client, method)(url, **BEARER), name)


def test_events_disabled_is_told_only_to_an_authorized_caller(client: Any, settings: Any) -> None:
    settings.REPROQ_TUI_DISABLE_EVENTS = "1"
    assert_unauthorized(client.get("/reproq/tui/events/"))
    response = client.get("/reproq/tui/events/", **BEARER)
    assert (response.status_code, response.json()) == (404, {"error": "events disabled"})


# --- the cron scheduler mode ------------------------------------------------------------------


def test_cron_scheduler_mode_is_reported_as_cron(client: Any, settings: Any) -> None:
    """REPROQ_SCHEDULER_MODE=cron (a timer runs `reproq schedule`, as `systemd --schedule`
    sets up) schedules the periodic tasks: not `disabled`, and no warning that nothing does."""
    settings.REPROQ_SCHEDULER_MODE = "cron"
    assert scheduler(client) == {
        "mode": "cron",
        "low_memory": False,
        "beat_enabled": False,
        "beat_configured": False,
        "pg_cron_available": False,
    }
    # A one-shot run keeps no process resident: low-memory mode does not turn it off.
    settings.LOW_MEMORY_MODE = "1"
    status = scheduler(client)
    assert (status["mode"], status["low_memory"]) == ("cron", True)
    assert "warning" not in status


def test_cron_mode_wins_over_a_server_that_merely_lists_pg_cron(
    cron_server: PgCronServer,  # noqa: F811 - the fixture imported above
) -> None:
    """pg_cron in pg_available_extensions says nothing about who schedules: with
    REPROQ_SCHEDULER_MODE=cron, stats/ used to report pg_cron."""
    status = stats_scheduler(cron_server, REPROQ_SCHEDULER_MODE="cron")
    assert (status["mode"], status["pg_cron_available"]) == ("cron", True)


# --- @recurring priority and max_attempts -------------------------------------------------------


@pytest.mark.parametrize(
    ("refused", "nearest", "parts"),
    [
        (
            {"priority": TASK_MAX_PRIORITY + 1},
            {"priority": 100},
            ("priority 101", "use -100 to 100"),
        ),
        ({"priority": TASK_MIN_PRIORITY - 1}, {"priority": -100}, ("priority -101", "-100 to 100")),
        ({"priority": 2**31}, {"priority": 100}, ("priority 2147483648", "use -100 to 100")),
        ({"max_attempts": 0}, {"max_attempts": 1}, ("max_attempts 0", f"use 1 to {INT_MAX}")),
        ({"max_attempts": -3}, {"max_attempts": 1}, ("max_attempts -3", f"use 1 to {INT_MAX}")),
        (
            {"max_attempts": INT_MAX + 1},
            {"max_attempts": INT_MAX},
            (f"max_attempts {INT_MAX + 1}", f"use 1 to {INT_MAX}"),
        ),
    ],
)
def test_an_out_of_range_priority_or_max_attempts_fails_at_decoration(
    refused: dict[str, int], nearest: dict[str, int], parts: tuple[str, ...]
) -> None:
    """The ranges enqueue holds them to; before, a bad value failed only at sync (the
    database refused it, in every `migrate`'s post_migrate) or was carried into each run.
    The nearest value inside the range is accepted: the limits are enqueue's, not tighter."""
    with pytest.raises(ValueError) as excinfo:
        recurring(schedule="0 3 * * *", key="check-range", **refused)
    one_line_error(excinfo, "@recurring key 'check-range'", "out of range", *parts)
    assert "check-range" not in recurring_module._registry
    recurring(schedule="0 3 * * *", key="check-range", **nearest)  # not applied: not registered


@pytest.mark.parametrize(
    ("arguments", "parts"),
    [
        ({"priority": "5"}, ("priority must be a whole number from -100 to 100", "got str '5'")),
        ({"priority": 1.5}, ("priority must be a whole number", "got float 1.5")),
        ({"max_attempts": True}, ("max_attempts must be a whole number from 1", "got bool")),
        ({"max_attempts": None}, ("max_attempts must be a whole number", "got NoneType")),
    ],
)
def test_a_priority_or_max_attempts_that_is_not_a_whole_number_is_refused(
    arguments: dict[str, Any], parts: tuple[str, ...]
) -> None:
    with pytest.raises(TypeError) as excinfo:
        recurring(schedule="0 3 * * *", key="check-type", **arguments)
    one_line_error(excinfo, "@recurring key 'check-type'", *parts)
