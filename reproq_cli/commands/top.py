"""`reproq top`: a live full-screen view of queues, throughput and workers over a plain DSN."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import select
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from reproq_cli import console
from reproq_cli.commands._common import command_dsn, config_option, dsn_option
from reproq_cli.db.connect import connection
from reproq_cli.db.operations import stats_snapshot
from reproq_cli.errors import UsageError


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """Single key presses without echo while the view runs (no-op when stdin is no tty)."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _key_within(fd: int | None, seconds: float) -> str:
    if fd is None:
        select.select([], [], [], seconds)
        return ""
    ready, _, _ = select.select([fd], [], [], seconds)
    return os.read(fd, 1).decode(errors="ignore") if ready else ""


def render(snapshot: dict[str, Any]) -> Group:
    now = dt.datetime.now(dt.UTC)
    queues = Table(title="Queues", expand=True)
    for column in (
        "queue",
        "ready",
        "waiting",
        "running",
        "done/min",
        "failed/min",
        "fail %",
        "paused",
    ):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for name, q in snapshot["queues"].items():
        counts, rates = q["counts"], q["finished_last_minute"]
        done = rates["succeeded"] + rates["failed"]
        queues.add_row(
            name,
            str(counts.get("READY", 0)),
            str(counts.get("WAITING", 0)),
            str(counts.get("RUNNING", 0)),
            str(done),
            str(rates["failed"]),
            f"{100 * rates['failed'] / done:.0f}%" if done else "-",
            "PAUSED" if q["paused"] else "",
        )
    workers = Table(title="Workers", expand=True)
    for column in ("worker", "host", "concurrency", "queues", "last seen"):
        workers.add_column(column)
    for w in snapshot["workers"]:
        seen = int((now - w["last_seen_at"]).total_seconds())
        workers.add_row(
            w["worker_id"],
            w["hostname"] or "",
            str(w["concurrency"] or ""),
            ",".join(w["queues"] or []),
            Text(f"{seen}s ago", style="green" if w["alive"] else "red"),
        )
    periodic = Table(title="Next periodic runs", expand=True)
    for column in ("name", "cron", "next run"):
        periodic.add_column(column)
    for p in [p for p in snapshot["periodic"] if p["enabled"]][:8]:
        periodic.add_row(p["name"], p["cron_expr"], p["next_run_at"].isoformat(timespec="seconds"))
    header = Text(
        f"reproq top  {now:%H:%M:%S} UTC   workers {snapshot['workers_alive']} alive, "
        f"{snapshot['workers_dead']} dead   press q to quit",
        style="bold",
    )
    return Group(header, queues, workers, periodic)


@click.command(name="top")
@dsn_option
@config_option
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=3600),
    default=1.0,
    show_default=True,
    help="Seconds per refresh (0.1 to 3600).",
)
def command(dsn: str | None, config_path: str | None, interval: float) -> None:
    """Live view: per-queue depth and running, rates over the last minute, workers, schedules.

    q or Ctrl+C quits.
    """
    if math.isnan(interval):  # FloatRange lets NaN through: it compares false both ways
        raise UsageError("--interval nan is not a number of seconds", hint="e.g. --interval 2")
    url = command_dsn(dsn, config_path)
    with (
        connection(url) as conn,
        _keys() as fd,
        Live(
            render(stats_snapshot(conn)), console=console.out, screen=True, auto_refresh=False
        ) as live,
    ):
        while True:
            try:
                key = _key_within(fd, interval)
            except KeyboardInterrupt:
                break
            if key.lower() == "q":
                break
            live.update(render(stats_snapshot(conn)), refresh=True)
