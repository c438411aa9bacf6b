"""`reproq verify`: the queue's invariants, one PASS / FAIL / SKIP line each."""

from __future__ import annotations

from dataclasses import asdict

import click

from reproq_cli import console
from reproq_cli.commands._common import command_dsn, config_option, dsn_option, json_option
from reproq_cli.core.verify import run_checks
from reproq_cli.errors import EXIT_ERROR, ReproqError


@click.command(name="verify")
@dsn_option
@config_option
@json_option
def command(dsn: str | None, config_path: str | None, as_json: bool) -> None:
    """Check the invariants of the task tables; exit 1 when any fails.

    Leases (no RUNNING row without a live one), that every task is terminal or waiting for a
    documented reason, attempts within max_attempts, errors accounting for attempts, chains
    and chords ended consistently. With `reproq torture`'s execution log also: no task ran
    twice at once, no lock_key overlap, concurrency limits held, workflow order, and every
    torture task's expected final state. Run it once the workers have settled.
    """
    results = run_checks(command_dsn(dsn, config_path))
    failed = [r for r in results if r.status == "FAIL"]
    if as_json:
        console.print_json({"ok": not failed, "invariants": [asdict(r) for r in results]})
    else:
        for r in results:
            console.data(f"{r.status} {r.name}: {r.detail}")
            for example in r.examples:
                console.data(f"     {example}")
    if failed:
        raise ReproqError(
            f"{len(failed)} invariant(s) failed",
            hint="the FAIL lines show up to five offending rows each",
            exit_code=EXIT_ERROR,
        )
