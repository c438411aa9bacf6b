"""Structured process logs: JSON lines on stdout (go-worker.md §8.6), or text for people.

Attributes whose key looks secret (payloads, tokens, passwords, stdout/stderr...) are replaced
by ``[REDACTED]`` at any depth (§5.8); the message text itself is never redacted.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import sys
import threading
import time
from typing import Any, Literal, TextIO

from reproq_cli.spec import go_time

LogFormat = Literal["json", "text"]
REDACTED = "[REDACTED]"

_REDACT_KEYS = frozenset(
    {
        "args",
        "authorization",
        "body",
        "errors_json",
        "headers",
        "kwargs",
        "payload",
        "payload_json",
        "return_json",
        "spec_json",
        "stderr",
        "stdout",
        "traceback",
    }
)
_REDACT_FRAGMENTS = ("secret", "token", "password", "apikey", "api_key", "authorization")


# One encoder for every value (json.dumps with options builds a new one per call) and each
# key encoded once: the worker logs two lines per task, and this was most of their cost.
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":")).encode
_ENCODE_STR = json.encoder.encode_basestring  # what _ENCODE does for a str, without the checks
_SCALARS = frozenset({str, int, float, bool, type(None)})
_KEYS: dict[str, tuple[str, bool]] = {}
_SURROGATE = re.compile("[\ud800-\udfff]")
# JSON leaves these unescaped, but many readers end a line at them (Python's splitlines,
# JavaScript); escaped, a record stays on the one line that its final newline ends. Go's slog
# escapes U+2028 and U+2029 too.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _key(name: str) -> tuple[str, bool]:
    """``,"name":`` and whether the attribute's value is redacted, worked out once a key."""
    known = _KEYS.get(name)
    if known is None:
        known = _KEYS[name] = (f",{json.dumps(name)}:", should_redact(name))
    return known


@functools.lru_cache(maxsize=4096)
def should_redact(key: str) -> bool:
    lowered = key.lower()
    return lowered in _REDACT_KEYS or any(fragment in lowered for fragment in _REDACT_FRAGMENTS)


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-looking keys replaced, recursively."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, dict):
        return {k: REDACTED if should_redact(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


# (second, "YYYY-MM-DDTHH:MM:SS", offset) of the last line: the local zone's date and offset
# are worked out once a second, not per line (astimezone was a sixth of a line's cost).
_second: tuple[int, str, str] = (-1, "", "")


def _timestamp() -> str:
    # RFC 3339 with milliseconds and the local offset, like Go's slog JSON handler.
    global _second
    now = time.time()
    second = int(now)
    cached = _second
    if cached[0] != second:
        text = go_time(dt.datetime.fromtimestamp(second), digits=0)
        cached = _second = (second, text[:19], text[19:])
    return f"{cached[1]}.{int((now - second) * 1000):03d}{cached[2]}"


def _plain(value: Any) -> Any:
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds() * 1e9)  # slog writes durations as nanoseconds
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


class Logger:
    """A small leveled logger with bound attributes; safe to share between threads."""

    # Re-entrant: a signal handler may log while the main thread is inside a write.
    _lock = threading.RLock()

    def __init__(
        self,
        stream: TextIO | None = None,
        fmt: LogFormat = "json",
        attrs: dict[str, Any] | None = None,
    ) -> None:
        self.stream = stream
        self.fmt = fmt
        self.attrs = dict(attrs or {})
        # Bound attributes are made plain, redacted and encoded once, not on every line.
        self._clean, self._encoded = _prepare(self.attrs)

    def bind(self, **attrs: Any) -> Logger:
        if not self.attrs.keys().isdisjoint(attrs):
            return Logger(self.stream, self.fmt, {**self.attrs, **attrs})
        # New keys only: the parent's encoded attributes stay as they are, with these after.
        child = Logger.__new__(Logger)
        child.stream, child.fmt = self.stream, self.fmt
        child.attrs = {**self.attrs, **attrs}
        added, encoded = _prepare(attrs)
        child._clean = {**self._clean, **added}
        child._encoded = self._encoded + encoded
        return child

    def info(self, message: str, /, **attrs: Any) -> None:
        self._emit("INFO", message, attrs)

    def warn(self, message: str, /, **attrs: Any) -> None:
        self._emit("WARN", message, attrs)

    def error(self, message: str, /, **attrs: Any) -> None:
        self._emit("ERROR", message, attrs)

    def _emit(self, level: str, message: str, attrs: dict[str, Any]) -> None:
        extra, encoded = _prepare(attrs) if attrs else (attrs, "")
        if self.fmt == "json":
            # Written pair by pair: like Go's slog, an attribute may repeat a key ("msg").
            # Compact, as slog writes it: tools match '"level":"ERROR"'.
            head = f'{{"time":"{_timestamp()}","level":"{level}","msg":{_ENCODE_STR(message)}'
            if self._clean.keys().isdisjoint(extra):
                line = head + self._encoded + encoded + "}"
            else:
                # A bound attribute given again keeps its place with the new value.
                line = head + _prepare({**self._clean, **extra})[1] + "}"
        else:
            merged = {**self._clean, **extra}
            text = " ".join(f"{k}={_text_value(v)}" for k, v in merged.items())
            line = f"{_timestamp()} {level:<5} {message}" + (f"  {text}" if text else "")
        if not line.isascii():
            line = line.translate(_LINE_BREAKS)
            # A lone surrogate (undecodable bytes from a task's output) cannot be written as
            # UTF-8: the write raised and the task's outcome was never recorded.
            line = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
        stream = self.stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


def _prepare(attrs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The attributes made plain and redacted, and ``,"key":value`` for each, in order.

    One pass, and str and int values written without the encoder's call: the worker binds
    four attributes and writes two lines per task, on the path every task waits on."""
    clean: dict[str, Any] = {}
    encoded = ""
    for name, value in attrs.items():
        prefix, secret = _key(str(name))
        kind = type(value)
        if secret:
            value = REDACTED
            kind = str
        elif kind not in _SCALARS:
            value = redact(_plain(value))
            kind = type(value)
        clean[name] = value
        if kind is str:
            encoded += prefix + _ENCODE_STR(value)
        elif kind is int:
            encoded += prefix + int.__repr__(value)
        else:
            encoded += prefix + _ENCODE(value)
    return clean, encoded


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        plain = value and " " not in value and value.isprintable()
        return value if plain else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str)
