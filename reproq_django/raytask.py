"""Tasks on Ray: the entry point a Ray worker calls, and per-task resource requests.

``reproq worker --executor ray`` submits a Ray remote function that imports this module by
name and calls ``run``; it does what ``python -m reproq_django.executor`` does, in a Ray
worker process that stays alive between tasks (Django is set up once per process).

``ray_options`` asks Ray for resources for a task::

    @ray_options(num_cpus=2, num_gpus=1, memory=4 * 2**30)
    @task()
    def train(model_id: int) -> dict: ...

or for one enqueue: ``train.enqueue(7, ray_options={"num_gpus": 1})``. The options travel in
the spec (``spec["ray"]``); other executors ignore them. This module imports neither Django
nor Ray at import time, so the backend and Ray workers load it cheaply.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

OPTION_KEYS = ("num_cpus", "num_gpus", "memory", "resources")
_OPTIONS: dict[str, dict[str, Any]] = {}
_SETTINGS_LOADED: list[str | None] = []  # what this process set Django up with, once


def _path(obj: Any) -> str:
    module_path = getattr(obj, "module_path", None)
    if isinstance(module_path, str):
        return module_path
    func = getattr(obj, "func", obj)
    return f"{func.__module__}.{func.__qualname__}"


def validate_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options as stored in the spec; ValueError names a bad key or amount."""
    clean: dict[str, Any] = {}
    for key, value in options.items():
        if key not in OPTION_KEYS:
            raise ValueError(f"unknown Ray option {key!r}; use one of {', '.join(OPTION_KEYS)}")
        if value is None:
            continue
        if key == "resources":
            if not isinstance(value, dict) or not all(_amount(v) for v in value.values()):
                raise ValueError("Ray option 'resources' must map names to non-negative numbers")
            clean[key] = {str(name): value[name] for name in sorted(value)}
        elif not _amount(value):
            raise ValueError(f"Ray option {key!r} must be a non-negative number, not {value!r}")
        else:
            clean[key] = int(value) if key == "memory" else value
    return clean


def _amount(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def ray_options(
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
) -> Callable[[T], T]:
    """Resources Ray reserves for each run of the task (``memory`` in bytes).

    Kept in a registry by task path, as Django's ``Task`` is frozen; either decorator order
    works.
    """
    options = validate_options(
        {"num_cpus": num_cpus, "num_gpus": num_gpus, "memory": memory, "resources": resources}
    )

    def decorate(obj: T) -> T:
        _OPTIONS[_path(obj)] = options
        return obj

    return decorate


def options_for(task: Any, override: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task's registered options, updated by an enqueue's ``ray_options``."""
    merged = dict(_OPTIONS.get(_path(task), {}))
    if override:
        if not isinstance(override, dict):
            raise ValueError("ray_options must be a dict")
        merged.update(validate_options(override))
    return merged


# --- on the Ray worker ---------------------------------------------------------------------------


def _ensure_django(settings_module: str | None) -> str | None:
    """Set Django up in this Ray worker once; a failure envelope (JSON text) if it cannot be."""
    from reproq_django.executor import _setup_django

    wanted = settings_module or os.environ.get("DJANGO_SETTINGS_MODULE")
    if _SETTINGS_LOADED:
        loaded = _SETTINGS_LOADED[0]
        if wanted and loaded and wanted != loaded:
            from reproq_django.executor import _failure

            mismatch = RuntimeError(
                f"this Ray worker runs settings {loaded!r} but the task asks for {wanted!r}; "
                "run a separate worker for it, with its own DJANGO_SETTINGS_MODULE"
            )
            return json.dumps(_failure(mismatch, exception_class="ImproperlyConfigured"))
        return None
    problem = _setup_django(wanted)
    if problem is None:
        _SETTINGS_LOADED.append(wanted)
    return problem


def run(
    spec_text: str, *, result_id: str, attempt: int, settings_module: str | None = None
) -> dict[str, Any]:
    """Run one task here: ``{"ok", "envelope": <one JSON line>, "stderr": <its stderr>}``.

    ``settings_module`` is the worker's DJANGO_SETTINGS_MODULE; the spec's own wins.
    """
    from reproq_django.executor import _failure, _parse_spec, _spec_settings, run_spec

    try:
        spec = _parse_spec(spec_text)
    except ValueError as exc:
        text = json.dumps(_failure(exc, exception_class="PayloadError"))
        return {"ok": False, "envelope": text, "stderr": ""}
    problem = _ensure_django(_spec_settings(spec) or settings_module)
    if problem is not None:
        return {"ok": False, "envelope": problem, "stderr": ""}
    from django.db import close_old_connections, reset_queries

    # As around a request: no connection or query log carries over between tasks that share
    # this Ray worker process.
    close_old_connections()
    reset_queries()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            ok, text = run_spec(spec, result_id=result_id, attempt=attempt)
    finally:
        close_old_connections()
    return {"ok": ok, "envelope": text, "stderr": captured.getvalue()}
