"""Named queries and the shipped SQL resources."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from reproq_cli.db import queries, schema
from tests.conftest import REPO_ROOT


def test_every_block_parses_and_has_a_statement():
    parsed = queries.all_queries()
    names = re.findall(r"^-- name: (\w+)$", queries.read_sql_resource("queries.sql"), re.M)
    assert sorted(parsed) == sorted(names)
    assert len(names) == len(set(names))
    assert all(body and not body.endswith(";") for body in parsed.values())


def test_parse_queries_keeps_inner_comments_and_rejects_duplicates():
    text = "-- name: a\n-- doc\nSELECT 1 -- inline\nFROM x;\n\n-- name: b\nSELECT 2;\n"
    assert queries.parse_queries(text) == {"a": "SELECT 1 -- inline\nFROM x", "b": "SELECT 2"}
    with pytest.raises(ValueError, match="twice"):
        queries.parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    with pytest.raises(ValueError, match="no statement"):
        queries.parse_queries("-- name: empty\n-- only a comment\n")


def test_includes_are_expanded_and_checked():
    text = (
        "-- name: fragment_x\n-- doc\nx AS (SELECT 1),\n\n"
        "-- name: a\nWITH\n-- include: fragment_x\ny AS (SELECT 2) SELECT * FROM x, y;\n"
    )
    parsed = queries.parse_queries(text)
    assert parsed["a"] == "WITH\nx AS (SELECT 1),\ny AS (SELECT 2) SELECT * FROM x, y"
    with pytest.raises(ValueError, match="includes unknown 'nope'"):
        queries.parse_queries("-- name: a\nSELECT\n-- include: nope\n1;\n")
    with pytest.raises(ValueError, match="includes 'a' in itself"):
        queries.parse_queries("-- name: a\nSELECT\n-- include: a\n1;\n")
    # the shipped claim statements share their candidate rules
    heads = queries.query("fragment_claim_heads")
    assert heads in queries.query("claim_task")
    assert heads in queries.query("claim_batch")
    assert "-- include:" not in queries.query("claim_task")


def test_statements_fit_psycopgs_parse_cache():
    """psycopg keeps the parse of a statement of up to 4,096 characters; a longer one (the
    claims, with their comments) is parsed again in Python on every call."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    sizes = {name: len(text) for name, text in queries.all_queries().items()}
    assert max(sizes.values()) <= MAX_CACHED_STATEMENT_LENGTH, sizes
    assert "--" not in queries.query("claim_batch").replace("'--'", "")


def test_unknown_query_name():
    with pytest.raises(KeyError, match="no query named 'nope'"):
        queries.query("nope")


def test_migrations_are_numbered_and_loaded_as_resources():
    names = [m.name for m in schema.migrations()]
    assert names == sorted(names)
    assert names[0] == "0001_baseline.sql"
    on_disk = sorted(p.name for p in (REPO_ROOT / "sql" / "migrations").glob("[0-9]*.sql"))
    assert names == on_disk


def test_man_page_and_settings_table_are_current():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_subcommand_man_pages_render():
    import shutil

    man = shutil.which("man")
    assert man is not None, "man-db is part of the base image"
    result = subprocess.run(
        [man, "-l", str(REPO_ROOT / "man" / "reproq-triage.1")],
        capture_output=True,
        text=True,
        check=True,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    assert "reproq-triage - Inspect and retry failed tasks." in result.stdout
    assert "reproq triage retry" in result.stdout


def test_shell_completion_script():
    import os

    result = subprocess.run(
        [sys.executable, "-m", "reproq_cli"],
        capture_output=True,
        text=True,
        env={**os.environ, "_REPROQ_COMPLETE": "bash_source"},
        check=False,
    )
    assert result.returncode == 0
    assert "complete" in result.stdout
    assert "_REPROQ_COMPLETE" in result.stdout
