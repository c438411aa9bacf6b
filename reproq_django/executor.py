"""``python -m reproq_django.executor``: run one task from its spec and print one envelope.

Protocol (reproq-django.md §2.4): exactly one of ``--payload-stdin``, ``--payload-file PATH``
or ``--payload-json TEXT``; optional ``--task-path``, ``--settings``, ``--result-id``,
``--attempt``. stdout carries one JSON line, ``{"ok": true, "return": ...}`` (exit 0) or
``{"ok": false, "exception_class", "message", "traceback"}`` (exit 1); anything the task prints
is kept off stdout so it cannot corrupt the envelope.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import io
import json
import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    # Django is imported once the settings are known (run_spec, serve).
    from django.tasks import Task

DEBUG_ENV = "REPROQ_EXECUTOR_DEBUG"


def _emit(stream: TextIO, envelope: dict[str, Any]) -> None:
    stream.write(json.dumps(envelope) + "\n")
    stream.flush()


def _failure(exc: BaseException, *, exception_class: str | None = None) -> dict[str, Any]:
    return {
        "ok": False,
        # The dotted path, so Django's TaskError.exception_class can import it.
        "exception_class": exception_class or f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reproq_django.executor")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--payload-stdin", action="store_true", help="read the spec from stdin")
    mode.add_argument("--payload-file", metavar="PATH", help="read the spec from a file")
    mode.add_argument("--payload-json", metavar="TEXT", help="the spec itself")
    parser.add_argument("--task-path", help="run this task instead of the spec's task_path")
    parser.add_argument("--settings", help="Django settings module")
    parser.add_argument("--result-id", default="", help="the task_runs row being run")
    parser.add_argument("--attempt", type=int, default=1, help="attempt number (1 = first)")
    parser.add_argument(
        "--serve", action="store_true", help="pool mode: run tasks from stdin, one per line"
    )
    return parser


def _read_payload(args: argparse.Namespace) -> str:
    if args.payload_stdin:
        return sys.stdin.read()
    if args.payload_file:
        with open(args.payload_file, encoding="utf-8") as handle:
            return handle.read()
    return str(args.payload_json)


def _setup_django(settings_module: str | None) -> str | None:
    """Set Django up; returns a failure envelope (JSON text) when it cannot be."""
    if settings_module:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    try:
        import django

        django.setup()
    except Exception as exc:
        return json.dumps(_failure(exc, exception_class="ImproperlyConfigured"))
    return None


def _parse_spec(text: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except RecursionError:
        # jsonb and Go's decoder take 10,000 levels; Python's decoder ~1,500.
        raise ValueError("the spec is nested too deeply for Python's JSON decoder") from None
    if not isinstance(spec, dict):
        raise ValueError("the spec must be a JSON object")
    return spec


def _spec_settings(spec: dict[str, Any]) -> str | None:
    django_part = spec.get("django")
    return django_part.get("settings_module") if isinstance(django_part, dict) else None


def execute(argv: list[str] | None = None) -> int:
    """Run one task; returns the exit code (0 success, 1 failure)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.settings)
    if not (args.payload_stdin or args.payload_file or args.payload_json is not None):
        # Not required by argparse itself, since --serve takes none: misuse exits 2 either way.
        parser.error("one of --payload-stdin, --payload-file or --payload-json is required")
    out = sys.stdout
    try:
        spec = _parse_spec(_read_payload(args))
    except (OSError, ValueError) as exc:
        _emit(out, _failure(exc, exception_class="PayloadError"))
        return 1
    problem = _setup_django(args.settings or _spec_settings(spec))
    if problem is not None:
        out.write(problem + "\n")
        out.flush()
        return 1

    def on_signal(signum: int, _frame: Any) -> NoReturn:
        _emit(
            out,
            {
                "ok": False,
                "exception_class": "Terminated",
                "message": f"executor received {signal.Signals(signum).name}",
                "traceback": "",
            },
        )
        os._exit(1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ok, text = run_spec(
        spec, result_id=str(args.result_id), attempt=args.attempt, task_path=args.task_path
    )
    out.write(text + "\n")
    out.flush()
    return 0 if ok else 1


def run_spec(
    spec: dict[str, Any], *, result_id: str, attempt: int, task_path: str | None = None
) -> tuple[bool, str]:
    """Run one task in this (set-up) process: (ok, the envelope as one line of JSON)."""
    from django.tasks import Task
    from django.tasks import signals as django_signals
    from django.tasks.base import TaskError
    from django.utils.module_loading import import_string

    from reproq_django import signals
    from reproq_django.context import TaskContext
    from reproq_django.db import format_result_id, resolve_queue_db
    from reproq_django.proxy import RunningResult, resolve_task
    from reproq_django.serialization import NUL_REFUSED, decode_args_kwargs, holds_nul

    task_path = task_path or spec.get("task_path") or ""
    try:
        obj = import_string(task_path)
    except Exception as exc:
        failure = ImportError(f"Failed to import task {task_path!r}: {exc}")
        return False, json.dumps(_failure(failure, exception_class="ImportError"))
    func = getattr(obj, "func", None) or getattr(obj, "run", None) or obj
    try:
        queue_name = spec.get("queue_name") or "default"
        if not isinstance(queue_name, str):
            raise TypeError(f"queue_name must be a string, not {type(queue_name).__name__}")
        priority = int(spec.get("priority") or 0)
        alias = resolve_queue_db(queue_name)
    except (TypeError, ValueError) as exc:
        # Outside the envelope, the worker would only see a process that printed nothing.
        failure = ValueError(f"Invalid spec: {exc}")
        return False, json.dumps(_failure(failure, exception_class="ValueError"))
    context = TaskContext(
        result_id=result_id,
        attempt=attempt,
        task_path=task_path,
        queue_name=queue_name,
        priority=priority,
        db_alias=alias,
    )
    captured = io.StringIO()
    args, kwargs = list(spec.get("args") or []), dict(spec.get("kwargs") or {})
    django_result: RunningResult | None = None  # set once Django's task_started is sent
    try:
        try:
            call_args, call_kwargs = decode_args_kwargs(args, kwargs, using=alias)
        except Exception as exc:
            raise RuntimeError(f"Failed to deserialize arguments: {exc}") from exc
        takes_context = bool(spec.get("takes_context") or getattr(obj, "takes_context", False))
        if takes_context:
            call_args = [context, *call_args]
        _send(signals.task_started, task_context=context)
        running = RunningResult.start(
            task=obj if isinstance(obj, Task) else resolve_task(task_path, "default"),
            result_id=format_result_id(result_id, alias),
            row_id=result_id,
            db_alias=alias,
            args=args,
            kwargs=kwargs,
        )
        sender = _backend_class(running.task)
        django_result = running
        _send(django_signals.task_started, sender=sender, task_result=running)
        with contextlib.redirect_stdout(captured):
            value = func(*call_args, **call_kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
        # NaN and the infinities are not JSON (the worker refuses the envelope), and jsonb
        # refuses a NUL: said here, the task fails with the reason.
        text = json.dumps({"ok": True, "return": value}, allow_nan=False)
        if holds_nul(text):
            raise ValueError(f"cannot store the task's return value: {NUL_REFUSED}")
    except BaseException as exc:  # the envelope reports every failure, SystemExit included
        _report_prints(captured)
        _save_metadata(context)
        _send(signals.task_finished, task_context=context, ok=False, error=exc)
        failure = _failure(exc)
        if django_result is not None:
            django_result.finish(
                error=TaskError(
                    exception_class_path=failure["exception_class"],
                    traceback=failure["traceback"],
                )
            )
            # Still inside the handler: Django's own receiver logs sys.exc_info() with it.
            _send(django_signals.task_finished, sender=sender, task_result=django_result)
        return False, json.dumps(failure)
    _report_prints(captured)
    _save_metadata(context)
    _send(signals.task_finished, task_context=context, ok=True)
    running.finish(envelope=text)
    _send(django_signals.task_finished, sender=sender, task_result=running)
    return True, text


def serve(settings_module: str | None = None) -> int:
    """``--serve``: a pool process for ``reproq worker --executor pool``.

    Django is set up once. Requests arrive on stdin, one JSON line each
    (``{"result_id", "attempt", "spec"}``); each answer is one line on the original stdout,
    ``{"result": <envelope>, "stderr": "..."}``. Everything else that reaches file descriptor
    1 (a C library, a child process) is sent to stderr so it cannot corrupt an answer.

    Started as the pool's fork server (reproq_cli.process.serve_forks), the process sets
    Django up the same way and then forks pool processes that each run this loop.
    """
    from reproq_cli.process import fork_server_requested, serve_forks

    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    loaded = settings_module or os.environ.get("DJANGO_SETTINGS_MODULE")
    setup_problem = _setup_django(loaded) if loaded else None
    if fork_server_requested():
        if loaded and setup_problem is None:
            _warm_up()
        return serve_forks(
            protocol,
            lambda child_protocol: _serve_requests(child_protocol, loaded, setup_problem),
            before_fork=_close_connections if loaded and setup_problem is None else None,
        )
    return _serve_requests(protocol, loaded, setup_problem)


def _serve_requests(protocol: TextIO, loaded: str | None, setup_problem: str | None) -> int:
    protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        task_stderr = io.StringIO()
        with contextlib.redirect_stderr(task_stderr):
            text = _serve_one(line, loaded, setup_problem)
            if loaded is None:
                loaded = os.environ.get("DJANGO_SETTINGS_MODULE")
        stderr_json = json.dumps(task_stderr.getvalue())
        protocol.write(f'{{"result": {text}, "stderr": {stderr_json}}}\n')
        protocol.flush()
    return 0


def _warm_up() -> None:
    """Do once in the fork server what every forked process's first task would do.

    A fresh pool process's first task imported run_spec's modules and built the task
    backends: its first no-op took 12-18 ms of CPU instead of ~2 ms, in every new process,
    sixteen at once when a ``--concurrency 16`` pool starts.
    """
    from django.tasks import task_backends

    from reproq_django import context, db, proxy, serialization, signals  # noqa: F401

    # A backend the settings get wrong fails its own tasks, with the reason, as before.
    with contextlib.suppress(Exception):
        task_backends.all()


def _close_connections() -> None:
    # A connection the set-up opened must not be shared by the children a fork makes.
    from django.db import connections

    connections.close_all()


def _serve_one(line: str, loaded: str | None, setup_problem: str | None) -> str:
    try:
        request = json.loads(line)
        spec = _parse_spec(request["spec"])
        result_id, attempt = str(request.get("result_id") or ""), int(request.get("attempt") or 1)
    except (ValueError, KeyError, TypeError) as exc:
        return json.dumps(_failure(exc, exception_class="PayloadError"))
    wanted = _spec_settings(spec)
    if loaded is None:
        # No settings in the environment: the first task's spec names them.
        problem = _setup_django(wanted)
        if problem is not None:
            return problem
    elif setup_problem is not None:
        return setup_problem
    elif wanted and wanted != loaded:
        mismatch = RuntimeError(
            f"this pool process runs settings {loaded!r} but the task asks for {wanted!r}; "
            "run a separate worker for it or use --executor spawn"
        )
        return json.dumps(_failure(mismatch, exception_class="ImproperlyConfigured"))
    from django.db import close_old_connections, reset_queries

    # What Django does around a request: no connection or query log carries over between tasks.
    close_old_connections()
    reset_queries()
    try:
        return run_spec(spec, result_id=result_id, attempt=attempt)[1]
    finally:
        close_old_connections()


async def _await(value: Any) -> Any:
    return await value


def _report_prints(captured: io.StringIO) -> None:
    text = captured.getvalue()
    if not text:
        return
    size = len(text.encode("utf-8"))
    sys.stderr.write(f"[reproq executor] Task wrote {size} bytes to stdout; suppressed.\n")
    if os.environ.get(DEBUG_ENV):
        sys.stderr.write(text)


def _save_metadata(context: Any) -> None:
    if not context.result_id or not context.metadata_changed:
        return
    with contextlib.suppress(Exception):
        context.save_metadata()


def _send(signal_obj: Any, *, sender: Any = "reproq_django.executor", **kwargs: Any) -> None:
    # What a receiver prints goes to stderr: on stdout it would corrupt the envelope.
    with contextlib.suppress(Exception), contextlib.redirect_stdout(sys.stderr):
        signal_obj.send(sender=sender, **kwargs)


def _backend_class(task: Task) -> type:
    """The sender of Django's signals: the class of the task's backend, as Django's own
    backends send them."""
    try:
        return type(task.get_backend())
    except Exception:  # a row's backend alias this project does not configure
        from reproq_django.backend import ReproqBackend

        return ReproqBackend


def main() -> NoReturn:
    from reproq_cli.process import die_with_parent, fork_server_requested

    # A fork server watches its parent in its own loop, not in a thread: a child forked from
    # a threaded process can inherit a lock that one of the other threads held.
    if not fork_server_requested():
        die_with_parent()
    sys.exit(execute())


if __name__ == "__main__":
    main()
