"""The one error type the CLI reports, and its exit codes.

Anything a user can fix (bad input, an unreachable database, a missing table) is raised as a
``ReproqError`` subclass; the single boundary in ``reproq_cli.cli`` prints it as
``error: <message>`` plus ``hint: <fix>`` on stderr and exits with its code. Anything else is
a bug and is reported as such.
"""

from __future__ import annotations

# Exit codes. 0/1/2 match the Go worker (success / fatal / usage); 3 is ours for bugs.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "an error the message explains (bad input, database unreachable, check failed)",
    EXIT_USAGE: "bad command-line usage (unknown flag, bad flag value)",
    EXIT_INTERNAL: "internal error: a bug in reproq (rerun with -v and report the traceback)",
}


class ReproqError(Exception):
    """Base for every error the user can act on."""

    exit_code: int = EXIT_ERROR

    def __init__(
        self, message: str, *, hint: str | None = None, exit_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class ConfigError(ReproqError):
    """A configuration file, environment variable or flag value is invalid."""


class DatabaseError(ReproqError):
    """The database could not be reached or refused an operation."""

    # The server refused a value the statement carried (a data exception, SQLSTATE class
    # 22): sending the same statement again cannot succeed.
    refused_data: bool = False


class SchemaError(ReproqError):
    """The database schema is missing objects reproq needs."""


class UsageError(ReproqError):
    """The command line is wrong."""

    exit_code = EXIT_USAGE


class MissingArgument(ReproqError):
    """Flags that parsed but are missing or cannot be used as given (``--id`` left at 0,
    ``--rate -1``). The Go worker's operator commands report these as fatal: exit 1, where
    a flag that does not parse at all is a usage error (exit 2)."""
