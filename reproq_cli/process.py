"""Facts about this process shared by the worker and the Django app's memory logger."""

from __future__ import annotations

from pathlib import Path

from reproq_cli.config import parse_duration


def memory_log_interval(raw: str) -> float:
    """REPROQ_MEMORY_LOG_INTERVAL: a Go duration or bare seconds; invalid or <= 0 disables."""
    raw = raw.strip()
    if not raw:
        return 0.0
    try:
        value = float(raw) if raw.isdigit() else parse_duration(raw)
    except ValueError:
        return -1.0  # reported by the worker, then treated as disabled
    return value if value > 0 else -1.0


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
