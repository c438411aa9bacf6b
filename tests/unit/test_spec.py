"""spec_hash and the periodic spec bytes against the golden vectors in shared/spec."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid

import pytest

from reproq_cli.spec import canonical_json, periodic_spec_hash, periodic_spec_json, spec_hash
from tests.conftest import REPO_ROOT
from tests.support.specs import periodic_spec

# A copy of shared/spec/spec_hash_vectors.json, kept in the repo so a plain clone can run it.
VECTORS = json.loads(
    (REPO_ROOT / "tests" / "fixtures" / "spec_hash_vectors.json").read_text("utf-8")
)


@pytest.mark.parametrize("vector", VECTORS["contract"], ids=lambda v: v["name"])
def test_contract_vector_canonical_text_and_hash(vector):
    verbatim = vector["canonical_json_file_contents_verbatim"]
    assert canonical_json(vector["parsed"]) == verbatim
    assert spec_hash(vector["parsed"]) == vector["sha256_hex"]
    # The hash is of the exact bytes, so it also equals sha256 of the verbatim file text.
    assert hashlib.sha256(verbatim.encode()).hexdigest() == vector["sha256_hex"]


def test_contract_vector_from_python_types():
    """Decimal and UUID inputs hash as the strings Django's encoder writes."""
    parsed = json.loads(VECTORS["contract"][0]["canonical_json_file_contents_verbatim"])
    parsed["kwargs"]["amount"] = decimal.Decimal("12.34")
    parsed["kwargs"]["token"] = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
    assert spec_hash(parsed) == VECTORS["contract"][0]["sha256_hex"]


def test_key_order_does_not_change_the_hash():
    assert spec_hash({"b": 1, "a": {"y": 2, "x": [3]}}) == spec_hash(
        {"a": {"x": [3], "y": 2}, "b": 1}
    )


def test_non_ascii_is_raw_utf8():
    assert canonical_json({"name": "café ☕"}) == '{"name":"café ☕"}'


def test_unencodable_value_raises():
    with pytest.raises(TypeError):
        canonical_json({"x": object()})


def _periodic_fields(spec_text: str) -> dict:
    spec = json.loads(spec_text)
    return {
        "task_path": spec["task_path"],
        "args_json": json.dumps(spec["args"]),
        "kwargs_json": json.dumps(spec["kwargs"]),
        "queue_name": spec["queue_name"],
        "priority": spec["priority"],
        "concurrency_key": spec["concurrency_key"],
        "concurrency_limit": spec["concurrency_limit"],
        "periodic_name": spec["periodic_name"],
        "scheduled_at": dt.datetime.fromisoformat(spec["scheduled_at"].replace("Z", "+00:00")),
        "max_attempts": spec["exec"]["max_attempts"],
        "timeout_seconds": spec["exec"]["timeout_seconds"],
    }


@pytest.mark.parametrize("vector", VECTORS["derived_periodic"], ids=lambda v: v["name"])
def test_periodic_vectors(vector):
    text = periodic_spec_json(**_periodic_fields(vector["spec_bytes"]))
    assert text == vector["spec_bytes"]
    assert periodic_spec_hash(text) == vector["sha256_hex"]


def test_periodic_spec_keeps_raw_args_and_uses_go_escaping():
    text = periodic_spec_json(
        task_path="app.tasks.<x>&",
        # jsonb text rendering: spaces after separators, numeric scale kept
        args_json='[1.10, {"b": 1, "a": "<tag> & \u2028"}]',
        kwargs_json="{}",
        queue_name="default",
        priority=0,
        concurrency_key=None,
        concurrency_limit=0,
        periodic_name="p\n1",
        scheduled_at=dt.datetime(2025, 1, 1, 0, 0, 30, 999999, tzinfo=dt.UTC),
        max_attempts=3,
    )
    assert text == (
        '{"task_path":"app.tasks.\\u003cx\\u003e\\u0026",'
        '"args":[1.10,{"b":1,"a":"\\u003ctag\\u003e \\u0026 \\u2028"}],"kwargs":{},'
        '"queue_name":"default","priority":0,"concurrency_key":null,"concurrency_limit":0,'
        '"periodic_name":"p\\n1","scheduled_at":"2025-01-01T00:00:30Z",'
        '"exec":{"timeout_seconds":900,"max_attempts":3}}'
    )


def test_periodic_scheduled_at_is_converted_to_utc():
    tz = dt.timezone(dt.timedelta(hours=2))
    text = periodic_spec(
        concurrency_key="k",
        concurrency_limit=1,
        scheduled_at=dt.datetime(2025, 1, 1, 2, 0, tzinfo=tz),
    )
    assert '"scheduled_at":"2025-01-01T00:00:00Z"' in text


def test_periodic_rejects_invalid_raw_json():
    with pytest.raises(ValueError):
        periodic_spec(args_json="[1,")


@pytest.mark.parametrize(
    ("tz", "digits", "expected"),
    [
        ("UTC", 0, "2026-01-02T03:04:05Z"),
        ("UTC", 3, "2026-01-02T03:04:05.120Z"),
        ("UTC", None, "2026-01-02T03:04:05.12Z"),
        ("Asia/Kolkata", 0, "2026-01-02T08:34:05+05:30"),
        ("America/New_York", None, "2026-01-01T22:04:05.12-05:00"),
    ],
)
def test_go_time_writes_rfc3339_as_go_does(monkeypatch, tz, digits, expected):
    # Go's time.Format(RFC3339) writes a zero offset as Z; Python's isoformat as +00:00.
    import time

    from reproq_cli.spec import go_time

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        moment = dt.datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=dt.UTC)
        assert go_time(moment, digits=digits) == expected
    finally:
        monkeypatch.undo()
        time.tzset()
