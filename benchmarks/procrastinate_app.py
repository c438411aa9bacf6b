"""The procrastinate app of the peer benchmark: one async no-op task.

The DSN comes from REPROQ_BENCH_PEER_DSN (set by the harness for itself and for workers).
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ.get("REPROQ_BENCH_PEER_DSN", "")))


@app.task(name="noop")
async def noop(n: int = 0) -> None:
    """Does nothing."""
