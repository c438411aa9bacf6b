"""The invariants behind ``reproq verify``: each a PASS, FAIL or SKIP with its evidence.

The database decides (every check is one query in sql/queries.sql returning the rows that
break it); this module names the invariants and judges the rows. Checks that need executions
(overlaps, order) read ``reproq_torture_executions``, which only ``reproq torture`` writes;
without it they are SKIP, not PASS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reproq_cli.db.connect import connection
from reproq_cli.db.verify import fetch, has_executions

EXAMPLES = 5


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL, SKIP
    detail: str
    examples: list[dict[str, Any]] = field(default_factory=list)


Rows = list[dict[str, Any]]


def _violations(name: str, rows: Rows, ok: str, bad: Callable[[int], str]) -> Result:
    if not rows:
        return Result(name, "PASS", ok)
    return Result(name, "FAIL", bad(len(rows)), rows[:EXAMPLES])


def _pending(rows: Rows) -> Result:
    counts = {row["reason"]: int(row["n"]) for row in rows}
    stranded = counts.pop(None, 0)
    terminal = counts.pop("terminal", 0)
    waiting = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    detail = f"{terminal} terminal" + (f"; waiting: {waiting}" if waiting else "")
    if stranded:
        examples = next(row for row in rows if row["reason"] is None)["examples"]
        return Result(
            "every task terminal or waiting for a documented reason",
            "FAIL",
            f"{stranded} stranded (no reason to wait); {detail}",
            [{"result_ids": examples}],
        )
    return Result("every task terminal or waiting for a documented reason", "PASS", detail)


def _concurrency(rows: Rows) -> Result:
    name = "concurrency limits never exceeded"
    over = [row for row in rows if int(row["peak"]) > int(row["limit"])]
    peaks = ", ".join(f"{r['concurrency_key']} {r['peak']}/{r['limit']}" for r in rows[:6])
    if over:
        return Result(name, "FAIL", f"{len(over)} key(s) over their limit (peak/limit)", over)
    if not rows:
        return Result(name, "PASS", "no executions with a concurrency limit")
    return Result(name, "PASS", f"peak/limit: {peaks}" + (" ..." if len(rows) > 6 else ""))


def run_checks(dsn: str) -> list[Result]:
    with connection(dsn) as conn:
        results = [
            _violations(
                "no RUNNING row without a live lease",
                fetch(conn, "verify_running_without_lease"),
                "every RUNNING row has a live lease",
                lambda n: f"{n} RUNNING row(s) without a live lease (no worker to reclaim?)",
            ),
            _pending(fetch(conn, "verify_pending_reasons")),
            _violations(
                "attempts <= max_attempts",
                fetch(conn, "verify_attempts_over_max"),
                "holds for every row",
                lambda n: f"{n} row(s) with more attempts than max_attempts",
            ),
            _violations(
                "errors_json consistent with attempts",
                fetch(conn, "verify_errors_vs_attempts"),
                "every failed attempt left its error",
                lambda n: f"{n} row(s) whose errors do not account for their attempts",
            ),
            _violations(
                "chains ended consistently",
                fetch(conn, "verify_chains"),
                "children ran only after their parent succeeded",
                lambda n: f"{n} chain child(ren) inconsistent with their parent",
            ),
            _violations(
                "chords ended consistently",
                fetch(conn, "verify_chords"),
                "counts match members; callbacks released only after every member",
                lambda n: f"{n} chord(s) inconsistent",
            ),
        ]
        if not has_executions(conn):
            skipped = "no reproq_torture_executions table (run `reproq torture`)"
            for name in (
                "no task executed twice concurrently",
                "no two executions of one lock_key overlapped",
                "concurrency limits never exceeded",
                "chain children and chord callbacks ran after their predecessors",
            ):
                results.append(Result(name, "SKIP", skipped))
            return results
        summary = fetch(conn, "verify_executions_summary")[0]
        judged = (
            f"{summary['executions']} executions of {summary['tasks']} tasks"
            f" ({summary['unfinished']} killed before they ended, not judged)"
        )
        results += [
            _violations(
                "no task executed twice concurrently",
                fetch(conn, "verify_task_overlap"),
                judged,
                lambda n: f"{n} execution(s) began while the same task was still running",
            ),
            _violations(
                "no two executions of one lock_key overlapped",
                fetch(conn, "verify_lock_key_overlap"),
                "never",
                lambda n: f"{n} execution(s) began while another of their lock_key ran",
            ),
            _concurrency(fetch(conn, "verify_concurrency_peaks")),
            _violations(
                "chain children and chord callbacks ran after their predecessors",
                fetch(conn, "verify_workflow_order"),
                "always",
                lambda n: f"{n} ran before a predecessor ended",
            ),
        ]
        torture = int(fetch(conn, "verify_torture_count")[0]["n"])
        if torture:
            results.append(
                _violations(
                    "torture tasks reached their expected final state",
                    fetch(conn, "verify_torture_expected"),
                    f"all {torture}; delayed ones never started early",
                    lambda n: f"{n} of {torture} did not (or a delayed one started early)",
                )
            )
    return results
