"""Django settings for the test suite and for executor children started by test workers.

The database comes from REPROQ_TEST_DJANGO_DSN (a libpq DSN); without it, SQLite in memory.
"""

from __future__ import annotations

import os

from psycopg import conninfo

SECRET_KEY = "reproq-tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "reproq_django",
    "tests.django.sampleapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_from_dsn(dsn: str) -> dict[str, object]:
    params = conninfo.conninfo_to_dict(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", "postgres"),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
        "TEST": {"NAME": params.get("dbname", "postgres")},
    }


_DSN = os.environ.get("REPROQ_TEST_DJANGO_DSN", "")
if _DSN:
    _second = conninfo.make_conninfo(
        _DSN, dbname=conninfo.conninfo_to_dict(_DSN).get("dbname", "postgres") + "_second"
    )
    DATABASES = {"default": database_from_dsn(_DSN), "second": database_from_dsn(_second)}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

TASKS = {
    "default": {
        "BACKEND": "reproq_django.backend.ReproqBackend",
        "QUEUES": ["default", "high"],
        "OPTIONS": {"MAX_ATTEMPTS": 2},
    }
}
