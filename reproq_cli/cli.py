"""The ``reproq`` root command and the single error boundary.

Subcommands live one per module in ``reproq_cli.commands`` and are imported only when they
run, so ``reproq --help`` and ``reproq --version`` stay fast (hatch's lazy-command pattern).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from reproq_cli import __version__, console
from reproq_cli.errors import EXIT_ERROR, EXIT_INTERNAL, EXIT_OK, ReproqError

# name -> (module, attribute, one-line help shown by `reproq --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "beat": ("reproq_cli.commands.beat", "command", "Enqueue periodic tasks when due."),
    "cancel": ("reproq_cli.commands.cancel", "command", "Request cancellation of a running task."),
    "config": ("reproq_cli.commands.config", "command", "Print the effective configuration."),
    "doctor": (
        "reproq_cli.commands.doctor",
        "command",
        "Check configuration, database and executor.",
    ),
    "embedded": (
        "reproq_cli.commands.embedded",
        "command",
        "Manage the embedded PostgreSQL used when no DSN is set.",
    ),
    "limit": ("reproq_cli.commands.limit", "command", "Manage rate limits."),
    "logs": ("reproq_cli.commands.logs", "command", "Print a task's persisted logs."),
    "migrate": ("reproq_cli.commands.migrate", "command", "Create or upgrade the schema."),
    "prune": ("reproq_cli.commands.prune", "command", "Delete expired tasks."),
    "queue": ("reproq_cli.commands.queue", "command", "Pause, resume and list queues."),
    "replay": ("reproq_cli.commands.replay", "command", "Run a task again as a new row."),
    "stats": ("reproq_cli.commands.stats", "command", "Counts, workers and periodic tasks."),
    "top": ("reproq_cli.commands.top", "command", "Live view of queues and workers."),
    "torture": (
        "reproq_cli.commands.torture",
        "command",
        "Run a mixed workload with chaos; check it with verify.",
    ),
    "triage": ("reproq_cli.commands.triage", "command", "Inspect and retry failed tasks."),
    "verify": ("reproq_cli.commands.verify", "command", "Check the task tables' invariants."),
    "version": ("reproq_cli.commands.version", "command", "Print the version."),
    "worker": ("reproq_cli.commands.worker", "command", "Claim and run tasks."),
}

_verbose = False


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute, _ = entry
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def version_line() -> str:
    return f"reproq {__version__}"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        console.data(version_line())
        ctx.exit(EXIT_OK)


@click.group(
    cls=LazyGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def root(ctx: click.Context, verbose: bool) -> None:
    """reproq: Postgres-only background tasks for Django.

    Configuration precedence for worker and beat: built-in defaults < config file
    (reproq.yaml/.toml) < environment variables < flags. `reproq config --explain` shows where
    each value comes from.
    """
    global _verbose
    _verbose = verbose
    if ctx.invoked_subcommand is None:
        # The Go binary prints its usage and exits 1 when no command is given.
        console.data(ctx.get_help())
        ctx.exit(EXIT_ERROR)


def _require_utf8(args: list[str]) -> None:
    # Python keeps undecodable bytes as lone surrogates, which every encode (a query, a
    # file name in a message) then fails on, far from here, as an internal error.
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise ReproqError(
                f"argument {os.fsencode(arg)!r} is not valid UTF-8",
                hint="pass the value in UTF-8",
            ) from None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI; every error a user can fix ends here as `error:`/`hint:` lines."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _require_utf8(args)
        result = root.main(args=args, prog_name="reproq", standalone_mode=False)
    except ReproqError as exc:
        if _verbose:
            import traceback  # only with -v: `reproq --help` start-up pays for each import

            traceback.print_exc()
        console.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.error("aborted")
        sys.exit(130)
    except click.UsageError as exc:
        # click's own form is four lines (usage, a --help pointer, a blank, the error); ours
        # is the error and where the usage is, like every other error.
        where = exc.ctx.command_path if exc.ctx is not None else "reproq"
        console.error(exc.format_message(), f"see `{where} --help`")
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        console.error(exc.format_message())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(130)
    except Exception as exc:
        if _verbose:
            import traceback

            traceback.print_exc()
        console.error(
            f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug in reproq; rerun with -v for the traceback and report it",
        )
        sys.exit(EXIT_INTERNAL)
    sys.exit(result if isinstance(result, int) else EXIT_OK)
