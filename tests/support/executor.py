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
import traceback


def main() -> int:
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
    os.environ["REPROQ_ATTEMPT"] = str(args.attempt)
    os.environ["REPROQ_RESULT_ID"] = str(args.result_id)
    os.environ["REPROQ_PAYLOAD_MODE"] = payload_mode
    os.environ["REPROQ_PAYLOAD_RAW"] = raw

    real_stdout = sys.stdout
    try:
        spec = json.loads(raw)
        module_name, _, func_name = spec["task_path"].rpartition(".")
        func = getattr(importlib.import_module(module_name), func_name)
        # Task prints must not corrupt the envelope: they go to stderr, as in reproq_django.
        with contextlib.redirect_stdout(io.StringIO()) as captured:
            value = func(*spec.get("args", []), **spec.get("kwargs", {}))
        sys.stderr.write(captured.getvalue())
    except BaseException as exc:  # the envelope reports everything, SystemExit included
        real_stdout.write(
            json.dumps(
                {
                    "ok": False,
                    "exception_class": f"{type(exc).__module__}.{type(exc).__qualname__}",
                    "message": str(exc),
                    "traceback": traceback.format_exc(),
                }
            )
            + "\n"
        )
        return 1
    real_stdout.write(json.dumps({"ok": True, "return": value}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
