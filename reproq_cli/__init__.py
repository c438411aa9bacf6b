"""reproq: Postgres-only background tasks for Django 6 (the command-line worker and tools)."""

__version__ = "0.1.0"
