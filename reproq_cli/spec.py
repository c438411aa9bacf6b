"""Task specs: the canonical JSON text and its spec_hash, plus beat's periodic byte format.

Two byte formats exist and both are contracts:

* ``canonical_json``/``spec_hash`` — what reproq-django stores when it enqueues: keys sorted
  recursively, separators ``,``/``:``, non-ASCII left raw, and values encoded the way Django's
  ``DjangoJSONEncoder`` encodes them (so a hash computed here equals one computed by Django,
  without importing Django).
* ``periodic_spec_json``/``periodic_spec_hash`` — what the Go beat writes for a periodic task:
  struct field order, compact, Go's string escaping, args/kwargs embedded verbatim. Hashes of
  rows the Go beat already enqueued must keep matching, or dedupe across the two breaks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import re
import uuid
from typing import Any

from reproq_cli.gojson import syntax_error

__all__ = [
    "canonical_json",
    "go_compact_raw",
    "periodic_spec_hash",
    "periodic_spec_json",
    "sha256_hex",
    "spec_hash",
]


def _duration_iso_string(value: dt.timedelta) -> str:
    # Django's django.utils.duration.duration_iso_string, which DjangoJSONEncoder uses.
    if value < dt.timedelta(0):
        sign = "-"
        value = -value
    else:
        sign = ""
    days = value.days
    minutes, seconds = divmod(value.seconds, 60)
    hours, minutes = divmod(minutes, 60)
    ms = f".{value.microseconds:06d}" if value.microseconds else ""
    return f"{sign}P{days}DT{hours:02d}H{minutes:02d}M{seconds:02d}{ms}S"


class _DjangoCompatibleEncoder(json.JSONEncoder):
    """Encodes the types DjangoJSONEncoder knows, byte for byte as it does."""

    def default(self, o: Any) -> Any:
        if isinstance(o, dt.datetime):
            text = o.isoformat()
            if o.microsecond:
                text = text[:23] + text[26:]  # milliseconds only
            if text.endswith("+00:00"):
                text = text.removesuffix("+00:00") + "Z"
            return text
        if isinstance(o, dt.date):
            return o.isoformat()
        if isinstance(o, dt.time):
            if o.utcoffset() is not None:
                raise ValueError("JSON can't represent timezone-aware times.")
            text = o.isoformat()
            if o.microsecond:
                text = text[:12]
            return text
        if isinstance(o, dt.timedelta):
            return _duration_iso_string(o)
        if isinstance(o, decimal.Decimal | uuid.UUID):
            return str(o)
        # Django also stringifies lazy translation strings (Promise); anything with __str__
        # that is not JSON would be a silent surprise, so only that exact case is mirrored.
        if type(o).__name__ == "__proxy__":
            return str(o)
        return super().default(o)


# One encoder for every call: json.dumps(cls=...) builds a new one each time, which was a third
# of the time canonical_json takes for a small spec. An encoder keeps no state between calls.
_CANONICAL_ENCODER = _DjangoCompatibleEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(obj: Any) -> str:
    """The canonical text of a spec: sorted keys, compact, raw UTF-8, Django's encodings.

    NaN and the infinities raise ValueError: they are not JSON, and jsonb refuses them, so
    no stored spec (and no hash) has them."""
    return _CANONICAL_ENCODER.encode(obj)


def sha256_hex(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def spec_hash(obj: Any) -> str:
    """Lowercase hex SHA-256 of ``canonical_json(obj)``: the value in task_runs.spec_hash."""
    return sha256_hex(canonical_json(obj))


# --- Go encoding/json emulation (beat's periodic spec) ----------------------------------------

_GO_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_GO_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029]')


def _go_escape_char(match: re.Match[str]) -> str:
    ch = match.group(0)
    short = _GO_SHORT_ESCAPES.get(ch)
    if short is not None:
        return short
    return f"\\u{ord(ch):04x}"


def go_json_string(value: str) -> str:
    """A JSON string as Go's encoder writes it (HTML-safe, U+2028/2029 escaped, rest raw)."""
    return '"' + _GO_NEEDS_ESCAPE.sub(_go_escape_char, value) + '"'


_JSON_WS = " \t\n\r"


def go_compact_raw(raw: str) -> str:
    """Compact embedded raw JSON the way Go marshals a json.RawMessage.

    Whitespace outside strings is dropped; key order and number literals are kept; inside
    strings, ``<``, ``>``, ``&`` and U+2028/2029 are escaped, existing escapes are kept.
    """
    try:
        json.loads(raw)  # reject invalid JSON before copying it into a spec
    except RecursionError:
        # Nested past Python's decoder (Go's and jsonb's go to 10,000 levels): Go's check.
        problem = syntax_error(raw)
        if problem is not None:
            raise ValueError(problem) from None
    out: list[str] = []
    in_string = False
    escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
                out.append(ch)
            elif ch == "\\":
                escaped = True
                out.append(ch)
            elif ch == '"':
                in_string = False
                out.append(ch)
            elif ch in "<>&\u2028\u2029":
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif ch not in _JSON_WS:
            out.append(ch)
    return "".join(out)


def go_time(moment: dt.datetime, *, digits: int | None = 0) -> str:
    """``moment`` in the local zone as Go's time.Format writes RFC 3339: a zero offset is
    ``Z`` (Python writes ``+00:00``). ``digits``: 0 for seconds (RFC3339), 3 for fixed
    milliseconds (slog), None for RFC3339Nano (the fraction with its trailing zeros cut)."""
    local = moment.astimezone()
    if digits == 0:
        text = local.isoformat(timespec="seconds")
    elif digits == 3:
        text = local.isoformat(timespec="milliseconds")
    else:
        text = local.replace(microsecond=0).isoformat(timespec="seconds")
        if local.microsecond:
            fraction = f".{local.microsecond:06d}".rstrip("0")
            text = text[:19] + fraction + text[19:]
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _rfc3339_seconds_utc(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("scheduled_at must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def periodic_spec_json(
    *,
    task_path: str,
    args_json: str,
    kwargs_json: str,
    queue_name: str,
    priority: int,
    concurrency_key: str | None,
    concurrency_limit: int,
    periodic_name: str,
    scheduled_at: dt.datetime,
    max_attempts: int,
    timeout_seconds: int = 900,
) -> str:
    """The exact spec text the Go beat writes for a due periodic task (go-worker.md §7c).

    ``args_json``/``kwargs_json`` are raw JSON texts (as read from payload_json::text) and are
    embedded with their key order and number literals intact.
    """
    key = "null" if concurrency_key is None else go_json_string(concurrency_key)
    return (
        "{"
        f'"task_path":{go_json_string(task_path)},'
        f'"args":{go_compact_raw(args_json)},'
        f'"kwargs":{go_compact_raw(kwargs_json)},'
        f'"queue_name":{go_json_string(queue_name)},'
        f'"priority":{int(priority)},'
        f'"concurrency_key":{key},'
        f'"concurrency_limit":{int(concurrency_limit)},'
        f'"periodic_name":{go_json_string(periodic_name)},'
        f'"scheduled_at":"{_rfc3339_seconds_utc(scheduled_at)}",'
        f'"exec":{{"timeout_seconds":{int(timeout_seconds)},"max_attempts":{int(max_attempts)}}}'
        "}"
    )


def periodic_spec_hash(spec_text: str) -> str:
    """spec_hash of a periodic spec: SHA-256 of its exact bytes (not of canonical JSON)."""
    return sha256_hex(spec_text)
