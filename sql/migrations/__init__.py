"""Numbered, append-only, idempotent schema migrations (see reproq_cli.db.schema)."""
