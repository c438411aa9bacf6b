"""Per-task concurrency limits (reproq-django.md §1.8).

Django's ``Task`` is a frozen dataclass, so reproq-django's decorator, which set attributes
on it, silently did nothing. The limit is kept in a registry keyed by the task's path instead,
and works whichever way round the decorators are stacked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_LIMITS: dict[str, tuple[Any, int]] = {}


def _path(obj: Any) -> str:
    module_path = getattr(obj, "module_path", None)
    if isinstance(module_path, str):
        return module_path
    func = getattr(obj, "func", obj)
    return f"{func.__module__}.{func.__qualname__}"


def limits_concurrency(key: str | Callable[..., str], to: int = 1) -> Callable[[T], T]:
    """Run at most ``to`` tasks sharing ``key`` at once (``key`` may be a callable of the
    task's arguments, e.g. ``lambda account_id: f"account:{account_id}"``)."""

    def decorate(obj: T) -> T:
        _LIMITS[_path(obj)] = (key, int(to))
        return obj

    return decorate


def concurrency_for(task: Any) -> tuple[Any, int]:
    """(key, limit) registered for a task, else its own attributes, else (None, 0)."""
    registered = _LIMITS.get(_path(task))
    if registered is not None:
        return registered
    return getattr(task, "concurrency_key", None), int(getattr(task, "concurrency_limit", 0) or 0)
