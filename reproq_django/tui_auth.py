"""Pairing reproq-tui with this Django site, and proxying it to the worker (reproq-django.md §6).

A terminal asks ``tui/pair/`` for a code, a superuser approves it at ``tui/authorize/``, and the
terminal collects an HS256 token from ``tui/pair/<code>/``. The token (signed with
METRICS_AUTH_TOKEN) is accepted by ``stats/``, the proxies below, and the worker itself.
Everything here answers 404 while METRICS_AUTH_TOKEN is unset.
"""

from __future__ import annotations

import http.client
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from reproq_cli.config import is_truthy
from reproq_cli.tuitoken import expires_at, issue
from reproq_django.views import _setting, authorized_get

PAIR_TTL = 600
TOKEN_PICKUP_TTL = 300
CACHE_PREFIX = "reproq_tui_pair:"
PROXY_TIMEOUT = 10.0


def _secret() -> str:
    return _setting("METRICS_AUTH_TOKEN")


def _disabled() -> JsonResponse:
    return JsonResponse({"error": "tui auth disabled"}, status=404)


def low_memory() -> bool:
    return is_truthy(_setting("LOW_MEMORY_MODE"))


def events_enabled() -> bool:
    return not low_memory() and not is_truthy(_setting("REPROQ_TUI_DISABLE_EVENTS"))


# Where each endpoint sits under the worker's base URL (go-worker.md §8).
WORKER_PATHS = {
    "worker_metrics_url": "/metrics",
    "worker_health_url": "/healthz",
    "events_url": "/events",
}


def public_worker_urls() -> dict[str, str]:
    """The public worker URLs the site sets, each one missing derived from the others
    (reproq-django.md §6); events only if enabled.

    The base comes from REPROQ_TUI_WORKER_URL, else from whichever endpoint URL ends in its
    usual path. A URL that cannot be derived is left out: reproq-tui takes "" as a URL."""
    urls = {
        "worker_url": _setting("REPROQ_TUI_WORKER_URL").strip().rstrip("/"),
        "worker_metrics_url": _setting("REPROQ_TUI_WORKER_METRICS_URL").strip(),
        "worker_health_url": _setting("REPROQ_TUI_WORKER_HEALTH_URL").strip(),
        "events_url": _setting("REPROQ_TUI_EVENTS_URL").strip(),
    }
    if not urls["worker_url"]:
        for key, suffix in WORKER_PATHS.items():
            url = urls[key].rstrip("/")
            if url.endswith(suffix) and url[: -len(suffix)]:
                urls["worker_url"] = url[: -len(suffix)]
                break
    if urls["worker_url"]:
        for key, suffix in WORKER_PATHS.items():
            urls[key] = urls[key] or urls["worker_url"] + suffix
    if not events_enabled():
        urls["events_url"] = ""
    return {key: url for key, url in urls.items() if url}


def config_payload(request: HttpRequest) -> dict[str, Any]:
    payload: dict[str, Any] = dict(public_worker_urls())
    if not payload:
        payload = {
            "worker_metrics_url": request.build_absolute_uri(reverse("reproq-tui-metrics")),
            "worker_health_url": request.build_absolute_uri(reverse("reproq-tui-health")),
        }
        if events_enabled():
            payload["events_url"] = request.build_absolute_uri(reverse("reproq-tui-events"))
    payload["stats_url"] = request.build_absolute_uri(reverse("stats"))
    if low_memory():
        payload["low_memory_mode"] = True
    return payload


PAIR_CODE = re.compile(r"[0-9a-f]{8}")  # what pair() makes: secrets.token_hex(4)


@csrf_exempt
@require_http_methods(["GET", "POST"])
def pair(request: HttpRequest) -> JsonResponse:
    if not _secret():
        return _disabled()
    code = secrets.token_hex(4)
    # Unix seconds, as reproq-django sends it: reproq-tui decodes expires_at into an int64.
    expires = int(time.time()) + PAIR_TTL
    cache.set(CACHE_PREFIX + code, {"status": "pending"}, PAIR_TTL)
    verify_url = request.build_absolute_uri(reverse("reproq-tui-authorize")) + f"?code={code}"
    return JsonResponse(
        {"code": code, "verify_url": verify_url, "expires_at": expires, **config_payload(request)}
    )


@require_GET
def pair_status(request: HttpRequest, code: str) -> JsonResponse:
    if not _secret():
        return _disabled()
    state = cache.get(CACHE_PREFIX + code) if PAIR_CODE.fullmatch(code) else None
    if state is None:
        return JsonResponse({"status": "expired"}, status=404)
    if state.get("status") == "approved":
        # The token is handed out once: whoever polls the code next finds it expired.
        cache.delete(CACHE_PREFIX + code)
    return JsonResponse(state)


@require_GET
def tui_config(request: HttpRequest) -> JsonResponse:
    if not _secret():
        return _disabled()
    return JsonResponse(config_payload(request))


class TuiLoginView(LoginView):
    template_name = "reproq_tui/login.html"


def _authorize(request: HttpRequest) -> HttpResponse:
    if not request.user.is_superuser:
        return JsonResponse({"error": "superuser required"}, status=403)
    code = request.GET.get("code") or request.POST.get("code") or ""
    key = CACHE_PREFIX + code
    state = cache.get(key) if PAIR_CODE.fullmatch(code) else None
    if state is None:
        return render(request, "reproq_tui/authorize.html", {"status": "expired", "code": code})
    if state.get("status") == "approved":
        # One token per code: approving again would issue a second 30-day token.
        return render(request, "reproq_tui/authorize.html", {"status": "approved", "code": code})
    if request.method == "POST":
        token = issue(_secret(), subject=str(request.user.pk), username=request.user.get_username())
        state = {"status": "approved", "token": token, "expires_at": expires_at(token)}
        cache.set(key, state, TOKEN_PICKUP_TTL)
        return render(request, "reproq_tui/authorize.html", {"status": "approved", "code": code})
    return render(request, "reproq_tui/authorize.html", {"status": "pending", "code": code})


def authorize(request: HttpRequest) -> HttpResponse:
    if not _secret():
        return _disabled()
    return login_required(login_url="reproq-tui-login")(_authorize)(request)


# --- proxies to the worker's HTTP server ---------------------------------------------------------


def worker_address() -> tuple[str, str]:
    """The setting the worker's address comes from (an error names it) and its base URL:
    scheme added, a bare ``:port`` on 127.0.0.1, as reproq-django normalises every source."""
    setting = "REPROQ_TUI_WORKER_INTERNAL_URL"
    addr = _setting(setting).strip()
    if not addr:
        setting = "METRICS_ADDR"
        addr = _setting(setting).strip()
    if not addr:
        port = _setting("METRICS_PORT").strip()
        if port:
            setting, addr = "METRICS_PORT", f"127.0.0.1:{port}"
        else:
            addr = "127.0.0.1:9090"
    if addr.startswith(":"):
        addr = "127.0.0.1" + addr
    if "://" not in addr:
        addr = "http://" + addr
    return setting, addr.rstrip("/")


def _proxy(request: HttpRequest, kind: str, path: str, *, stream: bool = False) -> HttpResponse:
    """The caller is already authorized (``authorized_get`` on each proxy view)."""
    if low_memory():
        return JsonResponse(
            {"error": f"{kind} unavailable in low memory mode", "hint": "unset LOW_MEMORY_MODE"},
            status=503,
        )
    setting, base = worker_address()
    url = base + path
    if request.META.get("QUERY_STRING"):
        # WSGI gives the raw bytes as latin-1 text; sent on as they are, a byte that is not
        # ASCII or printable made urllib raise (a 500). Percent-encoded, they pass through.
        raw = request.META["QUERY_STRING"].encode("latin-1", "replace")
        url += "?" + urllib.parse.quote(raw, safe="=&+%;,/:@!$'()*~-._")
    secret = _secret()
    header = f"Bearer {secret}" if secret else request.headers.get("Authorization", "")
    try:
        upstream = urllib.request.Request(url, headers={"Authorization": header} if header else {})
        response = urllib.request.urlopen(upstream, timeout=30 if stream else PROXY_TIMEOUT)
    except urllib.error.HTTPError as exc:
        return HttpResponse(
            exc.read(), status=exc.code, content_type=exc.headers.get_content_type()
        )
    except TimeoutError:
        return JsonResponse({"error": f"{kind} proxy timeout"}, status=504)
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(getattr(exc, "reason", None), TimeoutError):
            return JsonResponse({"error": f"{kind} proxy timeout"}, status=504)
        return JsonResponse({"error": f"{kind} proxy failed"}, status=502)
    except (http.client.InvalidURL, ValueError) as exc:
        # The address does not parse as a URL (a bad port, a space, a broken IPv6 literal):
        # the worker was never asked, and the fix is in a setting.
        form = "a port number" if setting == "METRICS_PORT" else "host:port or http://host:port"
        return JsonResponse(
            {
                "error": f"{kind} proxy failed: {setting} gives {base!r}, not a worker URL ({exc})",
                "hint": f"set {setting} to {form}",
            },
            status=502,
        )
    if stream:

        def chunks() -> Iterator[bytes]:
            with response:
                while chunk := response.read1(8192):
                    yield chunk

        streamed = StreamingHttpResponse(chunks(), content_type="text/event-stream")
        streamed["Cache-Control"] = "no-cache"
        streamed["X-Accel-Buffering"] = "no"
        return streamed
    with response:
        body = response.read()
        content_type = response.headers.get("Content-Type", "text/plain")
    return HttpResponse(body, status=response.status, content_type=content_type)


# Who asks is checked before the method and before events-disabled: an anonymous caller gets
# 403 and learns nothing of the endpoint or the site's settings.


@authorized_get("tui/metrics/")
def metrics_proxy(request: HttpRequest) -> HttpResponse:
    return _proxy(request, "metrics", "/metrics")


@authorized_get("tui/healthz/")
def health_proxy(request: HttpRequest) -> HttpResponse:
    return _proxy(request, "health", "/healthz")


@authorized_get("tui/events/")
def events_proxy(request: HttpRequest) -> HttpResponse:
    if not events_enabled() and not low_memory():
        return JsonResponse({"error": "events disabled"}, status=404)
    return _proxy(request, "events", "/events", stream=True)
