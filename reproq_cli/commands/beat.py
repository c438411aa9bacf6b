"""`reproq beat`: enqueue periodic tasks when they are due."""

from __future__ import annotations

import os
import sys

import click

from reproq_cli.commands._common import config_option, database_url, dsn_option, load_config


@click.command(name="beat")
@config_option
@dsn_option
@click.option(
    "--interval", default=None, metavar="DURATION", help="Time between passes [default: 30s]."
)
@click.option("--once", is_flag=True, help="Run one pass and exit 0.")
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True
)
def command(
    config_path: str | None, dsn: str | None, interval: str | None, once: bool, log_format: str
) -> None:
    """Enqueue due periodic_tasks rows; one beat per database leads, others stand by."""
    from reproq_cli.core.beatloop import Beat
    from reproq_cli.core.logs import Logger
    from reproq_cli.db.beat import BeatSession

    config = load_config(
        "beat", config_path=config_path, flags={"dsn": dsn, "beat.interval": interval}
    )
    role = os.environ.get("REPROQ_PROCESS_ROLE", "").strip() or "beat"
    log = Logger(sys.stdout, fmt=log_format, attrs={"worker_id": role, "role": role})  # type: ignore[arg-type]
    session = BeatSession(database_url(config))
    try:
        beat = Beat(session, log, interval=config.get("beat.interval"), once=once)
        beat.install_signal_handlers()
        beat.run()
    finally:
        session.close()
