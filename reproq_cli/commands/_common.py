"""Options and helpers shared by several subcommands."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from reproq_cli import console
from reproq_cli.config import Config, parse_go_int, resolve
from reproq_cli.db.connect import require_dsn
from reproq_cli.defaults import Mode


class _Int64(click.ParamType):
    """What Go's flag.Int and flag.Int64 take (0x10, 010 octal, 1_000); a number past 64
    bits is a usage error, not a lookup."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_go_int(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


INT64 = _Int64()


def dsn_option[F: Callable[..., Any]](func: F) -> F:
    return click.option(
        "--dsn",
        default=None,
        metavar="DSN",
        help="PostgreSQL DSN, URL or key=value [env: DATABASE_URL].",
    )(func)


def _first(_ctx: click.Context, _param: click.Parameter, given: tuple[str, ...]) -> str | None:
    # The Go worker scans its arguments for the first --config; click keeps the last.
    return given[0] if given else None


def config_option[F: Callable[..., Any]](func: F) -> F:
    return click.option(
        "--config",
        "config_path",
        multiple=True,
        callback=_first,
        metavar="PATH",
        help="Config file (.yaml/.yml/.toml) [env: REPROQ_CONFIG; default: ./reproq.yaml]; "
        "the first one given counts.",
    )(func)


def json_option[F: Callable[..., Any]](func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def load_config(
    mode: Mode,
    *,
    config_path: str | None,
    flags: dict[str, Any],
    only: frozenset[str] | None = None,
) -> Config:
    config = resolve(mode, flags=flags, config_path=config_path, only=only)
    for message in config.warnings:
        console.warning(message)
    return config


def command_dsn(dsn: str | None, config_path: str | None) -> str:
    """The DSN a database command uses: --dsn, DATABASE_URL, the config file, else embedded."""
    config = load_config(
        "worker", config_path=config_path, flags={"dsn": dsn}, only=frozenset({"dsn"})
    )
    return database_url(config)


def database_url(config: Config) -> str:
    """The configured DSN, or the embedded server's (announced on stderr)."""
    dsn, notice = require_dsn(config.get("dsn"), os.environ)
    if notice:
        console.notice(notice)
    return dsn


def render_rows(headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (the Go format) otherwise."""
    if console.is_terminal():
        from rich.table import Table

        table = Table(*headers)
        for row in rows:
            table.add_row(*row)
        console.out.print(table)
        return
    console.data("\t".join(headers))
    for row in rows:
        console.data("\t".join(row))


def usage_group(name: str) -> Callable[[Callable[..., Any]], click.Group]:
    """A click group that, like the Go binary, prints its usage to stdout and exits 0 when no
    subcommand is given."""

    def decorate(func: Callable[..., Any]) -> click.Group:
        @click.pass_context
        def callback(ctx: click.Context) -> None:
            if ctx.invoked_subcommand is None:
                console.data(ctx.get_help())

        callback.__doc__ = func.__doc__
        return click.group(name=name, invoke_without_command=True)(callback)

    return decorate
