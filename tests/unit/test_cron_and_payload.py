"""The Go beat's cron dialect and payload splitting (go-worker.md §7)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from reproq_cli.core import beat
from reproq_cli.core.beat import DueTask, PayloadError, plan, split_payload
from reproq_cli.core.cron import CronError, parse
from tests.support.specs import periodic_spec

UTC = dt.UTC


def nxt(expr: str, now: dt.datetime) -> dt.datetime | None:
    return parse(expr).next_after(now)


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "now", "expected"),
    [
        ("* * * * *", at(2025, 1, 1, 12, 0, 0), at(2025, 1, 1, 12, 1)),
        ("* * * * *", at(2025, 1, 1, 12, 0, 30), at(2025, 1, 1, 12, 1)),
        ("*/15 * * * *", at(2025, 1, 1, 12, 7), at(2025, 1, 1, 12, 15)),
        ("5 4 * * *", at(2025, 1, 1, 4, 5), at(2025, 1, 2, 4, 5)),
        ("0 0 1 jan *", at(2025, 3, 1), at(2026, 1, 1)),
        ("0 9 * * MON-FRI", at(2025, 1, 4, 10), at(2025, 1, 6, 9)),  # Saturday -> Monday
        ("0 0 29 2 *", at(2025, 3, 1), at(2028, 2, 29)),
        ("30 2 * * sun", at(2025, 1, 1), at(2025, 1, 5, 2, 30)),
        ("0 12 5/10 * *", at(2025, 1, 6), at(2025, 1, 15, 12)),  # a/n = a..max step n
        ("0 0 1-7 * 1", at(2025, 1, 8), at(2025, 1, 13)),  # Vixie OR: the 13th is a Monday
        ("0 0 */2 * 1", at(2025, 1, 1, 1), at(2025, 1, 3)),  # step > 1 restricts: OR
        ("0 0 * * 1", at(2025, 1, 1), at(2025, 1, 6)),  # dom "*": AND -> Mondays only
        ("0 0 ? * 1", at(2025, 1, 1), at(2025, 1, 6)),
        ("TZ=America/New_York 0 9 * * *", at(2025, 1, 1, 15), at(2025, 1, 2, 14)),
        ("CRON_TZ=Europe/Paris 0 9 * * *", at(2025, 7, 1, 6), at(2025, 7, 1, 7)),
    ],
)
def test_next_run(expr, now, expected):
    assert nxt(expr, now) == expected


# A fall-back in New York: 2026-11-01 01:00-01:59 happens twice, at 05:00-05:59Z (EDT) and
# again at 06:00-06:59Z (EST). Like robfig/cron, a schedule matches each instant once.
@pytest.mark.parametrize(
    ("expr", "now", "expected"),
    [
        # robfig/cron's own vector: from 01:45 EDT, 01:30 comes again, in EST
        ("TZ=America/New_York 30 1 4 11 *", at(2012, 11, 4, 5, 45), at(2012, 11, 4, 6, 30)),
        ("TZ=America/New_York 30 1 4 11 *", at(2012, 11, 4, 4, 15), at(2012, 11, 4, 5, 30)),
        # in the first 01:xx the second one is next, not 02:00
        ("TZ=America/New_York */15 * * * *", at(2026, 11, 1, 5, 50), at(2026, 11, 1, 6)),
        # in the second 01:xx the next run is after now, never the first 01:30
        ("TZ=America/New_York */15 * * * *", at(2026, 11, 1, 6, 15), at(2026, 11, 1, 6, 30)),
        ("TZ=America/New_York */15 * * * *", at(2026, 11, 1, 6, 59), at(2026, 11, 1, 7)),
        # a spring-forward skips 02:30 on 8 March: the next one is on the 9th
        ("TZ=America/New_York 30 2 * * *", at(2026, 3, 8, 5), at(2026, 3, 9, 6, 30)),
    ],
)
def test_next_run_across_clock_changes(expr, now, expected):
    assert nxt(expr, now) == expected


DEEP = "[" * 3000 + "]" * 3000  # past Python's decoder (~1,500 levels); Go takes 10,000


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (DEEP, (DEEP, "{}")),
        (f'{{"args": {DEEP}, "kwargs": {{"a": "<&>"}}}}', (DEEP, '{"a":"\\u003c\\u0026\\u003e"}')),
        (f'{{"kwargs": {{"k": {DEEP}}}}}', ("[]", f'{{"k":{DEEP}}}')),
        (f'{{"flag": true, "d": [1, {DEEP}]}}', ("[]", f'{{"flag":true,"d":[1,{DEEP}]}}')),
        (f'{{"args": null, "x": {DEEP}}}', ("null", "{}")),
    ],
)
def test_split_payload_nested_past_pythons_decoder(payload, expected):
    # Was a PayloadError ("nested deeper than this beat can read") for what Go enqueues.
    assert split_payload(payload) == expected


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (f'{{"args": {{"x": {DEEP}}}}}', f'invalid periodic args: {{"x":{DEEP}}} is not an array'),
        (f'{{"kwargs": {DEEP}}}', f"invalid periodic kwargs: {DEEP} is not an object"),
        (
            "[" * 10_001 + "]" * 10_001,
            "invalid payload JSON: invalid character '[' exceeded max depth",
        ),
    ],
)
def test_split_payload_nested_past_pythons_decoder_refused_as_go_refuses_it(payload, error):
    with pytest.raises(PayloadError) as caught:
        split_payload(payload)
    assert str(caught.value) == error


@pytest.mark.parametrize(
    "payload",
    [
        '{"args": [1, "a <&> \\u2028", 1.10, -0.5e+3], "kwargs": {"k": {"z": [null, false]}}}',
        '[ "x" , 3 , {"b": 1, "a": [ ]} ]',
        '{"flag": true, "s": "\\"quoted\\" \\\\ é \\n"}',
        '{"args": null, "kwargs": null}',
        '{"kwargs": {"a": 2}, "args": [[1, 2], [3]]}',
    ],
)
def test_the_deep_way_gives_the_same_spec_as_the_usual_one(payload):
    # The same payloads through both ways: the spec bytes (and so the hash) agree.
    deep_args, deep_kwargs = beat._split_deep(payload)
    args, kwargs = beat._split(payload)
    assert periodic_spec(args_json=deep_args, kwargs_json=deep_kwargs) == periodic_spec(
        args_json=args, kwargs_json=kwargs
    )


def test_no_match_within_five_years():
    assert nxt("0 0 31 2 *", at(2025, 1, 1)) is None


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("@daily", "parser does not accept descriptors"),
        ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
        ("0 0 0 * * *", "expected exactly 5 fields, found 6: [0 0 0 * * *]"),
        ("0 0 * * 7", "above maximum (6)"),
        ("60 * * * *", "above maximum (59)"),
        ("*/0 * * * *", "step of range should be a positive number"),
        ("5-1 * * * *", "beyond end of range"),
        ("x * * * *", "failed to parse int from x"),
        ("0 0 L * *", "failed to parse int from L"),
        ("TZ=Mars/Base 0 0 * * *", "unknown time zone Mars/Base"),
        ("TZ=America 0 0 * * *", "unknown time zone America"),  # a directory of the tz data
        ("*/\u00b2 * * * *", "failed to parse int from \u00b2"),  # isdigit(), but not Atoi's
        ("\uff11 * * * *", "failed to parse int from \uff11"),  # a full-width 1
    ],
)
def test_invalid_expressions(expr, message):
    with pytest.raises(CronError, match=re.escape(message)):
        parse(expr)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('{"args": [1, "a"], "kwargs": {"k": "v"}}', ('[1,"a"]', '{"k":"v"}')),
        ('{"args": [true]}', ("[true]", "{}")),
        ('{"kwargs": {"a": 2}}', ("[]", '{"a":2}')),
        ('["x", 3]', ('["x",3]', "{}")),
        ('{"flag": true}', ("[]", '{"flag":true}')),
        ('{"args": null}', ("null", "{}")),
        ('{"b": 1.10, "a": [2, {"z": 1, "y": 2}]}', ("[]", '{"b":1.10,"a":[2,{"z":1,"y":2}]}')),
        ("", ("[]", "{}")),
        (None, ("[]", "{}")),
    ],
)
def test_split_payload(payload, expected):
    assert split_payload(payload) == expected


@pytest.mark.parametrize(
    "payload", ['"nope"', "3", '{"args": {"a": 1}}', '{"kwargs": [1]}', "{bad"]
)
def test_split_payload_invalid(payload):
    with pytest.raises(PayloadError):
        split_payload(payload)


def test_plan_reproduces_the_go_beat_bytes():
    task = DueTask(
        name="test_pt",
        cron_expr="* * * * *",
        task_path="myapp.pt",
        payload_text='{"args": [1], "kwargs": {"a": 1}}',
        queue_name="",
        priority=0,
        max_attempts=0,
        concurrency_key=None,
        concurrency_limit=0,
        next_run_at=at(2025, 1, 1),
    )
    planned = plan(task, at(2025, 6, 1, 10, 30, 5))
    # the derived vector in shared/spec/spec_hash_vectors.json
    assert planned.spec_hash == "faadc8773a0dac18bae98fa2157bf7f7c0c5a37b2aab4c43cf14b6ef3a56941e"
    assert (planned.queue_name, planned.max_attempts) == ("default", 3)
    assert planned.next_run_at == at(2025, 6, 1, 10, 31)
