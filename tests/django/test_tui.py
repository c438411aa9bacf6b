"""reproq-tui pairing, config and the worker proxies (real HTTP to a stub on loopback)."""

from __future__ import annotations

import http.server
import threading
from typing import ClassVar

import pytest
from django.contrib.auth.models import User

from reproq_cli import tuitoken

pytestmark = pytest.mark.django_db
SECRET = "tui-secret"


@pytest.fixture
def token(settings):
    settings.METRICS_AUTH_TOKEN = SECRET
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def test_everything_is_404_without_a_token(client, settings):
    settings.METRICS_AUTH_TOKEN = ""
    for url in ("/reproq/tui/pair/", "/reproq/tui/config/", "/reproq/tui/pair/abcd1234/"):
        response = client.get(url)
        assert response.status_code == 404
        assert response.json() == {"error": "tui auth disabled"}


def test_pairing_flow(client, token):
    paired = client.post("/reproq/tui/pair/").json()
    code = paired["code"]
    assert len(code) == 8
    assert paired["verify_url"].endswith(f"/reproq/tui/authorize/?code={code}")
    assert paired["worker_metrics_url"].endswith("/reproq/tui/metrics/")
    assert client.get(f"/reproq/tui/pair/{code}/").json() == {"status": "pending"}
    assert client.get("/reproq/tui/pair/00000000/").status_code == 404

    # not signed in: redirected to the TUI login page
    response = client.get(f"/reproq/tui/authorize/?code={code}")
    assert response.status_code == 302
    assert "/reproq/tui/login/" in response["Location"]
    # staff but not superuser: refused
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    assert client.get(f"/reproq/tui/authorize/?code={code}").status_code == 403
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    page = client.get(f"/reproq/tui/authorize/?code={code}")
    assert code.encode() in page.content
    assert b"Approve</button>" in page.content
    approved = client.post("/reproq/tui/authorize/", {"code": code})
    assert b"Approved." in approved.content
    # Approving again issues no second token.
    assert b"Approved." in client.post("/reproq/tui/authorize/", {"code": code}).content
    status = client.get(f"/reproq/tui/pair/{code}/").json()
    assert status["status"] == "approved"
    assert tuitoken.verify(status["token"], SECRET)
    # The token is picked up once; whoever polls next finds the code expired.
    assert client.get(f"/reproq/tui/pair/{code}/").status_code == 404
    assert client.get("/reproq/tui/pair/" + "a" * 5000 + "/").status_code == 404
    # the token opens stats/
    client.logout()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {status['token']}"}
    assert client.get("/reproq/stats/", **headers).status_code == 200


def test_config_with_public_worker_urls(client, token, settings):
    settings.REPROQ_TUI_WORKER_URL = "https://worker.example:9090"
    data = client.get("/reproq/tui/config/").json()
    assert data["worker_metrics_url"] == "https://worker.example:9090/metrics"
    assert data["events_url"] == "https://worker.example:9090/events"
    settings.LOW_MEMORY_MODE = "true"
    data = client.get("/reproq/tui/config/").json()
    assert "events_url" not in data
    assert data["low_memory_mode"] is True


class _Worker(http.server.BaseHTTPRequestHandler):
    seen_auth: ClassVar[list[str]] = []
    seen_paths: ClassVar[list[str]] = []

    def do_GET(self):
        _Worker.seen_auth.append(self.headers.get("Authorization", ""))
        _Worker.seen_paths.append(self.path)
        if self.path.startswith("/metrics"):
            body, status, kind = b"reproq_workers 1\n", 200, "text/plain"
        elif self.path.startswith("/healthz"):
            body, status, kind = b'{"status":"unhealthy"}', 503, "application/json"
        else:
            body, status, kind = b"data: {}\n\n", 200, "text/event-stream"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_worker(settings):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.REPROQ_TUI_WORKER_INTERNAL_URL = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()


def test_proxies(client, token, stub_worker, settings):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {SECRET}"}
    assert client.get("/reproq/tui/metrics/").status_code == 403
    metrics = client.get("/reproq/tui/metrics/", **headers)
    assert (metrics.status_code, metrics.content) == (200, b"reproq_workers 1\n")
    assert _Worker.seen_auth[-1] == f"Bearer {SECRET}"
    health = client.get("/reproq/tui/healthz/", **headers)
    assert health.status_code == 503  # the worker's answer is passed on
    events = client.get("/reproq/tui/events/?queue=default", **headers)
    assert b"".join(events.streaming_content) == b"data: {}\n\n"
    assert events["Cache-Control"] == "no-cache"
    # Raw bytes that are not printable ASCII in the query (a 500 from urllib) pass through
    # percent-encoded.
    odd = client.get("/reproq/tui/healthz/", QUERY_STRING="a=\xff&x=\x01 y", **headers)
    assert odd.status_code == 503
    assert _Worker.seen_paths[-1] == "/healthz?a=%FF&x=%01%20y"
    settings.LOW_MEMORY_MODE = "1"
    assert client.get("/reproq/tui/metrics/", **headers).status_code == 503


def test_proxy_errors(client, token, settings):
    settings.REPROQ_TUI_WORKER_INTERNAL_URL = "http://127.0.0.1:1"
    response = client.get("/reproq/tui/metrics/", HTTP_AUTHORIZATION=f"Bearer {SECRET}")
    assert (response.status_code, response.json()) == (502, {"error": "metrics proxy failed"})
