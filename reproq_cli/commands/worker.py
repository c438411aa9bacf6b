"""`reproq worker`: claim and run tasks (flags, env and config keys as the Go worker)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from reproq_cli.commands._common import INT64, config_option, database_url, load_config
from reproq_cli.config import display_value, is_truthy
from reproq_cli.defaults import WORKER_SETTINGS, Setting
from reproq_cli.errors import ConfigError

PRODUCTION_ENV = "REPROQ_PRODUCTION"

_CLICK_TYPES: dict[str, click.ParamType] = {"int": INT64, "float": click.FLOAT}


def _help(setting: Setting) -> str:
    default = display_value(setting, setting.default_value())
    if setting.key == "worker.worker_id":
        default = "<hostname>-<pid>"
    elif isinstance(default, bool):
        default = str(default).lower()
    elif isinstance(default, list):
        default = ",".join(default)
    env = f"; env: {setting.env}" if setting.env else ""
    shown = "(empty)" if default in ("", []) else default
    return f"{setting.help} [default: {shown}{env}]"


def setting_options(settings: tuple[Setting, ...]) -> Any:
    """click options for every setting that has a flag; values stay None unless given."""

    def decorate(func: Any) -> Any:
        for setting in reversed(settings):
            if setting.flag is None:
                continue
            if setting.kind == "bool":
                # A switch: given means true; absent stays None so env and file decide.
                func = click.option(
                    setting.flag,
                    setting.key.replace(".", "__"),
                    is_flag=True,
                    default=None,
                    help=_help(setting),
                )(func)
                continue
            func = click.option(
                setting.flag,
                setting.key.replace(".", "__"),
                type=_CLICK_TYPES.get(setting.kind, click.STRING),
                default=None,
                metavar=setting.kind.upper() if setting.kind in ("int", "float") else "TEXT",
                help=_help(setting),
            )(func)
        return func

    return decorate


def given_flags(params: dict[str, Any]) -> dict[str, Any]:
    """Setting key -> value for the setting flags given (``worker__queues`` -> worker.queues).

    Every name in ``params`` is a setting's, the root ``dsn`` included.
    """
    return {name.replace("__", "."): value for name, value in params.items() if value is not None}


@click.command(name="worker")
@config_option
@setting_options(WORKER_SETTINGS)
@click.option("--burst", is_flag=True, help="Exit 0 once nothing is claimable and nothing runs.")
@click.option(
    "--max-tasks", type=click.IntRange(min=0), default=0, help="Exit after claiming N tasks."
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="JSON lines (as the Go worker) or text for people.",
)
def command(
    config_path: str | None, burst: bool, max_tasks: int, log_format: str, **params: Any
) -> None:
    """Claim tasks from PostgreSQL and run each in its own executor process.

    The first SIGINT/SIGTERM stops claiming and waits up to worker.shutdown_timeout for running
    tasks; a second one stops them (they are retried).
    """
    from reproq_cli.core.httpserver import HttpSettings
    from reproq_cli.core.logs import Logger
    from reproq_cli.core.worker import WorkerSettings, run_worker
    from reproq_cli.db.connect import create_pool
    from reproq_cli.db.schema import require_tables
    from reproq_cli.db.tasks import TaskStore

    config = load_config("worker", config_path=config_path, flags=given_flags(params))
    settings = WorkerSettings.from_config(
        config, burst=burst, max_tasks=max_tasks, env=dict(os.environ)
    )
    http = HttpSettings.from_config(config)
    log = Logger(sys.stdout, fmt=log_format, attrs={"worker_id": settings.worker_id})  # type: ignore[arg-type]
    if settings.exec_spec.payload_mode == "inline":
        if is_truthy(os.environ.get(PRODUCTION_ENV)):
            raise ConfigError(
                "Payload mode inline disabled in production builds; use stdin or file",
                hint=f"set --payload-mode stdin (or unset {PRODUCTION_ENV})",
            )
        log.warn(
            "Payload mode inline exposes payload in process args; prefer stdin or file",
            payload_mode="inline",
        )
    dsn = database_url(config)
    pool = create_pool(dsn, min_size=2, max_size=max(20, settings.concurrency * 2 + 4), worker=True)
    try:
        require_tables(pool, dsn)
        store = TaskStore(pool, settings.worker_id, lease_seconds=settings.lease_seconds)
        run_worker(settings, store, log, http)
    finally:
        pool.close()
