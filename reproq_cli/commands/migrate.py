"""`reproq migrate`: create or upgrade the schema, print it, or check it."""

from __future__ import annotations

import click

from reproq_cli import console
from reproq_cli.commands._common import (
    command_dsn,
    config_option,
    dsn_option,
    json_option,
)
from reproq_cli.config import mask_dsn
from reproq_cli.db import schema
from reproq_cli.db.connect import connection
from reproq_cli.errors import SchemaError, UsageError


@click.command(name="migrate")
@dsn_option
@config_option
@click.option("--print", "print_only", is_flag=True, help="Print the DDL; needs no database.")
@click.option("--check", is_flag=True, help="List missing schema objects; exit 1 if any.")
@json_option
def command(
    dsn: str | None, config_path: str | None, print_only: bool, check: bool, as_json: bool
) -> None:
    """Create or upgrade the reproq tables, indexes and trigger (idempotent).

    Works on an empty database and on one created by the Go worker's baseline or by
    reproq-django's migrate-worker; running it again changes nothing.
    """
    if print_only and check:
        raise UsageError("--print and --check exclude each other", hint="give one of them")
    if print_only:
        console.data(schema.ddl_text())
        return
    url = command_dsn(dsn, config_path)
    with connection(url) as conn:
        if check:
            problems = schema.check(conn)
            if as_json:
                console.print_json({"ok": not problems, "missing": problems})
            else:
                for problem in problems:
                    console.data(problem)
            if problems:
                raise SchemaError(
                    f"schema incomplete: {len(problems)} problem(s) in {mask_dsn(url)}",
                    hint="run `reproq migrate` to create what is missing",
                )
            if not as_json:
                console.data("schema complete")
            return
        applied = schema.apply(conn)
        problems = schema.check(conn)
    if problems:
        raise SchemaError(
            "schema still incomplete after migrating: " + "; ".join(problems),
            hint="another tool may have changed the tables; see `reproq migrate --check`",
        )
    if as_json:
        console.print_json({"ok": True, "applied": applied, "dsn": mask_dsn(url)})
    else:
        console.data(f"schema up to date ({', '.join(applied)}) on {mask_dsn(url)}")
