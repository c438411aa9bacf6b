"""``manage.py reproq <subcommand>`` (reproq-django.md §5).

Process-level work (worker, beat, schema, configuration) is done by the ``reproq`` CLI, run as
a child process with the project's database and settings in its environment; table-level
chores (stats, queue pause/resume, recurring sync, stress test) use the ORM here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections, transaction
from django.tasks import task_backends
from django.utils import timezone
from psycopg import conninfo, pq

from reproq_cli.defaults import DEFAULT_PYTHON_BIN_ENV, EMBEDDED_ENV
from reproq_django import binary
from reproq_django.binary import worker_command
from reproq_django.db import default_db_alias, queue_db_aliases
from reproq_django.schema import TABLES

if TYPE_CHECKING:
    from reproq_cli.config import Config

PASSTHROUGH = ("worker", "beat", "schedule", "config", "doctor")


def _django_options() -> argparse.ArgumentParser:
    """Django's options for every command, as they may follow a pass-through subcommand
    (``manage.py reproq worker --burst --settings x``); long forms only, exact names."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--settings")
    parser.add_argument("--pythonpath")
    parser.add_argument("--verbosity", type=int, choices=[0, 1, 2, 3])
    for flag in ("--traceback", "--no-color", "--force-color", "--skip-checks"):
        parser.add_argument(flag, action="store_true")
    return parser


def known_alias(alias: str) -> str:
    """``alias`` if it is in DATABASES; a wrong ``--database`` must not fall through to
    another database (the CLI's own DSN, or the embedded server)."""
    if alias not in settings.DATABASES:
        raise CommandError(
            f"--database {alias!r} is not in DATABASES; use one of: "
            + ", ".join(sorted(settings.DATABASES))
        )
    return alias


def database_dsn(alias: str | None = None) -> str | None:
    """A libpq DSN for a Django database alias (DATABASE_URL wins when no alias is asked for).

    None when no alias is asked for and the default database is not PostgreSQL: the CLI then
    uses its own configuration. An alias asked for must be a PostgreSQL database."""
    if alias is None and os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    db = (
        settings.DATABASES[known_alias(alias)]
        if alias
        else settings.DATABASES.get(default_db_alias())
    )
    if not db or "postgresql" not in db.get("ENGINE", ""):
        if alias:
            engine = (db or {}).get("ENGINE", "") or "no ENGINE"
            raise CommandError(
                f"--database {alias!r} is {engine}, not PostgreSQL; reproq's worker needs a "
                "PostgreSQL database"
            )
        return None
    # Django's own connection parameters, OPTIONS included (service, sslmode, options such
    # as a search_path, ...): without them the CLI reached another database, or the same
    # one without TLS. Django's keys that libpq does not know (cursor_factory, context,
    # prepare_threshold, pool) stay behind.
    connection = connections[alias or default_db_alias()]
    try:
        params = connection.get_connection_params()
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from None
    keywords = _libpq_keywords()
    kept = {k: str(v) for k, v in params.items() if k in keywords and v not in (None, "")}
    role = connection.settings_dict.get("OPTIONS", {}).get("assume_role")
    if role:
        # Django runs SET ROLE on each new connection; a role in libpq's startup options does
        # the same for the CLI's. Without it, the worker wrote rows as the login user.
        setting = "-c role=" + re.sub(r"([\\ ])", r"\\\1", str(role))
        kept["options"] = f"{kept['options']} {setting}" if kept.get("options") else setting
    return conninfo.make_conninfo(**kept)


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def discover_allowed_modules() -> tuple[list[str], list[str]]:
    """Module prefixes of every Django Task defined in installed apps' ``tasks`` modules."""
    paths, problems = discover_tasks()
    return sorted({path.rsplit(".", 1)[0] + "." for path in paths}), problems


def discover_tasks() -> tuple[list[str], list[str]]:
    """Paths of every Django Task defined in installed apps' ``tasks`` modules, and the
    modules that could not be imported."""
    import importlib
    import pkgutil

    from django.apps import apps
    from django.tasks import Task

    paths: set[str] = set()
    problems: list[str] = []
    for config in apps.get_app_configs():
        name = f"{config.name}.tasks"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                problems.append(f"{name}: {exc}")
            continue
        except Exception as exc:
            problems.append(f"{name}: {exc}")
            continue
        modules = [module]
        if hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, prefix=f"{name}."):
                try:
                    modules.append(importlib.import_module(info.name))
                except Exception as exc:
                    problems.append(f"{info.name}: {exc}")
        for mod in modules:
            for value in vars(mod).values():
                if isinstance(value, Task):
                    paths.add(value.module_path)
    return sorted(paths), problems


def housekeeping(
    sub: Any, name: str, helptext: str, older_than: str, *, limit: bool = True
) -> argparse.ArgumentParser:
    """A subcommand with the flags every housekeeping command shares."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=helptext)
    parser.add_argument("--older-than", default=older_than)
    if limit:
        parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--database", default=None)
    parser.add_argument("--all-databases", action="store_true")
    return parser


def job_name(prefix: str, task_name: str) -> str:
    """pg_cron job name: prefix + sanitised task name, at most 63 characters (hash-suffixed
    when it had to be shortened or changed, so two tasks never share a job)."""
    import hashlib
    import re

    clean = re.sub(r"[^A-Za-z0-9_]", "_", task_name)
    name = f"{prefix}_{clean}"
    if clean != task_name or len(name) > 63:
        suffix = hashlib.sha256(task_name.encode()).hexdigest()[:8]
        name = f"{name[: 63 - 9]}_{suffix}"
    return name


def enqueue_command(task_name: str) -> str:
    """The SQL pg_cron runs for one schedule (the name as a properly quoted literal)."""
    quoted = "'" + task_name.replace("'", "''") + "'"
    return f"SELECT reproq_enqueue_periodic_task({quoted})"


def parse_age(text: str) -> dt.timedelta:
    """``<int><s|m|h|d>``, as reproq-django's housekeeping flags.

    reproq-django read an empty value as zero; here it is an error, because these flags
    choose what to delete, and an unset shell variable (``--older-than "$AGE"``) then pruned
    every finished row."""
    text = text.strip()
    if not text:
        raise CommandError("--older-than is empty: give an age such as 7d (0s for any age)")
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit():
        raise CommandError(f"invalid age {text!r}: use a whole number with s, m, h or d (e.g. 7d)")
    return dt.timedelta(**{units[unit]: int(number)})


def check_limit(limit: int) -> int:
    """``--limit`` as given; a negative one is refused, because ``limit > 0`` alone read it
    as "no limit", and a slip in a script's arithmetic then acted on every matching row."""
    if limit < 0:
        raise CommandError(
            f"--limit must be 0 (no limit) or a positive number, not {limit}; "
            "give the number of rows to act on"
        )
    return limit


def take_option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value of ``name`` in pass-through args (``--name V`` or ``--name=V``; the last one
    wins, as with argparse) and the args without it."""
    value: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == name:
            if i + 1 >= len(args):
                raise CommandError(f"{name} needs a value: {name} VALUE")
            value = args[i + 1]
            i += 2
            continue
        if arg.startswith(f"{name}="):
            value = arg.partition("=")[2]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def _cli_config(cli_args: list[str], env: dict[str, str]) -> Config | None:
    """The worker configuration the CLI will resolve from its file and ``env`` (the flags
    aside); None when the file is broken, which the CLI reports itself."""
    from reproq_cli.config import resolve
    from reproq_cli.errors import ReproqError

    explicit = None
    for i, arg in enumerate(cli_args):
        if arg == "--config" and i + 1 < len(cli_args):
            explicit = cli_args[i + 1]
        elif arg.startswith("--config="):
            explicit = arg.partition("=")[2]
    try:
        return resolve("worker", config_path=explicit, env=env)
    except ReproqError:
        return None


def _file_sets_allowed_modules(cli_args: list[str], env: dict[str, str]) -> bool:
    """Whether the config file the CLI will read sets worker.allowed_task_modules: the
    variable set for it would outrank the file (env > file), so it is left alone then."""
    config = _cli_config(cli_args, env)
    return config is not None and config.values["worker.allowed_task_modules"].source == "file"


def _cli_finds_a_dsn(cli_args: list[str], env: dict[str, str]) -> bool:
    """Whether the CLI has a database of its own to go to: --dsn, a DSN in its config file or
    environment, libpq's PG* variables, or the embedded server turned on by name."""
    from reproq_cli.db import embedded
    from reproq_cli.db.connect import has_libpq_location
    from reproq_cli.errors import ReproqError

    if any(arg == "--dsn" or arg.startswith("--dsn=") for arg in cli_args):
        return True
    if has_libpq_location(env):
        return True
    if env.get(EMBEDDED_ENV, "").strip():
        try:
            if embedded.fallback_enabled(env):
                return True
        except ReproqError:
            return True  # a value that is not a boolean: the CLI says so itself
    config = _cli_config(cli_args, env)
    return config is None or bool(config.values["dsn"].value)


def write_file(path: Path, text: str) -> None:
    """Write a file the user asked for; a path that cannot be written is a one-line error."""
    try:
        path.write_text(text)
    except OSError as exc:
        raise CommandError(
            f"cannot write {path}: {exc.strerror or exc}; choose a path in an existing, "
            "writable directory"
        ) from None


def toml_text(data: dict[str, Any]) -> str:
    """A config file's data as TOML (tomllib only reads it): tables for mappings, the rest
    inline. Comments and layout of the original are not kept."""
    import json
    import re

    def key(name: Any) -> str:
        text = str(name)
        return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text)

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)  # inf and nan are TOML's spellings too
        if isinstance(item, str):
            return json.dumps(item, ensure_ascii=False)  # JSON's escapes are TOML's
        if isinstance(item, dt.datetime | dt.date | dt.time):
            return item.isoformat()
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        if isinstance(item, dict):
            return "{" + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + "}"
        raise CommandError(f"cannot write {item!r} as TOML; edit the config file by hand")

    lines: list[str] = []

    def table(name: str, mapping: dict[str, Any]) -> None:
        plain = {k: v for k, v in mapping.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in mapping.items() if isinstance(v, dict)}
        if name and (plain or not nested):
            lines.append(f"[{name}]")
        lines.extend(f"{key(k)} = {value(v)}" for k, v in plain.items())
        if plain or name:
            lines.append("")
        for k, v in nested.items():
            table(f"{name}.{key(k)}" if name else key(k), v)

    table("", data)
    return "\n".join(lines).rstrip("\n") + "\n"


def example_config(suffix: str, allowed: list[str]) -> str:
    """A commented starting config; the DSN is left to DATABASE_URL or manage.py."""
    modules = allowed or ["myapp.tasks."]
    if suffix == ".toml":
        quoted = ", ".join(f'"{m}"' for m in modules)
        return (
            "# reproq worker/beat settings; `reproq config --explain` shows the effective values.\n"
            "[worker]\n"
            'queues = ["default"]\n'
            "concurrency = 10\n"
            f"allowed_task_modules = [{quoted}]\n"
            "\n[beat]\n"
            'interval = "30s"\n'
        )
    listed = "".join(f"    - {m}\n" for m in modules)
    return (
        "# reproq worker/beat settings; `reproq config --explain` shows the effective values.\n"
        "worker:\n"
        "  queues: [default]\n"
        "  concurrency: 10\n"
        f"  allowed_task_modules:\n{listed}"
        "beat:\n"
        "  interval: 30s\n"
    )


def _check_worker_flags(options: dict[str, Any], keys: dict[str, str]) -> None:
    """Refuse now what `reproq worker` would refuse when a written unit starts it."""
    from reproq_cli.config import check_flag
    from reproq_cli.errors import ReproqError

    for option, key in keys.items():
        if options[option] in (None, ""):
            continue
        try:
            check_flag("worker", key, options[option])
        except ReproqError as exc:
            raise CommandError(f"{exc}; {exc.hint}" if exc.hint else str(exc)) from None


# Words systemd reads as written in ExecStart= (no quoting, escapes, specifiers or variables).
_UNIT_PLAIN_WORD = r"[A-Za-z0-9_./:,=+@-]+"


def unit_literal(value: str, what: str) -> str:
    """``value`` for a setting systemd takes verbatim but for ``%`` specifiers
    (WorkingDirectory=, EnvironmentFile=, User=, Description=, OnCalendar=): no quoting
    exists there, so what systemd would still change is refused (systemd.syntax(7))."""
    if value != value.strip() or value.endswith("\\"):
        raise CommandError(
            f"{what} {value!r} starts or ends with a space or ends with a backslash, which "
            "systemd strips or reads as a line continuation; give it without them"
        )
    return value.replace("%", "%%")


def unit_quoted(value: str, *, variables: bool = True) -> str:
    """``value`` as one double-quoted word of ExecStart= or Environment= (systemd.service(5),
    "Command lines"; systemd.exec(5), Environment=): ``\\`` and ``"`` escaped (quoted words
    are C-unescaped), ``%`` doubled (specifiers are expanded everywhere) and, where systemd
    substitutes ``$VAR``/``${VAR}`` (ExecStart= arguments), ``$`` doubled."""
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if variables:
        text = text.replace("$", "$$")
    return f'"{text}"'


def unit_word(value: str, *, variables: bool = True) -> str:
    """``value`` as one ExecStart= word: as it is when plain, else quoted."""
    if re.fullmatch(_UNIT_PLAIN_WORD, value):
        return value
    return unit_quoted(value, variables=variables)


def exec_start(argv: list[str]) -> str:
    """An ExecStart= value that systemd splits into exactly ``argv``."""
    program, *args = argv
    if any(ch in program for ch in "\"'\\"):
        raise CommandError(
            f"systemd refuses {program!r} as a program: it holds a quote or a backslash; "
            "run this command with a Python whose path has neither"
        )
    words = [unit_word(arg) for arg in args]
    if "$" in program:
        # systemd runs the path as written but substitutes variables in argv[0], from which
        # Python finds its virtualenv: `@` gives argv[0] as an argument of its own.
        return " ".join(["@" + unit_word(program, variables=False), unit_word(program), *words])
    return " ".join([unit_word(program, variables=False), *words])


def unit_name(text: str) -> str:
    """``text`` as part of a unit file name: systemd refuses names with spaces, ``%`` and
    most other characters, so those become ``-``; unit names are at most 255 characters."""
    return re.sub(r"[^A-Za-z0-9_.:-]+", "-", text).strip("-")[:200] or "project"


def install_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `install`, also taken by `upgrade` and `init`, which run it."""
    parser.add_argument("--tag", default=None, help="release tag (default: v<this version>)")
    parser.add_argument("--source", default=None, help="a .pyz URL or path instead of a tag")
    parser.add_argument("--build", action="store_true", help="build it with build/shiv.sh")
    parser.add_argument(
        "--insecure-skip-verify",
        action="store_true",
        help="install without checking the published .sha256",
    )


class Command(BaseCommand):
    help = "Run and manage reproq: worker, beat, schema, stats and queue controls."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        for name, helptext in (
            ("worker", "run `reproq worker` for this project (extra flags are passed on)"),
            ("beat", "run `reproq beat` for this project (extra flags are passed on)"),
            ("schedule", "one beat pass (`reproq beat --once`)"),
            ("config", "print the effective worker configuration (`reproq config`)"),
            ("doctor", "check configuration, database, schema and executor (`reproq doctor`)"),
        ):
            p = sub.add_parser(name, help=helptext)
            p.add_argument("--database", default=None, help="Django database alias")
        p = sub.add_parser("migrate-worker", help="create or upgrade the reproq tables")
        p.add_argument("--database", default=None)
        p.add_argument("--check", action="store_true")
        for name in ("stats", "status"):
            p = sub.add_parser(name, help="task counts by status and the workers")
            p.add_argument("--database", default=None)
            p.add_argument("--all-databases", action="store_true")
        p = sub.add_parser("pause-queue", help="stop workers from claiming a queue")
        p.add_argument("queue")
        p.add_argument("--reason", default="")
        p.add_argument("--database", default=None)
        p = sub.add_parser("resume-queue", help="let workers claim a paused queue again")
        p.add_argument("queue")
        p.add_argument("--database", default=None)
        p = sub.add_parser("allowlist", help="task module prefixes for ALLOWED_TASK_MODULES")
        p.add_argument("--format", choices=["env", "plain"], default="env")
        p.add_argument("--show-tasks", action="store_true")
        p.add_argument(
            "--write",
            action="store_true",
            help="set worker.allowed_task_modules in the config file",
        )
        p.add_argument("--config", default=None, help="the config file for --write")
        p = sub.add_parser("sync-recurring", help="write @recurring tasks to periodic_tasks")
        p.add_argument("--database", default=None)
        p.add_argument("--clear-missing", action="store_true")
        p = sub.add_parser("stress-test", help="enqueue many no-op tasks and report the rate")
        p.add_argument("--count", type=int, default=100)
        p.add_argument("--sleep", type=float, default=0.0)
        p.add_argument("--bulk", action="store_true")
        p = sub.add_parser("check", help="check the CLI, database and tables")
        p.add_argument("--database", default=None)
        p = sub.add_parser("systemd", help="write systemd units for worker and beat into the cwd")
        p.add_argument("--user", default=None)
        p.add_argument("--group", default=None)
        p.add_argument("--concurrency", type=int, default=10)
        p.add_argument("--queues", default="")
        p.add_argument("--allowed-task-modules", default="")
        p.add_argument("--logs-dir", default="")
        p.add_argument("--payload-mode", default="")
        p.add_argument("--metrics-port", type=int, default=0)
        p.add_argument("--metrics-addr", default="")
        p.add_argument("--metrics-auth-token", default="")
        p.add_argument("--metrics-allow-cidrs", default="")
        p.add_argument("--env-file", default="")
        p.add_argument("--schedule", action="store_true")
        p.add_argument("--schedule-on-calendar", default="*-*-* *:*:00")
        p = sub.add_parser("init", help="write reproq.yaml, install the reproq binary and migrate")
        p.add_argument("--config", default=None)
        p.add_argument("--format", choices=["yaml", "toml"], default="yaml")
        p.add_argument("--force", action="store_true")
        p.add_argument("--skip-install", action="store_true", help="do not run `install`")
        p.add_argument("--skip-migrate", action="store_true", help="do not run Django's migrate")
        p.add_argument(
            "--skip-worker-migrate", action="store_true", help="do not run `migrate-worker`"
        )
        install_flags(p)
        p = housekeeping(sub, "reclaim", "requeue or fail RUNNING tasks with expired leases", "0s")
        p.add_argument("--action", choices=["requeue", "fail"], default="requeue")
        p.add_argument("--include-null-lease", action="store_true")
        housekeeping(
            sub, "prune-workers", "delete workers not seen for a while", "10m", limit=False
        )
        housekeeping(sub, "prune-successful", "delete old SUCCESSFUL task rows", "7d")
        p = housekeeping(sub, "prune", "delete old task rows in the given statuses", "7d")
        p.add_argument("--statuses", default="SUCCESSFUL,FAILED,CANCELLED")
        p.add_argument(
            "--field",
            choices=["finished_at", "updated_at", "enqueued_at", "started_at"],
            default="finished_at",
        )
        p = sub.add_parser("logs", help="print a task's logs (`reproq logs`)")
        p.add_argument("--id", required=True, help="result id (alias:id allowed)")
        p.add_argument("--tail", type=int, default=200)
        p.add_argument("--max-bytes", type=int, default=1_000_000)
        p.add_argument("--show-path", action="store_true")
        p.add_argument("--database", default=None)
        p = sub.add_parser(
            "cancel", help="request cancellation of a running task (`reproq cancel`)"
        )
        p.add_argument("--id", required=True, help="result id (alias:id allowed)")
        p.add_argument("--database", default=None)
        p = sub.add_parser("pg-cron", help="schedule periodic tasks with pg_cron instead of beat")
        action = p.add_mutually_exclusive_group()
        action.add_argument("--install", action="store_true", help="(default)")
        action.add_argument("--remove", action="store_true")
        p.add_argument("--prefix", default="reproq_periodic")
        p.add_argument("--dry-run", action="store_true")
        p.add_argument("--if-supported", action="store_true")
        p.add_argument("--database", default=None)
        for name, helptext in (
            ("install", "download, verify and install the reproq.pyz for this machine"),
            ("upgrade", "install, then migrate-worker"),
        ):
            p = sub.add_parser(name, help=helptext)
            install_flags(p)
        p.add_argument("--skip-worker-migrate", action="store_true")
        p.add_argument("--database", default=None)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        """Flags this command does not know are passed on to the CLI for worker/beat/config."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def parse_args(args: Any = None, namespace: Any = None) -> argparse.Namespace:
            known, extras = parser.parse_known_args(args, namespace)
            # Django's own options given after the subcommand are Django's (a subparser
            # does not know them): `manage.py reproq stats --no-color`.
            django_options, extras = _django_options().parse_known_args(extras)
            for name, value in vars(django_options).items():
                if value not in (None, False):
                    setattr(known, name, value)
            if getattr(known, "subcommand", None) in PASSTHROUGH:
                known.cli_args = [a for a in extras if a != "--"]
                return known
            if extras:
                parser.error(f"unrecognized arguments: {' '.join(extras)}")
            return known

        parser.parse_args = parse_args  # type: ignore[method-assign]
        return parser

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["subcommand"].replace("-", "_")
        getattr(self, f"handle_{name}")(options)

    # --- CLI-driven subcommands ----------------------------------------------------------------

    def _cli_env(
        self,
        alias: str | None,
        cli_args: list[str] | None = None,
        *,
        fix: str = "pass --database ALIAS",
        needs_database: bool = True,
    ) -> dict[str, str]:
        env = dict(os.environ)
        dsn = database_dsn(alias)
        if dsn and (alias is not None or "DATABASE_URL" not in env):
            env["DATABASE_URL"] = dsn  # in the environment, not argv: keeps the password private
        if dsn is None:
            # This project's tasks are in a database that is not PostgreSQL (SQLite, say). The
            # CLI's embedded server, its fallback without a DSN, cannot hold them: a worker
            # there waited for tasks that never came, and `init` migrated it as if it were
            # the project's. A DSN of the CLI's own still applies.
            if needs_database and not _cli_finds_a_dsn(cli_args or [], env):
                engine = settings.DATABASES.get(default_db_alias(), {}).get("ENGINE") or "unset"
                raise CommandError(
                    f"DATABASES[{default_db_alias()!r}] is {engine}, not PostgreSQL, and reproq "
                    "has no DSN of its own; reproq needs the PostgreSQL database this project "
                    "enqueues into: point DATABASES at PostgreSQL, set DATABASE_URL or `dsn:` "
                    f"in reproq.yaml, or {fix}"
                )
            env.setdefault(EMBEDDED_ENV, "0")
        if os.environ.get("DJANGO_SETTINGS_MODULE") is None and settings.SETTINGS_MODULE:
            env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
        # Tasks need this project's packages: run the executor with this interpreter unless
        # the worker's config says otherwise (python3 on PATH may be another environment).
        env.setdefault(DEFAULT_PYTHON_BIN_ENV, sys.executable)
        return env

    def _run_cli(self, cli_args: list[str], env: dict[str, str]) -> None:
        command = [*worker_command(), *cli_args]
        self.stderr.write(f"Running: {' '.join(command)}")
        try:
            proc = subprocess.Popen(command, env=env)
        except OSError as exc:
            raise CommandError(
                f"cannot run {command[0]}: {exc.strerror or exc}; set REPROQ_WORKER_BIN or "
                "install reproq in this environment"
            ) from None

        def forward(signum: int, _frame: Any) -> None:
            proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if code != 0:
            # The CLI's own exit code (2 for a usage error), not manage.py's generic 1.
            raise CommandError(f"reproq {cli_args[0]} exited with status {code}", returncode=code)

    def _allowed_modules_env(
        self, options: dict[str, Any], *, needs_database: bool = True
    ) -> dict[str, str]:
        """The CLI's environment with ALLOWED_TASK_MODULES filled from the installed apps'
        tasks modules when neither the flag nor the variable sets it: what `worker` runs
        with, so `doctor` and `config` describe that worker."""
        cli_args = options.get("cli_args", [])
        env = self._cli_env(options["database"], cli_args, needs_database=needs_database)
        if (
            not any(a.startswith("--allowed-task-modules") for a in cli_args)
            and not env.get("ALLOWED_TASK_MODULES")
            and not _file_sets_allowed_modules(cli_args, env)
        ):
            prefixes, problems = discover_allowed_modules()
            for problem in problems:
                self.stderr.write(f"warning: could not import {problem}")
            if prefixes:
                env["ALLOWED_TASK_MODULES"] = ",".join(prefixes)
                self.stderr.write(
                    f"Auto-configured ALLOWED_TASK_MODULES={env['ALLOWED_TASK_MODULES']}"
                )
        return env

    def handle_worker(self, options: dict[str, Any]) -> None:
        queue, cli_args = take_option(options.get("cli_args", []), "--queue")
        if queue is not None:
            # reproq-django's deprecated single-queue flag; the CLI knows only --queues,
            # which wins when both are given (reproq-django ran `--queues (queues or queue)`).
            self.stderr.write("warning: --queue is deprecated; use --queues")
            if take_option(cli_args, "--queues")[0] is None:
                cli_args = ["--queues", queue, *cli_args]
        options = {**options, "cli_args": cli_args}
        env = self._allowed_modules_env(options)
        self._run_cli(["worker", *cli_args], env)

    def handle_beat(self, options: dict[str, Any]) -> None:
        cli_args = options.get("cli_args", [])
        self._run_cli(["beat", *cli_args], self._cli_env(options["database"], cli_args))

    def handle_schedule(self, options: dict[str, Any]) -> None:
        cli_args = options.get("cli_args", [])
        self._run_cli(["beat", "--once", *cli_args], self._cli_env(options["database"], cli_args))

    def handle_config(self, options: dict[str, Any]) -> None:
        # reproq-django's --print is what `config` does anyway; the CLI has no such flag.
        cli_args = [a for a in options.get("cli_args", []) if a != "--print"]
        mode, rest = take_option(cli_args, "--mode")
        # Shown without a database: the configuration is what it inspects.
        env = self._allowed_modules_env({**options, "cli_args": cli_args}, needs_database=False)
        if mode != "all":
            self._run_cli(["config", *cli_args], env)
            return
        if "--json" in rest:
            raise CommandError(
                "--mode all prints two views, --json one document; use --mode worker (which "
                "includes metrics) or --mode beat with --json"
            )
        # The worker's view holds the metrics settings too: worker, beat and metrics in all.
        for view in ("worker", "beat"):
            self._run_cli(["config", "--mode", view, *rest], env)

    def handle_doctor(self, options: dict[str, Any]) -> None:
        cli_args = options.get("cli_args", [])
        # Same line format as `reproq doctor`; kept off stdout when that prints JSON.
        report = self.stderr if "--json" in cli_args else self.stdout
        command = worker_command()
        try:
            version = binary.version_of(command)
        except CommandError as exc:
            report.write(f"FAIL binary: {exc}")
            raise CommandError(
                "the reproq binary does not run; run `python manage.py reproq install` or fix "
                "REPROQ_WORKER_BIN"
            ) from None
        mismatch = binary.version_mismatch(version)
        if mismatch:
            report.write(f"WARN binary: {' '.join(command)}: {mismatch}")
        else:
            report.write(f"OK   binary: {' '.join(command)} ({version})")
        self._run_cli(["doctor", *cli_args], self._allowed_modules_env(options))
        if mismatch and "--strict" in cli_args:
            raise CommandError(f"doctor --strict: {mismatch}")

    def handle_migrate_worker(self, options: dict[str, Any]) -> None:
        extra = ["--check"] if options["check"] else []
        self._run_cli(["migrate", *extra], self._cli_env(options["database"]))

    def handle_install(self, options: dict[str, Any]) -> None:
        target, version = binary.install(
            tag=options["tag"],
            source=options["source"],
            build_here=options["build"],
            verify=not options["insecure_skip_verify"],
            log=self.stderr.write,
        )
        self.stdout.write(f"Installed {version} at {target.resolve()}")

    def handle_upgrade(self, options: dict[str, Any]) -> None:
        # The database is checked before the binary is replaced: a wrong --database used to
        # fail only after the install had happened.
        env = (
            None
            if options["skip_worker_migrate"]
            else self._cli_env(
                options["database"], fix="pass --database ALIAS or --skip-worker-migrate"
            )
        )
        self.handle_install(options)
        if env is not None:
            self._run_cli(["migrate"], env)

    def _task_target(self, options: dict[str, Any]) -> tuple[str, str]:
        from reproq_django.db import parse_result_id

        alias, raw = parse_result_id(options["id"])
        return known_alias(options["database"] or alias), raw

    def handle_logs(self, options: dict[str, Any]) -> None:
        alias, raw = self._task_target(options)
        cli_args = ["logs", "--id", raw, "--tail", str(options["tail"])]
        cli_args += ["--max-bytes", str(options["max_bytes"])]
        if options["show_path"]:
            cli_args.append("--show-path")
        self._run_cli(cli_args, self._cli_env(alias))

    def handle_cancel(self, options: dict[str, Any]) -> None:
        """The admin's cancel for one row: `reproq cancel` marks RUNNING rows only, so a
        queued task was left to run and an unknown id looked like a success."""
        from reproq_django.models import TaskRun, TaskRunStatus
        from reproq_django.workflows import cancel_queued

        alias, raw = self._task_target(options)
        try:
            result_id = int(raw)
        except ValueError:
            raise CommandError(
                f"--id {options['id']!r} is not a task run id; give a number (or alias:number)"
            ) from None
        if not 0 < result_id < 2**63:  # past bigint the query itself would fail
            raise CommandError(f"Task run {options['id']} not found.")
        with transaction.atomic(using=alias):
            # Locked, so a worker cannot claim or finish the row between reading its status
            # and changing it.
            run = (
                TaskRun.objects.using(alias)
                .select_for_update()
                .only("status", "cancel_requested")
                .filter(result_id=result_id)
                .first()
            )
            if run is None:
                raise CommandError(f"Task run {options['id']} not found.")
            now = timezone.now()
            if run.status in TaskRunStatus.TERMINAL:
                self.stderr.write(
                    f"warning: task run {options['id']} is already {run.status}; nothing to cancel."
                )
            elif run.status == TaskRunStatus.RUNNING:
                if run.cancel_requested:
                    self.stderr.write("warning: Cancel already requested.")
                    return
                TaskRun.objects.using(alias).filter(result_id=result_id).update(
                    cancel_requested=True, updated_at=now
                )
                self.stdout.write(f"Cancellation requested for task run {options['id']}.")
            else:
                cancel_queued(TaskRun.objects.using(alias).filter(result_id=result_id))
                self.stdout.write(f"Cancelled task run {options['id']} (was {run.status}).")

    def handle_pg_cron(self, options: dict[str, Any]) -> None:
        from reproq_cli.db.connect import one_line
        from reproq_cli.db.queries import read_sql_resource
        from reproq_django.models import PeriodicTask

        alias = known_alias(options["database"] or default_db_alias())
        connection = connections[alias]
        if connection.vendor != "postgresql":
            if options["if_supported"]:
                self.stdout.write("pg-cron unavailable (non-Postgres database); skipping.")
                return
            raise CommandError("pg-cron requires a PostgreSQL database.")
        if "periodic_tasks" not in connection.introspection.table_names():
            raise CommandError("periodic_tasks is missing: run migrate first")
        with connection.cursor() as cursor:
            unavailable = _pg_cron_unavailable(cursor)
        prefix = options["prefix"]
        jobs = {
            job_name(prefix, task.name): task
            for task in PeriodicTask.objects.using(alias).filter(enabled=True).order_by("name")
            if task.cron_expr.strip()
        }
        if options["dry_run"]:
            if unavailable:
                self.stdout.write(f"note: {unavailable[0]}")
            if options["remove"]:
                self.stdout.write(f"would unschedule jobs named {prefix}_*")
                self.stdout.write(
                    "would drop function reproq_enqueue_periodic_task(text)"
                    " unless jobs under another prefix still call it"
                )
                return
            self.stdout.write("would create function reproq_enqueue_periodic_task(text)")
            for name, task in jobs.items():
                self.stdout.write(f"would schedule {name} '{task.cron_expr}' -> {task.name}")
            return
        if unavailable:
            if options["if_supported"]:
                self.stdout.write(f"pg-cron unavailable ({unavailable[2]}); skipping.")
                return
            raise CommandError(f"{unavailable[0]}: {unavailable[1]}")
        with connection.cursor() as cursor:
            try:
                with transaction.atomic(using=alias):
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
            except DatabaseError as exc:  # e.g. a role that may not create it
                raise CommandError(
                    f"cannot create the pg_cron extension: {one_line(exc)}; have a superuser run "
                    "CREATE EXTENSION pg_cron in cron.database_name's database, or use "
                    "`manage.py reproq beat`"
                ) from None
            cursor.execute(
                "SELECT cron.unschedule(jobname) FROM cron.job WHERE jobname LIKE %s",
                [prefix.replace("_", r"\_") + r"\_%"],
            )
            if options["remove"]:
                # Jobs under another --prefix still call the function: keep it for them.
                cursor.execute(
                    "SELECT count(*) FROM cron.job WHERE command LIKE %s",
                    [r"%reproq\_enqueue\_periodic\_task(%"],
                )
                if cursor.fetchone()[0]:
                    self.stdout.write(
                        f"Removed pg_cron jobs {prefix}_*; kept the function (other jobs call it)."
                    )
                    return
                cursor.execute("DROP FUNCTION IF EXISTS reproq_enqueue_periodic_task(text)")
                self.stdout.write(f"Removed pg_cron jobs {prefix}_* and the function.")
                return
            cursor.execute(read_sql_resource("pg_cron.sql"))
            for name, task in jobs.items():
                cursor.execute(
                    "SELECT cron.schedule(%s, %s, %s)",
                    [name, task.cron_expr, enqueue_command(task.name)],
                )
        self.stdout.write(f"Scheduled {len(jobs)} pg_cron job(s).")

    # --- housekeeping ---------------------------------------------------------------------------

    def handle_reclaim(self, options: dict[str, Any]) -> None:
        from django.db.models import Q

        from reproq_cli.core.policy import timestamp
        from reproq_django.models import TaskRun, appended
        from reproq_django.workflows import fail_dependents

        limit = check_limit(options["limit"])
        cutoff = timezone.now() - parse_age(options["older_than"])
        expired = Q(leased_until__lt=cutoff)
        if options["include_null_lease"]:
            expired |= Q(leased_until__isnull=True)
        total = 0
        for alias in self._aliases(options):
            rows = (
                TaskRun.objects.using(alias)
                .filter(expired, status="RUNNING", cancel_requested=False)
                .order_by("leased_until")
            )
            ids = list(rows.values_list("result_id", flat=True))
            if limit:
                ids = ids[:limit]
            total += len(ids)
            if options["dry_run"] or not ids:
                continue
            now = timezone.now()
            # Still RUNNING: a row its worker completed since it was listed keeps its outcome.
            targets = TaskRun.objects.using(alias).filter(result_id__in=ids, status="RUNNING")
            if options["action"] == "requeue":
                targets.update(
                    status="READY", run_after=now, leased_until=None, leased_by=None,
                    started_at=None, finished_at=None, updated_at=now,
                )  # fmt: skip
            else:
                with transaction.atomic(using=alias):
                    ended: list[tuple[int, Any]] = []
                    # Locked: a worker cannot complete the row between this read and the save.
                    for run in targets.select_for_update():
                        run.errors_json = appended(
                            run.errors_json,
                            {"at": timestamp(), "kind": "reclaim",
                             "message": "Failed by manage.py reproq reclaim"},
                        )  # fmt: skip
                        run.status = "FAILED"
                        run.finished_at = run.last_attempted_at = run.failed_at = now
                        run.last_error = "reclaim: Failed by manage.py reproq reclaim"
                        run.leased_until = run.leased_by = None
                        run.save(using=alias)
                        ended.append((run.result_id, run.workflow_id))
                    # A terminal failure, as when the worker's own reclaim fails a row:
                    # its chord callback and WAITING chain children must not wait forever.
                    fail_dependents(alias, ended)
        verb = "Would reclaim" if options["dry_run"] else "Reclaimed"
        self.stdout.write(f"{verb} {total} task(s) ({options['action']}).")

    def handle_prune_workers(self, options: dict[str, Any]) -> None:
        from reproq_django.models import Worker

        cutoff = timezone.now() - parse_age(options["older_than"])
        total = 0
        for alias in self._aliases(options):
            rows = Worker.objects.using(alias).filter(last_seen_at__lt=cutoff)
            total += rows.count() if options["dry_run"] else rows.delete()[0]
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(f"{verb} {total} worker(s).")

    def handle_prune_successful(self, options: dict[str, Any]) -> None:
        self._prune(options, ["SUCCESSFUL"], "finished_at")

    def handle_prune(self, options: dict[str, Any]) -> None:
        from reproq_django.models import TaskRunStatus

        statuses = [s.strip().upper() for s in options["statuses"].split(",") if s.strip()]
        if not statuses:
            raise CommandError("--statuses needs at least one status")
        if "RUNNING" in statuses:
            raise CommandError("refusing to prune RUNNING tasks; reclaim them first")
        known = {TaskRunStatus.READY, TaskRunStatus.WAITING, *TaskRunStatus.TERMINAL}
        unknown = [status for status in statuses if status not in known]
        if unknown:
            raise CommandError(
                f"--statuses: unknown status {', '.join(unknown)}; use {', '.join(sorted(known))}"
            )
        self._prune(options, statuses, options["field"])

    def _prune(self, options: dict[str, Any], statuses: list[str], field: str) -> None:
        from reproq_django.models import TaskRun

        limit = check_limit(options["limit"])
        cutoff = timezone.now() - parse_age(options["older_than"])
        total = 0
        for alias in self._aliases(options):
            rows = (
                TaskRun.objects.using(alias)
                .filter(status__in=statuses, **{f"{field}__lt": cutoff})
                .order_by(field)
            )
            ids = list(rows.values_list("result_id", flat=True))
            if limit:
                ids = ids[:limit]
            total += len(ids)
            if not options["dry_run"] and ids:
                TaskRun.objects.using(alias).filter(result_id__in=ids).delete()
        verb = "Would prune" if options["dry_run"] else "Pruned"
        self.stdout.write(f"{verb} {total} task(s).")

    # --- files ----------------------------------------------------------------------------------

    def handle_systemd(self, options: dict[str, Any]) -> None:
        import getpass
        import shlex

        cwd = Path.cwd()
        given = {f"--{key.replace('_', '-')}": value for key, value in options.items()}
        given |= {"the project directory": str(cwd), "this Python": sys.executable}
        for what, value in given.items():
            # A unit file is line-based: a newline in a value would add lines of its own.
            if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
                raise CommandError(
                    f"{what} {value!r} holds a control character (a newline?); give it on one line"
                )
        _check_worker_flags(
            options,
            {
                "concurrency": "worker.concurrency",
                "payload_mode": "worker.payload_mode",
                "metrics_port": "metrics.port",
            },
        )
        name = cwd.name
        if not (cwd / "manage.py").is_file():
            self.stderr.write(
                f"warning: no manage.py in {cwd}; the units run {cwd / 'manage.py'}: run this "
                "from the project's directory"
            )
        login = options["user"] or getpass.getuser()
        user = unit_literal(login, "--user")
        group = unit_literal(options["group"] or login, "--group")
        workdir = unit_literal(str(cwd), "the project directory")
        described = name.replace("%", "%%")
        # Every value is written so that systemd reads exactly it (systemd.syntax(7)): specifiers
        # (`%`) are expanded in every setting, variables (`$`) in ExecStart= arguments.
        manage = str(cwd / "manage.py")
        python = sys.executable
        worker = [python, manage, "reproq", "worker", "--concurrency", str(options["concurrency"])]
        for flag in ("queues", "allowed_task_modules", "logs_dir", "payload_mode", "metrics_addr"):
            if options[flag]:
                worker += [f"--{flag.replace('_', '-')}", options[flag]]
        if options["metrics_port"]:
            worker += ["--metrics-port", str(options["metrics_port"])]
        environment = []
        if options["env_file"]:
            # systemd ignores a relative path (with a warning in the journal only); a leading
            # `-` is its "skip when missing" mark.
            optional, env_file = (
                ("-", options["env_file"][1:])
                if options["env_file"].startswith("-")
                else ("", options["env_file"])
            )
            env_file = os.path.join(cwd, env_file)
            environment.append(f"EnvironmentFile={optional}{unit_literal(env_file, '--env-file')}")
        for variable, flag in (
            ("METRICS_AUTH_TOKEN", "metrics_auth_token"),
            ("METRICS_ALLOW_CIDRS", "metrics_allow_cidrs"),
        ):
            if options[flag]:
                assignment = unit_quoted(f"{variable}={options[flag]}", variables=False)
                environment.append(f"Environment={assignment}")

        def unit(description: str, argv: list[str], *, service_type: str = "simple") -> str:
            lines = [
                "[Unit]",
                f"Description={description}",
                "After=network-online.target",
                "Wants=network-online.target",
                "",
                "[Service]",
                f"Type={service_type}",
                f"User={user}",
                f"Group={group}",
                f"WorkingDirectory={workdir}",
                *environment,
                f"ExecStart={exec_start(argv)}",
            ]
            if service_type == "simple":
                lines += ["Restart=always", "RestartSec=5", "KillSignal=SIGTERM",
                          "TimeoutStopSec=60"]  # fmt: skip
            lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
            return "\n".join(lines)

        def guarded(mode: str, subcommand: str, otherwise: str) -> list[str]:
            """bash running `manage.py reproq <subcommand>` only in that scheduler mode; bash,
            not systemd, reads the variable (so it comes from the unit's environment)."""
            command = shlex.join([python, manage, "reproq", subcommand])
            script = f'if [ "${{REPROQ_SCHEDULER_MODE:-beat}}" = {mode} ]; then exec {command};'
            return ["/bin/bash", "-c", f"{script}{otherwise} fi"]

        slug = unit_name(name)
        files = {
            f"reproq-worker-{slug}.service": unit(f"reproq worker ({described})", worker),
            f"reproq-beat-{slug}.service": unit(
                f"reproq beat ({described})", guarded("beat", "beat", " else sleep infinity;")
            ),
        }
        if options["schedule"]:
            files[f"reproq-schedule-{slug}.service"] = unit(
                f"reproq schedule pass ({described})",
                guarded("cron", "schedule", ""),
                service_type="oneshot",
            )
            on_calendar = unit_literal(options["schedule_on_calendar"], "--schedule-on-calendar")
            files[f"reproq-schedule-{slug}.timer"] = "\n".join(
                [
                    "[Unit]",
                    f"Description=reproq schedule timer ({described})",
                    "",
                    "[Timer]",
                    f"OnCalendar={on_calendar}",
                    "Persistent=true",
                    "",
                    "[Install]",
                    "WantedBy=timers.target",
                    "",
                ]
            )
        for filename, text in files.items():
            write_file(cwd / filename, text)
            self.stdout.write(f"Wrote {cwd / filename}")

    def handle_init(self, options: dict[str, Any]) -> None:
        from django.core.management import call_command

        # The database is known before anything is written or installed (as for upgrade).
        env = (
            None
            if options["skip_worker_migrate"]
            else self._cli_env(None, fix="pass --skip-worker-migrate")
        )
        path = Path(options["config"] or f"reproq.{options['format']}")
        if path.exists() and not options["force"]:
            self.stdout.write(f"{path} exists; keeping it (use --force to overwrite).")
        else:
            prefixes, _ = discover_allowed_modules()
            write_file(path, example_config(path.suffix, prefixes))
            self.stdout.write(f"Wrote {path}")
        if not options["skip_install"]:
            self.handle_install(options)
        if env is not None:
            # With the binary just installed: its schema is the one its worker expects.
            self._run_cli(["migrate"], env)
            self.stdout.write("Ran migrate-worker.")
        if not options["skip_migrate"]:
            call_command("migrate", verbosity=0)
            self.stdout.write("Ran Django migrate (reproq's tables included).")
        if database_dsn(None) is None and not _cli_finds_a_dsn([], dict(os.environ)):
            # `worker` would refuse this project as it stands (reproq_django.W001 says why).
            self.stdout.write(
                "Tasks can be enqueued into this project's database; a worker needs "
                "PostgreSQL: point DATABASES at it, then run python manage.py reproq worker"
            )
            return
        self.stdout.write("Reproq is ready! Start a worker with: python manage.py reproq worker")

    # --- ORM subcommands -----------------------------------------------------------------------

    def _aliases(self, options: dict[str, Any]) -> list[str]:
        if options.get("all_databases"):
            return queue_db_aliases()
        return [known_alias(options.get("database") or default_db_alias())]

    def handle_stats(self, options: dict[str, Any]) -> None:
        from django.db.models import Count

        from reproq_django.models import TaskRun, Worker

        totals: dict[str, int] = {}
        aliases = self._aliases(options)
        for alias in aliases:
            self.stdout.write(f"Database {alias}:")
            counts = TaskRun.objects.using(alias).values("status").annotate(n=Count("result_id"))
            for row in sorted(counts, key=lambda r: r["status"]):
                self.stdout.write(f"  {row['status']}: {row['n']}")
                totals[row["status"]] = totals.get(row["status"], 0) + row["n"]
            cutoff = timezone.now() - timezone.timedelta(minutes=2)
            for worker in Worker.objects.using(alias).order_by("worker_id"):
                state = "ALIVE" if worker.last_seen_at >= cutoff else "DEAD"
                self.stdout.write(
                    f"  worker {worker.worker_id} ({worker.hostname}) {state} "
                    f"concurrency={worker.concurrency} queues={','.join(worker.queues or [])}"
                )
        if len(aliases) > 1:
            self.stdout.write("All databases:")
            for status, count in sorted(totals.items()):
                self.stdout.write(f"  {status}: {count}")

    handle_status = handle_stats

    def handle_pause_queue(self, options: dict[str, Any]) -> None:
        self._set_paused(options, paused=True)

    def handle_resume_queue(self, options: dict[str, Any]) -> None:
        self._set_paused(options, paused=False)

    def _set_paused(self, options: dict[str, Any], *, paused: bool) -> None:
        from reproq_cli.config import QUEUE_NAME_RULE, is_queue_name
        from reproq_django.models import QueueControl

        name = options["queue"]
        if not is_queue_name(name):
            raise CommandError(f"queue name {name!r} cannot be a queue: {QUEUE_NAME_RULE}")
        alias = known_alias(options["database"] or default_db_alias())
        now = timezone.now()
        QueueControl.objects.using(alias).update_or_create(
            queue_name=options["queue"],
            defaults={
                "paused": paused,
                "paused_at": now if paused else None,
                "reason": options.get("reason", "") if paused else "",
                "updated_at": now,
            },
        )
        self.stdout.write(f"Queue {options['queue']} {'paused' if paused else 'resumed'}.")

    def handle_allowlist(self, options: dict[str, Any]) -> None:
        paths, problems = discover_tasks()
        prefixes = sorted({path.rsplit(".", 1)[0] + "." for path in paths})
        for problem in problems:
            self.stderr.write(f"warning: could not import {problem}")
        if options["write"]:
            self._write_allowlist(options["config"], prefixes)
            return
        if options["show_tasks"]:
            # Comment lines: the output stays readable by a shell or an env file.
            for path in paths:
                self.stdout.write(f"# {path}")
        if options["format"] == "env":
            self.stdout.write(f"ALLOWED_TASK_MODULES={','.join(prefixes)}")
        else:
            for prefix in prefixes:
                self.stdout.write(prefix)

    def _write_allowlist(self, explicit: str | None, prefixes: list[str]) -> None:
        from reproq_cli.config import load_file, resolve_config_path
        from reproq_cli.errors import ReproqError

        try:
            path, _ = resolve_config_path(explicit, os.environ, Path.cwd())
        except ReproqError as exc:
            raise CommandError(str(exc)) from None
        if path is None or not path.is_file():
            raise CommandError(
                f"allowlist --write needs an existing config file, and "
                f"{path or 'none was found (reproq.yaml, reproq.toml, ...)'} is not one; pass "
                "--config FILE or create one with `manage.py reproq init`"
            )
        try:
            data = load_file(path)
        except ReproqError as exc:
            raise CommandError(f"{exc}; {exc.hint}" if exc.hint else str(exc)) from None
        worker = data.get("worker") or {}
        data["worker"] = {**worker, "allowed_task_modules": prefixes}
        if path.suffix.lower() == ".toml":
            text = toml_text(data)
        else:
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        write_file(path, text)
        self.stdout.write(
            f"Wrote worker.allowed_task_modules = {','.join(prefixes)} to {path} "
            "(comments are not kept)"
        )

    def handle_sync_recurring(self, options: dict[str, Any]) -> None:
        from reproq_django.recurring import autodiscover, sync_recurring_tasks

        autodiscover()
        count = sync_recurring_tasks(
            using=options["database"] and known_alias(options["database"]),
            clear_missing=options["clear_missing"],
        )
        if count == 0:
            self.stdout.write("No recurring tasks found.")
        else:
            self.stdout.write(
                f"Synced {count} recurring task(s) ({options['database'] or 'auto'})."
            )

    def handle_stress_test(self, options: dict[str, Any]) -> None:
        from reproq_django.tasks import debug_noop_task

        count = options["count"]
        if count <= 0:
            raise CommandError("--count must be positive")
        sleep = options["sleep"]
        # NaN cannot be stored in a spec, and time.sleep refuses a negative: every task
        # would fail in the worker instead of here.
        if not (math.isfinite(sleep) and sleep >= 0):
            raise CommandError(f"--sleep must be a finite number >= 0 (seconds), not {sleep}")
        # A distinct label per task, or dedup would fold them into one row.
        run = uuid.uuid4().hex[:8]
        items = [
            (debug_noop_task, (), {"sleep_seconds": sleep, "label": f"{run}-{i}"})
            for i in range(count)
        ]
        started = time.perf_counter()
        if options["bulk"]:
            task_backends[debug_noop_task.backend].bulk_enqueue(items)
        else:
            for task, args, kwargs in items:
                task.enqueue(*args, **kwargs)
        elapsed = time.perf_counter() - started
        self.stdout.write(f"Enqueued {count} task(s) in {elapsed:.3f}s ({count / elapsed:.0f}/s).")

    def handle_check(self, options: dict[str, Any]) -> None:
        problems = 0
        command = worker_command()
        try:
            version = binary.version_of(command)
        except CommandError as exc:
            problems += 1
            self.stderr.write(f"FAIL worker binary: {exc}")
        else:
            self.stdout.write(f"OK   worker binary: {' '.join(command)} ({version})")
            mismatch = binary.version_mismatch(version)
            if mismatch:
                self.stdout.write(f"WARN worker binary: {mismatch}")
        alias = known_alias(options["database"] or default_db_alias())
        connection = connections[alias]
        try:
            tables = set(connection.introspection.table_names())
        except Exception as exc:
            raise CommandError(f"cannot connect to database {alias!r}: {exc}") from None
        missing = sorted(set(TABLES) - tables)
        if missing:
            problems += 1
            self.stderr.write(
                f"FAIL missing tables in {alias!r}: {', '.join(missing)}; run migrate"
            )
        else:
            self.stdout.write(f"OK   tables present in {alias!r}")
        if connection.vendor != "postgresql":
            self.stdout.write(f"WARN {alias!r} is {connection.vendor}: the worker needs PostgreSQL")
        if problems:
            raise CommandError("Reproq check failed.")
        self.stdout.write("Configuration looks good!")


def _pg_cron_unavailable(cursor: Any) -> tuple[str, str, str] | None:
    """Why pg_cron cannot schedule from this database, the fix and a short reason; None when
    it can, or when this role cannot tell (CREATE EXTENSION then reports the reason).

    Listed in pg_available_extensions is not enough: the library must be preloaded (only then
    does its cron.database_name setting exist), and the extension lives in that database.
    The setting is visible to superusers and pg_read_all_settings only."""
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'),"
        " EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'),"
        " (SELECT setting FROM pg_settings WHERE name = 'cron.database_name'),"
        " pg_has_role(current_user, 'pg_read_all_settings', 'MEMBER'),"
        " current_database()"
    )
    created, installed, cron_database, sees_settings, database = cursor.fetchone()
    beat = "or use `manage.py reproq beat`"
    if created:
        return None
    if not installed:
        return (
            "pg_cron is not available on this server",
            f"install it and add it to shared_preload_libraries, {beat}",
            "pg_cron not installed",
        )
    if sees_settings and cron_database is None:
        return (
            "pg_cron is not available on this server (installed, not preloaded)",
            f"add it to shared_preload_libraries and restart PostgreSQL, {beat}",
            "pg_cron not preloaded",
        )
    if cron_database is not None and cron_database != database:
        return (
            f"pg_cron is not available in database {database!r}: it runs in"
            f" {cron_database!r} (cron.database_name)",
            f"point --database at that database, or set cron.database_name to {database!r}"
            f" and restart PostgreSQL, {beat}",
            f"pg_cron runs in database {cron_database!r}",
        )
    return None
