"""Named SQL blocks from ``sql/queries.sql``, loaded through importlib.resources.

A block starts with ``-- name: <name>``; comment lines right after it document the query; the
text up to the next block is the statement. A line ``-- include: <name>`` inside a statement
is replaced by that block's text, so statements can share a part (blocks named
``fragment_…`` are such parts, not statements of their own). Loading through
importlib.resources keeps this working when reproq runs from a zipapp.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_INCLUDE_LINE = re.compile(r"^[ \t]*--\s*include:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_COMMENT_LINE = re.compile(r"^[ \t]*--")
FRAGMENT_PREFIX = "fragment_"


@cache
def sql_root() -> Traversable:
    """The shipped sql/ folder: the ``reproq_cli.sql`` package once installed (also inside the
    zipapp), or the repository's top-level sql/ when running from a source checkout, where
    the checkout's reproq_cli shadows the installed one."""
    try:
        return resources.files("reproq_cli.sql")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent.parent / "sql"


def read_sql_resource(*parts: str) -> str:
    """Text of a file inside the shipped sql/ folder, e.g. ``("migrations", "0001_x.sql")``."""
    node = sql_root()
    for part in parts:
        node = node.joinpath(part)
    return node.read_text(encoding="utf-8")


def parse_queries(text: str) -> dict[str, str]:
    matches = list(_NAME_LINE.finditer(text))
    queries: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        lines = text[match.end() : end].strip().splitlines()
        while lines and lines[0].lstrip().startswith("--"):
            lines.pop(0)  # the block's doc comment; comments inside the statement stay
        body = "\n".join(lines).strip().rstrip(";").strip()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"queries.sql defines {name!r} twice")
        if not body:
            raise ValueError(f"queries.sql block {name!r} has no statement")
        queries[name] = body
    return {name: _without_comments(_expand(name, queries, ())) for name in queries}


def _without_comments(statement: str) -> str:
    """The statement without its full-line comments and indentation: they are for readers of
    queries.sql, and psycopg caches the parse of a statement only up to 4 kB, which the
    claims' comments pushed them past (parsing them again cost ~0.3 ms of CPU per claim).
    No statement here has a string literal that spans lines, so stripping lines is safe."""
    lines = (line.strip() for line in statement.splitlines() if not _COMMENT_LINE.match(line))
    return "\n".join(line for line in lines if line).rstrip(";")


def _expand(name: str, queries: dict[str, str], seen: tuple[str, ...]) -> str:
    if name in seen:
        raise ValueError(f"queries.sql includes {name!r} in itself")

    def included(match: re.Match[str]) -> str:
        target = match.group(1)
        if target not in queries:
            raise ValueError(f"queries.sql block {name!r} includes unknown {target!r}")
        return _expand(target, queries, (*seen, name))

    return _INCLUDE_LINE.sub(included, queries[name])


@cache
def all_queries() -> dict[str, str]:
    return parse_queries(read_sql_resource("queries.sql"))


def query(name: str) -> str:
    """The SQL of one named block; KeyError names the missing block."""
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries.sql") from None
