"""Routes reproq's models to the database configured for them (reproq-django.md §1.9)."""

from __future__ import annotations

from typing import Any

from reproq_django.db import default_db_alias, queue_db_aliases


class ReproqRouter:
    app_label = "reproq_django"

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        if model._meta.app_label == self.app_label:  # type: ignore[attr-defined]
            instance = hints.get("instance")
            if instance is not None and instance._state.db:
                return str(instance._state.db)
            return default_db_alias()
        return None

    db_for_write = db_for_read

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        """Two reproq rows relate only within one database (an unsaved one, whose database
        is not known yet, may relate to any); a pair with another app's model is left to
        the other routers (reproq-django.md §7)."""
        if obj1._meta.app_label != self.app_label or obj2._meta.app_label != self.app_label:
            return None
        first, second = obj1._state.db, obj2._state.db
        if first is None or second is None:
            return True
        return bool(first == second)

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label == self.app_label:
            return db in queue_db_aliases()
        return None
