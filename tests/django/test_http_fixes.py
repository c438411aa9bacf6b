"""QA findings on the HTTP endpoints (reproq-django.md §6): TUI pairing sends expires_at as
Unix seconds (F2), stats/ reports pg_cron from the server (F7), tui/config/ derives the worker
URLs from whichever is set (F8), stress-test/ and the proxies answer bad requests and bad
settings with JSON (F12)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connection
from psycopg import sql as pgsql

from reproq_cli.db import schema
from reproq_cli.db.connect import connection as reproq_connection
from reproq_django.models import TaskRun
from tests.conftest import REPO_ROOT
from tests.support.pg_cron_server import PgCronServer, find_pg_cron_install, pg_cron_server

pytestmark = pytest.mark.django_db
SECRET = "http-fixes-secret"
BEARER = {"HTTP_AUTHORIZATION": f"Bearer {SECRET}"}


@pytest.fixture(autouse=True)
def token(settings: Any) -> None:
    settings.METRICS_AUTH_TOKEN = SECRET
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --- F2: expires_at is integer Unix seconds ---------------------------------------------------


def test_pairing_sends_expires_at_as_unix_seconds(client: Any) -> None:
    """reproq-tui decodes both expires_at fields into an int64: an ISO string fails pairing."""
    before = int(time.time())
    paired = client.post("/reproq/tui/pair/").json()
    assert type(paired["expires_at"]) is int
    assert before + 600 <= paired["expires_at"] <= int(time.time()) + 600
    code = paired["code"]
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    # The approve page still renders: it never showed expires_at.
    assert b"Approved." in client.post("/reproq/tui/authorize/", {"code": code}).content
    status = client.get(f"/reproq/tui/pair/{code}/").json()
    assert status["status"] == "approved"
    assert type(status["expires_at"]) is int
    assert status["expires_at"] == claims(status["token"])["exp"]
    assert abs(status["expires_at"] - (time.time() + 30 * 86400)) < 60


# --- F7: the stats/ scheduler block -----------------------------------------------------------


def scheduler(client: Any) -> dict[str, Any]:
    response = client.get("/reproq/stats/", **BEARER)
    assert response.status_code == 200, response.content
    return response.json()["scheduler"]


def test_a_scheduler_mode_without_pg_cron_is_reported_disabled(client: Any, settings: Any) -> None:
    """The embedded server has no pg_cron: asking for it schedules nothing, and says so."""
    settings.REPROQ_SCHEDULER_MODE = "pg_cron"
    status = scheduler(client)
    assert status["mode"] == "disabled"
    assert (status["beat_configured"], status["beat_enabled"]) == (False, False)
    assert status["pg_cron_available"] is False
    assert "REPROQ_SCHEDULER_MODE is 'pg_cron'" in status["warning"]
    settings.REPROQ_SCHEDULER_MODE = ""
    settings.REPROQ_BEAT_CMD = "off"
    status = scheduler(client)
    assert status["mode"] == "disabled"
    assert "REPROQ_BEAT_CMD is 'off'" in status["warning"]
    settings.REPROQ_BEAT_CMD = "reproq beat"
    assert scheduler(client) == {
        "mode": "beat",
        "low_memory": False,
        "beat_enabled": True,
        "beat_configured": True,
        "pg_cron_available": False,
    }


def test_a_role_refused_the_extension_catalog_gets_false_and_a_usable_transaction(
    client: Any, settings: Any
) -> None:
    """pg_available_extensions refused (a locked-down role): pg_cron counts as unavailable,
    stats/ still answers, and the request's transaction is not left aborted."""
    settings.REPROQ_SCHEDULER_MODE = "pg_cron"  # "cron" has a mode of its own
    role = f"rq_stats_{uuid.uuid4().hex[:8]}"
    # All of it in the test's transaction: rolled back, role included, when the test ends.
    with connection.cursor() as cursor:
        cursor.execute(pgsql.SQL("CREATE ROLE {} NOLOGIN").format(pgsql.Identifier(role)))
        cursor.execute(
            pgsql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                pgsql.Identifier(role)
            )
        )
        cursor.execute("REVOKE SELECT ON pg_catalog.pg_available_extensions FROM PUBLIC")
        cursor.execute(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(role)))
    try:
        status = scheduler(client)
        assert TaskRun.objects.count() == 0  # raises if the refused query aborted the transaction
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")
    assert status["mode"] == "disabled"
    assert status["pg_cron_available"] is False
    assert "REPROQ_SCHEDULER_MODE is 'pg_cron'" in status["warning"]


STATS_SCRIPT = """
import json, django
django.setup()
from django.db import transaction
from django.test import Client
from reproq_django.models import TaskRun
with transaction.atomic():
    response = Client().get("/reproq/stats/", HTTP_AUTHORIZATION="Bearer s3")
    TaskRun.objects.count()  # raises if stats/ left the transaction aborted
assert response.status_code == 200, response.content
print(json.dumps(response.json()["scheduler"]))
"""
READER = "rq_stats_reader"


@pytest.fixture(scope="module")
def cron_server() -> Iterator[PgCronServer]:
    """A system PostgreSQL with the pg_cron package (preloading is not needed to list it),
    the reproq schema, and a role refused pg_available_extensions."""
    install = find_pg_cron_install()
    if install is None:
        pytest.skip("pg_cron is not installed for any local PostgreSQL server")
    with pg_cron_server(install, "reproq_stats", preload=False) as server:
        with reproq_connection(server.dsn()) as conn:
            schema.apply(conn)
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {READER} LOGIN")
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER}")
            conn.execute("REVOKE SELECT ON pg_catalog.pg_available_extensions FROM PUBLIC")
        yield server


def stats_scheduler(server: PgCronServer, *, user: str = "postgres", **env: str) -> dict[str, Any]:
    """stats/'s scheduler block from a Django whose default database is on `server`."""
    done = subprocess.run(
        [sys.executable, "-c", STATS_SCRIPT],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.django.settings",
            "PYTHONPATH": str(REPO_ROOT),
            "REPROQ_TEST_DJANGO_DSN": server.dsn().replace("user=postgres", f"user={user}"),
            "METRICS_AUTH_TOKEN": "s3",
            **env,
        },
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_pg_cron_on_the_server_is_reported_and_schedules_when_beat_is_off(
    cron_server: PgCronServer,
) -> None:
    assert stats_scheduler(cron_server) == {
        "mode": "beat",
        "low_memory": False,
        "beat_enabled": True,
        "beat_configured": True,
        "pg_cron_available": True,
    }
    assert stats_scheduler(cron_server, LOW_MEMORY_MODE="1") == {
        "mode": "pg_cron",
        "low_memory": True,
        "beat_enabled": False,
        "beat_configured": True,
        "pg_cron_available": True,
    }
    refused = stats_scheduler(cron_server, user=READER, LOW_MEMORY_MODE="1")
    assert (refused["mode"], refused["pg_cron_available"]) == ("disabled", False)
    assert "LOW_MEMORY_MODE is on" in refused["warning"]


# --- F8: worker URLs derived from whichever is set --------------------------------------------


def test_config_derives_worker_urls_from_a_metrics_url(client: Any, settings: Any) -> None:
    settings.REPROQ_TUI_WORKER_METRICS_URL = "https://w.example.com/metrics/"
    expected = {
        "worker_url": "https://w.example.com",
        "worker_metrics_url": "https://w.example.com/metrics/",
        "worker_health_url": "https://w.example.com/healthz",
        "events_url": "https://w.example.com/events",
    }
    data = client.get("/reproq/tui/config/").json()
    assert {key: data.get(key) for key in expected} == expected
    paired = client.post("/reproq/tui/pair/").json()
    assert {key: paired.get(key) for key in expected} == expected


def test_config_derives_worker_urls_from_an_events_or_health_url(
    client: Any, settings: Any
) -> None:
    settings.REPROQ_TUI_EVENTS_URL = "https://w.example.com/events"
    data = client.get("/reproq/tui/config/").json()
    assert data["worker_url"] == "https://w.example.com"
    assert data["worker_metrics_url"] == "https://w.example.com/metrics"
    assert data["worker_health_url"] == "https://w.example.com/healthz"
    settings.REPROQ_TUI_EVENTS_URL = ""
    settings.REPROQ_TUI_WORKER_HEALTH_URL = "https://h.example.com/healthz"
    settings.REPROQ_TUI_DISABLE_EVENTS = "1"
    data = client.get("/reproq/tui/config/").json()
    assert data["worker_metrics_url"] == "https://h.example.com/metrics"
    assert "events_url" not in data  # events only if enabled


def test_config_omits_urls_it_cannot_derive(client: Any, settings: Any) -> None:
    """A URL with no usual path gives no base to derive from: the other keys are left out,
    not sent as "" (reproq-tui would use "" as the URL)."""
    settings.REPROQ_TUI_WORKER_HEALTH_URL = "https://h.example.com/custom-health"
    data = client.get("/reproq/tui/config/").json()
    assert data["worker_health_url"] == "https://h.example.com/custom-health"
    assert "" not in data.values()
    assert not {"worker_url", "worker_metrics_url", "events_url"} & set(data)


# --- F12: stress-test/ and the proxies --------------------------------------------------------


def test_stress_test_refuses_everyone_but_staff_whatever_the_method(client: Any) -> None:
    for method in ("get", "put", "delete"):
        response = getattr(client, method)("/reproq/stress-test/")
        assert (response.status_code, response.json()) == (403, {"error": "Unauthorized"})
    client.force_login(User.objects.create_user("plain", password="pw"))
    assert client.get("/reproq/stress-test/").status_code == 403
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    response = client.get("/reproq/stress-test/")
    assert (response.status_code, response["Allow"]) == (405, "POST")
    assert "POST" in response.json()["error"]


def test_stress_test_count_is_honoured_or_refused_never_changed(client: Any) -> None:
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    response = client.post("/reproq/stress-test/", {"count": 0})
    assert response.json() == {"ok": True, "enqueued": 0}
    assert TaskRun.objects.count() == 0
    for bad in ("-5", "abc", "10001"):
        response = client.post("/reproq/stress-test/", {"count": bad})
        assert response.status_code == 400
        error = response.json()["error"]
        assert "count" in error and repr(bad) in error and "\n" not in error
    assert TaskRun.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("METRICS_ADDR", "not a host:xx"),
        ("METRICS_ADDR", "[::1:9090"),
        ("REPROQ_TUI_WORKER_INTERNAL_URL", "http://127.0.0.1:port"),
        ("METRICS_PORT", "abc"),
    ],
)
def test_a_malformed_worker_address_is_a_502_naming_the_setting(
    client: Any, settings: Any, name: str, value: str
) -> None:
    setattr(settings, name, value)
    for path, kind in (("metrics", "metrics"), ("healthz", "health"), ("events", "events")):
        response = client.get(f"/reproq/tui/{path}/", **BEARER)
        assert response.status_code == 502
        body = response.json()
        assert body["error"].startswith(f"{kind} proxy failed: {name} ")
        assert name in body["hint"]


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"reproq_workers 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def worker_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_an_internal_url_without_a_scheme_gets_one(
    client: Any, settings: Any, worker_port: int
) -> None:
    """Normalised like METRICS_ADDR (reproq-django.md §6); urllib read "127.0.0.1" as the
    scheme and never reached the worker."""
    for value in (f"127.0.0.1:{worker_port}", f":{worker_port}/"):
        settings.REPROQ_TUI_WORKER_INTERNAL_URL = value
        response = client.get("/reproq/tui/metrics/", **BEARER)
        assert (response.status_code, response.content) == (200, b"reproq_workers 1\n")
