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
from typing import Any, NoReturn, TextIO

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
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--payload-stdin", action="store_true", help="read the spec from stdin")
    mode.add_argument("--payload-file", metavar="PATH", help="read the spec from a file")
    mode.add_argument("--payload-json", metavar="TEXT", help="the spec itself")
    parser.add_argument("--task-path", help="run this task instead of the spec's task_path")
    parser.add_argument("--settings", help="Django settings module")
    parser.add_argument("--result-id", default="", help="the task_runs row being run")
    parser.add_argument("--attempt", type=int, default=1, help="attempt number (1 = first)")
    return parser


def _read_payload(args: argparse.Namespace) -> str:
    if args.payload_stdin:
        return sys.stdin.read()
    if args.payload_file:
        with open(args.payload_file, encoding="utf-8") as handle:
            return handle.read()
    return str(args.payload_json)


def _load_metadata(result_id: str, alias: str) -> dict[str, Any]:
    from reproq_django.models import TaskRun

    try:
        value = (
            TaskRun.objects.using(alias)
            .filter(result_id=int(result_id))
            .values_list("metadata_json", flat=True)
            .first()
        )
    except Exception:
        return {}
    return dict(value) if isinstance(value, dict) else {}


def execute(argv: list[str] | None = None) -> int:
    """Run one task; returns the exit code (0 success, 1 failure)."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        spec = json.loads(_read_payload(args))
        if not isinstance(spec, dict):
            raise ValueError("the spec must be a JSON object")
    except (OSError, ValueError) as exc:
        _emit(out, _failure(exc, exception_class="PayloadError"))
        return 1

    settings_module = args.settings or (spec.get("django") or {}).get("settings_module")
    if settings_module:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    try:
        import django

        django.setup()
    except Exception as exc:
        _emit(out, _failure(exc, exception_class="ImproperlyConfigured"))
        return 1

    from django.utils.module_loading import import_string

    from reproq_django import signals
    from reproq_django.context import TaskContext
    from reproq_django.db import resolve_queue_db
    from reproq_django.serialization import decode_args_kwargs

    task_path = args.task_path or spec.get("task_path") or ""
    try:
        obj = import_string(task_path)
    except Exception as exc:
        _emit(
            out,
            _failure(
                ImportError(f"Failed to import task {task_path!r}: {exc}"),
                exception_class="ImportError",
            ),
        )
        return 1
    func = getattr(obj, "func", None) or getattr(obj, "run", None) or obj
    queue_name = spec.get("queue_name") or "default"
    alias = resolve_queue_db(queue_name)
    context = TaskContext(
        result_id=str(args.result_id),
        attempt=args.attempt,
        task_path=task_path,
        queue_name=queue_name,
        priority=int(spec.get("priority") or 0),
        db_alias=alias,
        metadata=_load_metadata(str(args.result_id), alias) if args.result_id else {},
    )

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

    captured = io.StringIO()
    try:
        try:
            call_args, call_kwargs = decode_args_kwargs(
                list(spec.get("args") or []), dict(spec.get("kwargs") or {}), using=alias
            )
        except Exception as exc:
            raise RuntimeError(f"Failed to deserialize arguments: {exc}") from exc
        takes_context = bool(spec.get("takes_context") or getattr(obj, "takes_context", False))
        if takes_context:
            call_args = [context, *call_args]
        _send(signals.task_started, task_context=context)
        with contextlib.redirect_stdout(captured):
            value = func(*call_args, **call_kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
        text = json.dumps({"ok": True, "return": value})
    except BaseException as exc:  # the envelope reports every failure, SystemExit included
        _report_prints(captured)
        _save_metadata(context)
        _send(signals.task_finished, task_context=context, ok=False, error=exc)
        _emit(out, _failure(exc))
        return 1
    _report_prints(captured)
    _save_metadata(context)
    _send(signals.task_finished, task_context=context, ok=True)
    out.write(text + "\n")
    out.flush()
    return 0


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
    if not context.result_id:
        return
    with contextlib.suppress(Exception):
        context.save_metadata()


def _send(signal_obj: Any, **kwargs: Any) -> None:
    with contextlib.suppress(Exception):
        signal_obj.send(sender="reproq_django.executor", **kwargs)


def main() -> NoReturn:
    sys.exit(execute())


if __name__ == "__main__":
    main()
