"""Which database holds a queue's tasks, and result ids that name it (reproq-django.md §1.9)."""

from __future__ import annotations

import fnmatch
from functools import cache, lru_cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

# The settings the routing below reads; a change to one (override_settings in tests)
# drops the cached answers.
ROUTING_SETTINGS = frozenset(
    {"REPROQ_DEFAULT_DB_ALIAS", "REPROQ_QUEUE_DATABASES", "REPROQ_RESULT_ID_WITH_ALIAS"}
)


def default_db_alias() -> str:
    return getattr(settings, "REPROQ_DEFAULT_DB_ALIAS", "default") or "default"


def queue_database_map() -> dict[str, str]:
    mapping = getattr(settings, "REPROQ_QUEUE_DATABASES", None) or {}
    if not isinstance(mapping, dict):
        raise ValueError("REPROQ_QUEUE_DATABASES must be a dict of queue name -> database alias")
    return {str(k): str(v) for k, v in mapping.items()}


@receiver(setting_changed)
def _routing_changed(*, setting: str, **_kwargs: Any) -> None:
    if setting in ROUTING_SETTINGS:
        resolve_queue_db.cache_clear()
        should_prefix_result_ids.cache_clear()


def _is_glob(key: str) -> bool:
    return any(ch in key for ch in "*?[")


@lru_cache(maxsize=1024)  # every enqueue asks; the settings change only in tests (above)
def resolve_queue_db(queue_name: str | None) -> str:
    """Exact queue key, then the first matching glob, then the default alias."""
    queue = queue_name or "default"
    mapping = queue_database_map()
    if queue in mapping:
        return mapping[queue]
    for key, alias in mapping.items():
        if _is_glob(key) and fnmatch.fnmatchcase(queue, key):
            return alias
    return default_db_alias()


def queue_db_aliases() -> list[str]:
    return sorted({default_db_alias(), *queue_database_map().values()})


@cache
def should_prefix_result_ids() -> bool:
    forced = getattr(settings, "REPROQ_RESULT_ID_WITH_ALIAS", None)
    if forced is not None:
        return bool(forced)
    return len(queue_db_aliases()) > 1


def format_result_id(result_id: int | str, alias: str, include_alias: bool | None = None) -> str:
    include = should_prefix_result_ids() if include_alias is None else include_alias
    return f"{alias}:{result_id}" if include else str(result_id)


def parse_result_id(value: int | str) -> tuple[str, str]:
    """(alias, raw id): ``"alias:id"`` is split only when ``alias`` is a known database."""
    if isinstance(value, int):
        return default_db_alias(), str(value)
    text = str(value)
    if ":" in text:
        alias, _, raw = text.partition(":")
        if alias in queue_db_aliases() or alias in settings.DATABASES:
            return alias, raw
    return default_db_alias(), text
