"""Mount with ``path("reproq/", include("reproq_django.urls"))``."""

from django.urls import path

from reproq_django import tui_auth, views

urlpatterns = [
    path("stats/", views.stats, name="stats"),
    path("stress-test/", views.stress_test, name="stress-test"),
    path("tui/pair/", tui_auth.pair, name="reproq-tui-pair"),
    path("tui/pair/<str:code>/", tui_auth.pair_status, name="reproq-tui-pair-status"),
    path("tui/config/", tui_auth.tui_config, name="reproq-tui-config"),
    path("tui/authorize/", tui_auth.authorize, name="reproq-tui-authorize"),
    path("tui/login/", tui_auth.TuiLoginView.as_view(), name="reproq-tui-login"),
    path("tui/metrics/", tui_auth.metrics_proxy, name="reproq-tui-metrics"),
    path("tui/healthz/", tui_auth.health_proxy, name="reproq-tui-health"),
    path("tui/events/", tui_auth.events_proxy, name="reproq-tui-events"),
]
