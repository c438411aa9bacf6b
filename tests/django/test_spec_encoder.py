"""canonical_json must encode every type exactly as Django's own DjangoJSONEncoder does.

reproq_cli cannot import Django, so spec.py re-implements the encoder; Django itself is the
oracle here.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import pytest
from django.core.serializers.json import DjangoJSONEncoder

from reproq_cli.spec import canonical_json, spec_hash

CASES = [
    dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC),
    dt.datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC),
    dt.datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    dt.datetime(2025, 1, 1, 12, 0, 0, 5000),
    dt.date(2024, 2, 29),
    dt.time(13, 45, 1, 250000),
    dt.time(8, 0),
    dt.timedelta(days=2, hours=3, minutes=4, seconds=5, microseconds=6),
    dt.timedelta(seconds=-90),
    dt.timedelta(0),
    decimal.Decimal("12.340"),
    decimal.Decimal("-1E+3"),
    uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
    {"nested": [decimal.Decimal("1.5"), {"z": 1, "a": dt.date(2020, 1, 1)}]},
    "ünïcødé ☃",
]


@pytest.mark.parametrize("value", CASES, ids=repr)
def test_matches_django_encoder(value):
    expected = json.dumps(
        {"v": value},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        cls=DjangoJSONEncoder,
    )
    assert canonical_json({"v": value}) == expected


def test_aware_time_is_rejected_like_django():
    aware = dt.time(1, 2, tzinfo=dt.UTC)
    with pytest.raises(ValueError):
        json.dumps(aware, cls=DjangoJSONEncoder)
    with pytest.raises(ValueError):
        spec_hash({"t": aware})


def test_a_spec_with_int_keys_is_hashed_as_it_is_stored():
    # sort_keys put 2 before 10 (as numbers) and wrote them as strings: the hash was not that
    # of the stored spec, whose keys sort "10" before "2", nor reproq-django's.
    from reproq_django.serialization import canonical_spec

    stored, digest, text = canonical_spec({"kwargs": {"m": {10: "a", 2: "b"}}})
    assert text == '{"kwargs":{"m":{"10":"a","2":"b"}}}'
    assert stored == {"kwargs": {"m": {"10": "a", "2": "b"}}}
    assert digest == spec_hash(stored)


@pytest.mark.parametrize(
    "args",
    [
        [[{10: "a", 2: "b"}]],  # a dict in a list in the args
        [({"x": [1, {10: "a", 2: "b"}]},)],  # in a list in a dict in a tuple
        ["s", 1, None, {"k": {"deep": [[{10: "a", 2: "b"}]]}}],  # after scalars, deep down
    ],
)
def test_int_keys_anywhere_in_the_arguments_are_found(args):
    from reproq_django.serialization import canonical_spec

    _stored, _digest, text = canonical_spec({"args": args, "v": 1})
    assert '{"10":"a","2":"b"}' in text, text


def test_an_unpaired_surrogate_is_refused_with_the_storage_error():
    # It escaped as a bare UnicodeEncodeError from hashing; NaN and NUL got this message.
    from reproq_django.serialization import canonical_spec

    with pytest.raises(ValueError, match=r"^cannot store a task's arguments or metadata: a "
                       r"string holds an unpaired surrogate \('\\ud800'\)"):  # fmt: skip
        canonical_spec({"args": ["a\ud800b"]})
