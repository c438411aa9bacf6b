"""Fan work out from inside a task: ``parallel_map``, ``parallel_starmap``, ``scatter_gather``.

Semantics follow django-ray's ``django_ray.runtime.distributed``: results come back in input
order, Django is set up in the Ray workers before a function runs, and calls may ask for
resources. The differences:

- functions travel with cloudpickle, so a function nested inside the task (or a lambda)
  works;
- ``max_concurrency`` is a sliding window: a new call starts as soon as any one finishes,
  not when a whole batch has;
- without a Ray connection (``--executor spawn`` or ``pool``, a shell, a test) the calls run
  in a local process pool instead of one after the other.

Inside a task run by ``reproq worker --executor ray`` Ray is already connected. Elsewhere
call ``ray.init(...)`` first to use a cluster. The first exception raised by any call is
raised here, after the calls still running have been cancelled.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_FUNCTIONS: dict[str, Callable[..., Any]] = {}  # per Ray worker: unpickled functions by digest

Call = tuple[Callable[..., Any], Sequence[Any], dict[str, Any]]


def _cloudpickle() -> Any:
    try:
        import cloudpickle
    except ImportError:
        try:
            from ray import cloudpickle  # Ray ships its own copy
        except ImportError:
            raise ImportError(
                "reproq_django.distributed needs cloudpickle; pip install 'reproq[ray]'"
            ) from None
    return cloudpickle


def _ray() -> Any | None:
    """The ray module when this process is connected to a cluster, else None."""
    try:
        import ray
    except ImportError:
        return None
    return ray if ray.is_initialized() else None


def is_ray_available() -> bool:
    """True when calls here would run on Ray (installed and connected)."""
    return _ray() is not None


def get_ray_resources() -> dict[str, float]:
    """The cluster's total resources ({} without a Ray connection)."""
    ray = _ray()
    return dict(ray.cluster_resources()) if ray is not None else {}


def get_num_workers() -> int:
    """Ray nodes alive, or 1 (this machine) without a Ray connection."""
    ray = _ray()
    if ray is None:
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def get_total_cpus() -> int:
    """CPUs of the cluster, or of this machine without a Ray connection."""
    ray = _ray()
    if ray is None:
        return os.cpu_count() or 1
    return int(ray.cluster_resources().get("CPU", 0))


# --- what runs on the other side ---------------------------------------------------------------


def _setup_django(settings_module: str | None = None) -> None:
    """Set Django up once per process, when the caller or the environment names settings."""
    if settings_module:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()


def _load(blob: bytes, settings_module: str | None) -> Callable[..., Any]:
    digest = hashlib.sha256(blob).hexdigest()
    func = _FUNCTIONS.get(digest)
    if func is None:
        _setup_django(settings_module)  # before unpickling: it may reference models
        func = _cloudpickle().loads(blob)
        _FUNCTIONS[digest] = func
    return func


def _run_call(
    blob: bytes, settings_module: str | None, args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    return _load(blob, settings_module)(*args, **kwargs)


def _run_packed(settings_module: str | None, packed: bytes) -> Any:
    """Local pool: one call whose function, args and kwargs were cloudpickled together."""
    _setup_django(settings_module)
    func, args, kwargs = _cloudpickle().loads(packed)
    return func(*args, **kwargs)


# --- public API --------------------------------------------------------------------------------


def parallel_map(
    func: Callable[..., Any],
    items: Iterable[Any],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
    max_concurrency: int | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``[func(item, **kwargs) for item in items]``, in parallel, in input order."""
    calls: list[Call] = [(func, (item,), kwargs) for item in items]
    return _run(calls, num_cpus, num_gpus, memory, resources, max_concurrency)


def parallel_starmap(
    func: Callable[..., Any],
    args_list: Iterable[Sequence[Any]],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
    max_concurrency: int | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``[func(*args, **kwargs) for args in args_list]``, in parallel, in input order."""
    calls: list[Call] = [(func, tuple(args), kwargs) for args in args_list]
    return _run(calls, num_cpus, num_gpus, memory, resources, max_concurrency)


def scatter_gather(
    calls: Iterable[Call | tuple[Callable[..., Any], Sequence[Any]] | Callable[..., Any]],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
    max_concurrency: int | None = None,
) -> list[Any]:
    """Different calls at once: each ``(func, args, kwargs)``, ``(func, args)`` or ``func``;
    the results in the order of ``calls``."""
    normalized: list[Call] = []
    for call in calls:
        if callable(call):
            normalized.append((call, (), {}))
        elif len(call) == 2:
            normalized.append((call[0], tuple(call[1]), {}))
        elif len(call) == 3:
            normalized.append((call[0], tuple(call[1]), dict(call[2])))  # type: ignore[misc]
        else:
            raise ValueError(f"scatter_gather: expected (func, args[, kwargs]), got {call!r}")
    return _run(normalized, num_cpus, num_gpus, memory, resources, max_concurrency)


def _run(
    calls: list[Call],
    num_cpus: float,
    num_gpus: float,
    memory: int | None,
    resources: dict[str, float] | None,
    max_concurrency: int | None,
) -> list[Any]:
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    if not calls:
        return []
    ray = _ray()
    if ray is not None:
        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        if memory:
            options["memory"] = int(memory)
        if resources:
            options["resources"] = dict(resources)
        return _run_on_ray(ray, calls, options, max_concurrency)
    return _run_locally(calls, max_concurrency)


def _run_on_ray(
    ray: Any, calls: list[Call], options: dict[str, Any], max_concurrency: int | None
) -> list[Any]:
    pickle = _cloudpickle()
    remote = ray.remote(max_retries=0)(_run_call).options(**options)
    blobs: dict[int, Any] = {}  # one object-store copy per distinct function
    # Passed along rather than set in a runtime_env, which would need fresh worker processes.
    settings_module = os.environ.get("DJANGO_SETTINGS_MODULE")
    results: list[Any] = [None] * len(calls)
    window = max_concurrency or len(calls)
    in_flight: dict[Any, int] = {}
    next_index = 0

    def submit(index: int) -> None:
        func, args, kwargs = calls[index]
        key = id(func)
        if key not in blobs:
            blobs[key] = ray.put(pickle.dumps(func))
        in_flight[remote.remote(blobs[key], settings_module, args, kwargs)] = index

    try:
        while next_index < len(calls) and len(in_flight) < window:
            submit(next_index)
            next_index += 1
        while in_flight:
            # Sliding window: whichever finishes first frees its place for the next call.
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                results[in_flight.pop(ref)] = ray.get(ref)
                if next_index < len(calls):
                    submit(next_index)
                    next_index += 1
    except BaseException:
        for ref in in_flight:
            with contextlib.suppress(Exception):  # already finished or gone
                ray.cancel(ref, force=True)
        raise
    return results


def _run_locally(calls: list[Call], max_concurrency: int | None) -> list[Any]:
    workers = min(max_concurrency or os.cpu_count() or 1, len(calls))
    if workers <= 1:
        return [func(*args, **kwargs) for func, args, kwargs in calls]
    pickle = _cloudpickle()
    packed = [pickle.dumps(call) for call in calls]
    # spawn, not fork: the caller may hold database connections and threads.
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        # The pool runs ``workers`` chunks at a time and starts the next as one finishes.
        chunk = max(1, len(packed) // (workers * 4))
        settings = [os.environ.get("DJANGO_SETTINGS_MODULE")] * len(packed)
        return list(pool.map(_run_packed, settings, packed, chunksize=chunk))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error: drop what has not begun
