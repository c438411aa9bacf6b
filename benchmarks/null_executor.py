"""A diagnostic executor that runs nothing: ``python -m benchmarks.null_executor``.

It speaks reproq's executor protocol (one envelope per spec; ``--serve`` for the pool's JSON
lines) without Python-side task work, Django or database access, so a worker using it shows
the worker's own ceiling: claiming, dispatching, completing. Used only by the benchmarks.
"""

from __future__ import annotations

import json
import os
import sys

OK = '{"ok": true, "return": null}'


def main() -> None:
    if "--serve" in sys.argv:
        out = sys.stdout
        out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
        out.flush()
        for line in sys.stdin:
            if line.strip():
                out.write(f'{{"result": {OK}, "stderr": ""}}\n')
                out.flush()
        return
    sys.stdin.read()
    sys.stdout.write(OK + "\n")


if __name__ == "__main__":
    main()
