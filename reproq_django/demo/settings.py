"""Django settings for the demo; the database DSN comes from REPROQ_DEMO_DSN."""

from __future__ import annotations

import os

from psycopg import conninfo

_params = conninfo.conninfo_to_dict(os.environ.get("REPROQ_DEMO_DSN", "dbname=reproq_demo"))

SECRET_KEY = "reproq-demo-only"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "reproq_django", "reproq_django.demo"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params.get("dbname", "reproq_demo"),
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
    }
}
TASKS = {
    "default": {
        "BACKEND": "reproq_django.backend.ReproqBackend",
        "OPTIONS": {"MAX_ATTEMPTS": 2},
    }
}
