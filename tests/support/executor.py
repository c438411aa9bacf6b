"""A stand-in for reproq_django.executor that speaks the executor protocol without Django.

    python -m tests.support.executor --result-id N --attempt A
        (--payload-stdin | --payload-file PATH | --payload-json JSON)

It imports the spec's task_path, calls it with the spec's args/kwargs and prints one JSON
envelope line: {"ok": true, "return": ...} or {"ok": false, "exception_class", "message",
"traceback"} (exit 1). The attempt number is exposed to tasks as REPROQ_ATTEMPT.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
import threading
import time
import traceback
from typing import TextIO

from reproq_cli.process import fork_server_requested, serve_forks


def run(spec_text: str, result_id: int, attempt: int, payload_mode: str) -> tuple[bool, str]:
    """Run the spec's task: (ok, envelope JSON). Task prints go to stderr."""
    os.environ["REPROQ_ATTEMPT"] = str(attempt)
    os.environ["REPROQ_RESULT_ID"] = str(result_id)
    os.environ["REPROQ_PAYLOAD_MODE"] = payload_mode
    os.environ["REPROQ_PAYLOAD_RAW"] = spec_text
    try:
        spec = json.loads(spec_text)
        module_name, _, func_name = spec["task_path"].rpartition(".")
        func = getattr(importlib.import_module(module_name), func_name)
        with contextlib.redirect_stdout(io.StringIO()) as captured:
            value = func(*spec.get("args", []), **spec.get("kwargs", {}))
        sys.stderr.write(captured.getvalue())
        return True, json.dumps({"ok": True, "return": value})
    except BaseException as exc:  # the envelope reports everything, SystemExit included
        return False, json.dumps(
            {
                "ok": False,
                "exception_class": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }
        )


def serve() -> int:
    """The pool protocol of reproq_django.executor --serve, without Django, fork server
    included (REPROQ_TEST_NO_FORK_SERVER=1 plays an executor module without one).

    REPROQ_TEST_SERVE_DELAY (seconds) stands in for a slow set-up before the ready line;
    REPROQ_TEST_SERVE_THREAD=1 for one that starts a thread."""
    time.sleep(float(os.environ.get("REPROQ_TEST_SERVE_DELAY", "0")))
    if os.environ.get("REPROQ_TEST_SERVE_THREAD"):  # a set-up that leaves a thread running
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    if fork_server_requested() and not os.environ.get("REPROQ_TEST_NO_FORK_SERVER"):
        return serve_forks(protocol, _serve_requests)
    return _serve_requests(protocol)


def _serve_requests(protocol: TextIO) -> int:
    protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        task_stderr = io.StringIO()
        with contextlib.redirect_stderr(task_stderr):
            _, text = run(request["spec"], request["result_id"], request["attempt"], "pool")
        protocol.write(f'{{"result": {text}, "stderr": {json.dumps(task_stderr.getvalue())}}}\n')
        protocol.flush()
    return 0


def main() -> int:
    if sys.argv[1:] == ["--serve"]:
        return serve()
    parser = argparse.ArgumentParser()
    parser.add_argument("--result-id", type=int, required=True)
    parser.add_argument("--attempt", type=int, required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--payload-stdin", action="store_true")
    mode.add_argument("--payload-file")
    mode.add_argument("--payload-json")
    args = parser.parse_args()

    if args.payload_stdin:
        raw = sys.stdin.read()
        payload_mode = "stdin"
    elif args.payload_file:
        with open(args.payload_file, encoding="utf-8") as handle:
            raw = handle.read()
        payload_mode = "file"
    else:
        raw = args.payload_json
        payload_mode = "inline"
    ok, text = run(raw, args.result_id, args.attempt, payload_mode)
    sys.stdout.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
