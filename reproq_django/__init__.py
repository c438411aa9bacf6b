"""reproq_django: the Django 6 Tasks backend, models, executor and workflows of reproq."""

from reproq_cli import __version__

__all__ = ["__version__"]
