"""The checks behind `reproq doctor`: each yields OK, WARN or FAIL with a hint."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from reproq_cli.config import Config, mask_dsn, resolve
from reproq_cli.core.executor import executor_problem
from reproq_cli.core.logfiles import make_private_dirs
from reproq_cli.db import embedded
from reproq_cli.db.connect import connection, has_libpq_location
from reproq_cli.db.schema import check as schema_check
from reproq_cli.errors import ReproqError


@dataclass
class Check:
    name: str
    status: str  # OK, WARN, FAIL
    detail: str
    hint: str = ""


def _config_check(config_path: str | None, dsn: str | None) -> tuple[Check, Config | None]:
    try:
        config = resolve("worker", config_path=config_path, flags={"dsn": dsn})
    except ReproqError as exc:
        return Check("config", "FAIL", exc.message, exc.hint or ""), None
    sources = sorted({r.source for r in config.values.values()})
    where = str(config.path) if config.path else "no config file"
    detail = f"resolves ({where}; sources: {', '.join(sources)})"
    if config.warnings:
        return Check(
            "config",
            "WARN",
            f"{detail}; {'; '.join(config.warnings)}",
            "remove or fix the unknown keys",
        ), config
    return Check("config", "OK", detail), config


def run_checks(config_path: str | None, dsn: str | None) -> list[Check]:
    checks: list[Check] = []
    first, config = _config_check(config_path, dsn)
    checks.append(first)
    if config is None:
        return checks
    url = config.get("dsn")
    if not url and not has_libpq_location(os.environ):
        try:
            fallback = embedded.fallback_enabled(os.environ)
        except ReproqError as exc:
            checks.append(Check("dsn", "FAIL", exc.message, exc.hint or ""))
            return checks
        if fallback:
            checks.append(
                Check(
                    "database",
                    "WARN",
                    "no DSN configured: the embedded PostgreSQL is used",
                    "set DATABASE_URL or `dsn:` for production",
                )
            )
            try:
                url = embedded.start(os.environ)
            except ReproqError as exc:
                checks.append(Check("dsn", "FAIL", exc.message, exc.hint or ""))
                url = ""
        else:
            checks.append(
                Check(
                    "dsn",
                    "FAIL",
                    "DSN required (use --dsn, DATABASE_URL, or config file)",
                    "set DATABASE_URL",
                )
            )
    if url or has_libpq_location(os.environ):
        try:
            with connection(url) as conn:
                checks.append(Check("dsn", "OK", f"answers: {mask_dsn(url) or 'libpq env'}"))
                problems = schema_check(conn)
            if problems:
                checks.append(
                    Check(
                        "schema",
                        "FAIL",
                        f"{len(problems)} missing: {'; '.join(problems[:3])}",
                        "run `reproq migrate`",
                    )
                )
            else:
                checks.append(Check("schema", "OK", "complete"))
        except ReproqError as exc:
            checks.append(Check("dsn", "FAIL", exc.message, exc.hint or ""))
    python_bin = config.get("worker.python_bin")
    module = config.get("worker.executor_module")
    problem = executor_problem(python_bin, module)
    if problem is None:
        checks.append(Check("executor", "OK", f"{module} importable with {python_bin}"))
    else:
        checks.append(Check("executor", "FAIL", *problem))
    allowed = config.get("worker.allowed_task_modules")
    if allowed:
        checks.append(Check("allow-list", "OK", ", ".join(allowed)))
    else:
        checks.append(
            Check(
                "allow-list",
                "WARN",
                "not set: only myapp.tasks. and tasks. may run",
                "set ALLOWED_TASK_MODULES (manage.py reproq allowlist prints it)",
            )
        )
    logs_dir = config.get("worker.logs_dir")
    if logs_dir:
        try:
            make_private_dirs(logs_dir)  # as the worker makes it
            with tempfile.TemporaryFile(dir=logs_dir):
                pass
            checks.append(Check("logs-dir", "OK", f"{logs_dir} writable"))
        except OSError as exc:
            checks.append(
                Check(
                    "logs-dir",
                    "FAIL",
                    f"{logs_dir}: {exc.strerror or exc}",
                    "create it or fix its permissions",
                )
            )
    addr = config.get("metrics.addr") or (
        f":{config.get('metrics.port')}" if config.get("metrics.port") else ""
    )
    if addr:
        host = addr.rsplit(":", 1)[0].strip("[]").lower()
        exposed = host not in ("localhost", "127.0.0.1", "::1")
        if exposed and not (
            config.get("metrics.auth_token")
            or config.get("metrics.allow_cidrs")
            or config.get("metrics.tls_client_ca")
        ):
            checks.append(
                Check(
                    "metrics",
                    "WARN",
                    f"{addr} has no auth",
                    "bind to localhost or set --metrics-auth-token",
                )
            )
        else:
            checks.append(Check("metrics", "OK", f"{addr}"))
    return checks
