"""Task arguments as JSON: model instances and timedeltas travel as tagged objects.

The canonical text and hash come from ``reproq_cli.spec`` so Django and the CLI share one
implementation (reproq-django.md §1.6).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from django.apps import apps
from django.db import models

from reproq_cli.spec import canonical_json, sha256_hex, spec_hash

TYPE_MARKER = "__reproq_type__"
# \u0000 as an escape (an odd number of backslashes before it), not a literal backslash
# followed by "u0000": jsonb cannot store NUL in a string.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

__all__ = [
    "NUL_REFUSED",
    "TYPE_MARKER",
    "DeserializationError",
    "canonical_json",
    "canonical_spec",
    "decode_args_kwargs",
    "decode_payload",
    "encode_args_kwargs",
    "encode_payload",
    "holds_nul",
    "normalize_and_hash",
    "normalize_json",
    "spec_hash_for",
    "storable_json",
]


class DeserializationError(ValueError):
    """A tagged argument could not be turned back into its object."""


def encode_payload(value: Any) -> Any:
    if isinstance(value, models.Model):
        if value.pk is None:
            raise ValueError(f"cannot pass an unsaved {type(value).__name__} to a task")
        return {
            TYPE_MARKER: "model",
            "app_label": value._meta.app_label,
            "model": value._meta.model_name,
            "pk": str(value.pk),
        }
    if isinstance(value, dt.timedelta):
        return {
            TYPE_MARKER: "timedelta",
            "days": value.days,
            "seconds": value.seconds,
            "microseconds": value.microseconds,
        }
    if isinstance(value, dict):
        return {key: encode_payload(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_payload(item) for item in value]
    return value


def decode_payload(value: Any, *, using: str | None = None) -> Any:
    if isinstance(value, dict):
        tag = value.get(TYPE_MARKER)
        if tag == "model":
            try:
                model = apps.get_model(value["app_label"], value["model"])
                manager = model._default_manager
                return (manager.using(using) if using else manager).get(pk=value["pk"])
            except Exception as exc:  # LookupError, DoesNotExist, bad pk...
                raise DeserializationError(
                    f"cannot load {value.get('app_label')}.{value.get('model')} "
                    f"pk={value.get('pk')}: {exc}"
                ) from exc
        if tag == "timedelta":
            return dt.timedelta(
                days=value["days"], seconds=value["seconds"], microseconds=value["microseconds"]
            )
        if tag is not None:
            raise DeserializationError(f"unknown argument type tag {tag!r}")
        return {key: decode_payload(item, using=using) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_payload(item, using=using) for item in value]
    return value


def encode_args_kwargs(args: Any, kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return list(encode_payload(list(args))), dict(encode_payload(dict(kwargs)))


def decode_args_kwargs(
    args: list[Any], kwargs: dict[str, Any], *, using: str | None = None
) -> tuple[list[Any], dict[str, Any]]:
    return decode_payload(args, using=using), decode_payload(kwargs, using=using)


def storable_json(value: Any) -> str:
    """The canonical text of ``value``, or a ValueError saying why PostgreSQL would refuse it.

    Refused here, a bad value costs the caller nothing; refused by the database, it aborts
    the caller's transaction."""
    try:
        text = canonical_json(value)
    except ValueError as exc:
        raise ValueError(f"cannot store a task's arguments or metadata: {exc}") from None
    if holds_nul(text):
        raise ValueError(f"cannot store a task's arguments or metadata: {NUL_REFUSED}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                "cannot store a task's arguments or metadata: a string holds an unpaired "
                f"surrogate ({text[exc.start]!r}), which UTF-8 (and so PostgreSQL) cannot encode"
            ) from None
    return text


NUL_REFUSED = "a string holds a NUL character (\\x00), which PostgreSQL's jsonb refuses"


def holds_nul(text: str) -> bool:
    """Whether the JSON ``text`` escapes a NUL character, which jsonb cannot store."""
    return "\\u0000" in text and _NUL_ESCAPE.search(text) is not None


def normalize_json(value: Any) -> Any:
    """The value as it will be stored: the canonical text parsed back (Decimal -> str, ...)."""
    return json.loads(storable_json(value))


def normalize_and_hash(spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The spec as stored and its spec_hash, from one canonical encoding."""
    normalized, digest, _text = canonical_spec(spec)
    return normalized, digest


def canonical_spec(spec: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """(the spec as stored, its spec_hash, its canonical text): the text is also what an
    INSERT can send, which spares encoding the spec a second time."""
    text = storable_json(spec)
    normalized = json.loads(text)
    if _has_non_str_keys(spec):
        # sort_keys orders 10 before 2 as numbers, then writes them as strings; stored, they
        # sort as "10" before "2". The hash is of the stored spec's canonical text, as
        # reproq-django hashes it.
        text = canonical_json(normalized)
    return normalized, sha256_hex(text), text


_NESTED = (dict, list, tuple)


def _has_non_str_keys(value: Any) -> bool:
    # Runs on every enqueue: only containers go on the stack (most of a spec is scalars),
    # which more than halves the walk (~10 -> ~4.4 us for a no-argument task).
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str:
                    return True
            pending.extend([nested for nested in item.values() if isinstance(nested, _NESTED)])
        else:
            pending.extend([nested for nested in item if isinstance(nested, _NESTED)])
    return False


def spec_hash_for(spec: dict[str, Any]) -> str:
    return spec_hash(spec)
