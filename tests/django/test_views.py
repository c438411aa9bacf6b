"""The stats/ and stress-test/ endpoints and their access rules."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from reproq_cli import tuitoken
from reproq_django.models import QueueControl, TaskRun, Worker
from tests.django.sampleapp import tasks

pytestmark = pytest.mark.django_db
SECRET = "s3cret-token"


@pytest.fixture(autouse=True)
def token(settings):
    settings.METRICS_AUTH_TOKEN = SECRET


def test_stats_needs_credentials(client):
    assert client.get("/reproq/stats/").status_code == 403
    assert client.get("/reproq/stats/", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/reproq/stats/", HTTP_AUTHORIZATION=f"Bearer {SECRET}").status_code == 200
    assert client.get("/reproq/stats/", HTTP_X_REPROQ_TOKEN=SECRET).status_code == 200
    jwt = tuitoken.issue(SECRET, subject="1", username="admin")
    assert client.get("/reproq/stats/", HTTP_AUTHORIZATION=f"Bearer {jwt}").status_code == 200
    forged = tuitoken.issue("other-secret", subject="1", username="admin")
    assert client.get("/reproq/stats/", HTTP_AUTHORIZATION=f"Bearer {forged}").status_code == 403
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get("/reproq/stats/").status_code == 200
    assert client.post("/reproq/stats/").status_code == 405


def test_stats_content(client):
    tasks.add.enqueue(1, 1)
    failed = tasks.explode.enqueue("x")
    TaskRun.objects.filter(result_id=int(failed.id)).update(status="FAILED")
    tasks.shout.enqueue("q")  # queue "high"
    Worker.objects.create(worker_id="live", queues=["default"])
    Worker.objects.create(worker_id="gone", last_seen_at=timezone.now() - dt.timedelta(hours=1))
    data = client.get("/reproq/stats/", HTTP_AUTHORIZATION=f"Bearer {SECRET}").json()
    assert data["tasks"] == {"READY": 2, "FAILED": 1}
    assert data["queues"] == {"default": {"READY": 1, "FAILED": 1}, "high": {"READY": 1}}
    assert data["worker_health"] == {"alive": 1, "dead": 1}
    assert data["top_failing"] == [
        {"task_path": "tests.django.sampleapp.tasks.explode", "count": 1}
    ]
    assert data["scheduler"]["mode"] == "beat"
    assert data["databases"]["default"]["workers"] == 2
    # The reproq-tui contract's keys (features.md §2): fetched_at, queue_controls[].updated_at.
    fetched = dt.datetime.fromisoformat(data["fetched_at"])
    assert abs((timezone.now() - fetched).total_seconds()) < 60
    QueueControl.objects.create(queue_name="mail", paused=True, reason="smtp")
    data = client.get("/reproq/stats/", HTTP_AUTHORIZATION=f"Bearer {SECRET}").json()
    (control,) = data["queue_controls"]
    assert set(control) == {
        "queue_name", "paused", "paused_at", "reason", "updated_at", "database"
    }  # fmt: skip
    assert control["updated_at"] is not None


def test_scheduler_disabled_by_low_memory(client, settings):
    settings.LOW_MEMORY_MODE = "1"
    data = client.get("/reproq/stats/", HTTP_AUTHORIZATION=f"Bearer {SECRET}").json()
    assert data["scheduler"]["mode"] == "disabled"
    assert "warning" in data["scheduler"]


def test_stress_test_endpoint_is_staff_only(client):
    assert client.post("/reproq/stress-test/", {"count": 3}).status_code == 403
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    response = client.post("/reproq/stress-test/", {"count": 3})
    assert response.json() == {"ok": True, "enqueued": 3}
    assert TaskRun.objects.count() == 3
    assert client.get("/reproq/stress-test/").status_code == 405


def test_tui_token_rules():
    now = time.time()
    good = tuitoken.issue(SECRET, subject="1", username="a")
    assert tuitoken.verify(good, SECRET)
    assert not tuitoken.verify(good, SECRET, now=now + 31 * 86400)  # expired
    assert not tuitoken.verify(good + "x", SECRET)
    assert not tuitoken.verify("a.b", SECRET)
    assert not tuitoken.verify(good, "")
