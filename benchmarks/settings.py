"""Django settings for the benchmarks: the harness, the worker's executor children and the
bare spawn-per-task baseline all use this module, so they set up the same Django.

The database comes from REPROQ_BENCH_DSN (a libpq DSN or URL), set by the harness.
"""

from __future__ import annotations

import os

from psycopg import conninfo

SECRET_KEY = "reproq-benchmarks-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "reproq_django"]

_params = conninfo.conninfo_to_dict(os.environ.get("REPROQ_BENCH_DSN", "dbname=postgres"))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params.get("dbname", "postgres"),
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
    }
}

TASKS = {
    # Defaults, as a user gets them (DEDUP_ACTIVE on: identical active specs coalesce).
    "default": {"BACKEND": "reproq_django.backend.ReproqBackend"},
    # The one-task INSERT as a prepared statement (off by default: PgBouncer < 1.21).
    "prepared": {
        "BACKEND": "reproq_django.backend.ReproqBackend",
        "OPTIONS": {"PREPARE_ENQUEUE": True},
    },
    # Every enqueue is a new task: no duplicate check before the insert.
    "nodedup": {
        "BACKEND": "reproq_django.backend.ReproqBackend",
        "OPTIONS": {"DEDUP_ACTIVE": False},
    },
}
