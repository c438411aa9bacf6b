"""`reproq config`: the effective configuration of worker or beat, and where it came from."""

from __future__ import annotations

import json

import click

from reproq_cli import console
from reproq_cli.commands._common import config_option, dsn_option, json_option, load_config
from reproq_cli.config import display_value
from reproq_cli.defaults import SETTINGS_BY_MODE

PRECEDENCE = "defaults < config file < environment < flags"


@click.command(name="config")
@click.option(
    "--mode",
    type=click.Choice(["worker", "beat"]),
    default="worker",
    show_default=True,
    help="Which command's configuration to resolve.",
)
@click.option("--explain", is_flag=True, help="Show the source of every value.")
@config_option
@dsn_option
@json_option
def command(
    mode: str, explain: bool, config_path: str | None, dsn: str | None, as_json: bool
) -> None:
    """Print the effective configuration (DSN passwords and tokens masked)."""
    config = load_config(mode, config_path=config_path, flags={"dsn": dsn})  # type: ignore[arg-type]
    path = str(config.path) if config.path else None
    if as_json:
        payload: dict[str, object] = {
            "mode": mode,
            "config_file": path,
            "precedence": PRECEDENCE,
            "values": config.display(),
        }
        if explain:
            payload["sources"] = {
                key: {"source": r.source, "origin": r.origin} for key, r in config.values.items()
            }
        console.print_json(payload)
        return
    console.data(f"Config file: {path or '(none)'}")
    console.data(f"Precedence: {PRECEDENCE}")
    settings = {s.key: s for s in SETTINGS_BY_MODE[config.mode]}
    width = max(len(key) for key in config.values)
    for key, resolved in config.values.items():
        shown = json.dumps(display_value(settings[key], resolved.value), ensure_ascii=False)
        line = f"{key.ljust(width)} = {shown}"
        if explain:
            line += f"  ({resolved.origin})"
        console.data(line)
