"""Mount with ``path("reproq/", include("reproq_django.urls"))``."""

from django.urls import path

from reproq_django import views

urlpatterns = [
    path("stats/", views.stats, name="stats"),
    path("stress-test/", views.stress_test, name="stress-test"),
]
