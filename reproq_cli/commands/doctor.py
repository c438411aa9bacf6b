"""`reproq doctor`: one line per check, OK / WARN / FAIL with a hint."""

from __future__ import annotations

from dataclasses import asdict

import click

from reproq_cli import console
from reproq_cli.commands._common import config_option, dsn_option, json_option
from reproq_cli.core.doctor import run_checks
from reproq_cli.errors import EXIT_ERROR, ReproqError


@click.command(name="doctor")
@config_option
@dsn_option
@json_option
@click.option("--strict", is_flag=True, help="Warnings fail too.")
def command(config_path: str | None, dsn: str | None, as_json: bool, strict: bool) -> None:
    """Check configuration, database, schema, executor, allow-list, logs dir and metrics."""
    checks = run_checks(config_path, dsn)
    failed = [c for c in checks if c.status == "FAIL" or (strict and c.status == "WARN")]
    if as_json:
        console.print_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        for c in checks:
            line = f"{c.status:<4} {c.name}: {c.detail}"
            console.data(line + (f" (hint: {c.hint})" if c.hint and c.status != "OK" else ""))
    if failed:
        raise ReproqError(
            f"doctor found {len(failed)} problem(s)",
            hint="fix the FAIL lines above" + (" (and WARN, with --strict)" if strict else ""),
            exit_code=EXIT_ERROR,
        )
