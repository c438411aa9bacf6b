"""`reproq version`: the same line as `reproq --version`."""

from __future__ import annotations

import click

from reproq_cli import __version__, console


@click.command(name="version")
def command() -> None:
    """Print the version."""
    console.data(f"reproq {__version__}")
