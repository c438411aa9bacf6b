"""Pure pieces of the worker: envelope parsing, backoff, allow-list, redaction, log format."""

from __future__ import annotations

import enum
import io
import json
import re
import threading
from datetime import datetime, timedelta

import pytest

from reproq_cli.core import policy
from reproq_cli.core.executor import BoundedBuffer, parse_envelope
from reproq_cli.core.logs import Logger, redact, should_redact
from reproq_cli.core.pool import _decode_response, read_answer
from reproq_cli.process import memory_log_interval, wait_or_stop


@pytest.mark.parametrize(
    ("attempts", "seconds"),
    [
        (0, 30),
        (1, 30),
        (2, 60),
        (3, 120),
        (4, 240),
        (5, 480),
        (6, 960),
        (7, 1920),
        (8, 3600),
        (60, 3600),
        (10_000, 3600),
    ],
)
def test_backoff_table(attempts, seconds):
    assert policy.backoff_seconds(attempts) == seconds


def test_allow_list_like_go():
    allowed = ["myapp.tasks.", "shared."]
    assert policy.is_allowed("myapp.tasks.send_email", allowed)
    assert policy.is_allowed("shared.cleanup", allowed)
    assert not policy.is_allowed("other.malicious_task", allowed)
    assert not policy.is_allowed("myapp.tasks_bypass", allowed)
    assert policy.is_allowed("anything.at.all", ["*"])
    # empty list: the validator's defaults
    assert policy.is_allowed("tasks.x", [])
    assert policy.is_allowed("myapp.tasks.y", [])
    assert not policy.is_allowed("evil.z", [])


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ('{"ok": true, "return": {"a": [1, 2]}}', (True, '{"a": [1, 2]}', "")),
        ('\n  {"ok": true}  \n', (True, None, "")),
        ('{"ok": true, "return": null}', (True, "null", "")),
        ('{"OK": true, "Return": 5}', (True, "5", "")),
        (
            '{"ok": false, "message": "bad", "exception_class": "E", "extra": 1}',
            (False, None, "bad"),
        ),
        ("null", (False, None, "")),
        ("", (False, None, "Invalid JSON on stdout: unexpected end of JSON input")),
        (
            '{"ok": tr',  # Go's scanner reads a space at the end, which a cut literal refuses
            (
                False,
                None,
                "Invalid JSON on stdout: invalid character ' ' in literal true (expecting 'u')",
            ),
        ),
        ('{"ok": "cut', (False, None, "Invalid JSON on stdout: unexpected end of JSON input")),
        (
            "hello",
            (
                False,
                None,
                "Invalid JSON on stdout: invalid character 'h' looking for beginning of value",
            ),
        ),
        (
            '{"ok": true} x',
            (False, None, "Invalid JSON on stdout: invalid character 'x' after top-level value"),
        ),
        (
            "[1]",
            (
                False,
                None,
                "Invalid JSON on stdout: json: cannot unmarshal array into Go value of type "
                "executor.ResultEnvelope",
            ),
        ),
    ],
)
def test_envelope_parsing(stdout, expected):
    envelope = parse_envelope(stdout)
    assert (envelope.ok, envelope.return_raw, envelope.message) == expected


@pytest.mark.parametrize(
    ("stdout", "raw"),
    [
        # Kept as written, like Go's json.RawMessage (jsonb then keeps 2.50's scale).
        ('{"ok": true, "return": 1E2}', "1E2"),
        ('{"ok": true, "return": {"b": 1, "a": 2.50}}', '{"b": 1, "a": 2.50}'),
        ('{"ok":true,"return":1e400}', "1e400"),  # re-encoded, it was Infinity
        (' { "Return" : "x\\u00e9" , "RETURN" : [ 1 , 2 ] , "ok" : true } ', "[ 1 , 2 ]"),
    ],
)
def test_the_return_value_is_kept_raw(stdout, raw):
    assert parse_envelope(stdout).return_raw == raw


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("NaN", "invalid character 'N' looking for beginning of value"),
        ("[1, Infinity]", "invalid character 'I' looking for beginning of value"),
        ("-Infinity", "invalid character 'I' in numeric literal"),
    ],
)
def test_nan_and_infinity_are_not_json(value, error):
    # Python's decoder takes them; jsonb refused them at the success write, which failed
    # every success in the same batch (and the task stayed RUNNING).
    envelope = parse_envelope(f'{{"ok": true, "return": {value}}}')
    assert (envelope.ok, envelope.message) == (False, f"Invalid JSON on stdout: {error}")


def test_envelope_wrong_types_are_errors():
    assert parse_envelope('{"ok": "yes"}').message.startswith("Invalid JSON on stdout: json:")
    assert parse_envelope('{"ok": false, "message": 3}').message.startswith(
        "Invalid JSON on stdout: json:"
    )


def test_bounded_buffer():
    buffer = BoundedBuffer(5)
    buffer.write(b"hello world")
    assert buffer.text(with_marker=False) == "hello"
    assert buffer.text() == "hello\n[TRUNCATED due to size limit]"
    small = BoundedBuffer(100)
    small.write(b"fits")
    assert small.text() == "fits"


@pytest.mark.parametrize(
    "key",
    [
        "payload_json",
        "Spec_JSON",
        "authorization",
        "api_token",
        "password",
        "stdout",
        "DB_PASSWORD",
        "apikey",
        "client_secret",
    ],
)
def test_redacted_keys(key):
    assert should_redact(key)


@pytest.mark.parametrize("key", ["spec_hash", "task_path", "result_id", "queue"])
def test_kept_keys(key):
    assert not should_redact(key)


def test_redaction_is_recursive():
    assert redact({"group": {"password": "x", "ok": 1}, "list": [{"token": "t"}]}) == {
        "group": {"password": "[REDACTED]", "ok": 1},
        "list": [{"token": "[REDACTED]"}],
    }


def test_json_log_lines():
    stream = io.StringIO()
    log = Logger(stream, "json", {"worker_id": "w1"}).bind(spec_json='{"secret": 1}')
    log.warn("Task failed", msg="boom", attempt=2)
    line = stream.getvalue().strip()
    # Go's slog writes the attribute "msg" after the message's own "msg" key.
    assert line.count('"msg"') == 2
    record = json.loads(line)  # the later duplicate wins for JSON parsers
    assert record["level"] == "WARN"
    assert record["worker_id"] == "w1"
    assert record["spec_json"] == "[REDACTED]"
    assert record["attempt"] == 2
    # Compact, as slog writes it: tools grep for '"level":"ERROR"'.
    assert line.startswith('{"time":"')
    assert '"level":"WARN","msg":"Task failed"' in line


def test_json_log_attributes_in_order_through_binds():
    stream = io.StringIO()
    log = Logger(stream, "json", {"worker_id": "w1"}).bind(result_id=7, token="t")
    log = log.bind(task_path="a.b", attempt=2)
    log.info("Task successful", duration=0.5)
    # A key bound again, or given again at the call, keeps its first place with the new value.
    log.bind(result_id=8).info("again", worker_id="w2", extra="ü\u2028")
    lines = stream.getvalue().splitlines()
    first, second = (json.loads(line, object_pairs_hook=list) for line in lines)
    assert first[1:] == [
        ("level", "INFO"),
        ("msg", "Task successful"),
        ("worker_id", "w1"),
        ("result_id", 7),
        ("token", "[REDACTED]"),
        ("task_path", "a.b"),
        ("attempt", 2),
        ("duration", 0.5),
    ]
    assert second[3:] == [
        ("worker_id", "w2"),
        ("result_id", 8),
        ("token", "[REDACTED]"),
        ("task_path", "a.b"),
        ("attempt", 2),
        ("extra", "ü\u2028"),
    ]
    assert lines[1].endswith('"extra":"ü\\u2028"}')


def test_json_log_values_of_every_kind():
    """Strings and ints skip the JSON encoder's call; every other kind goes through it, and
    a bound value is written exactly as a value given at the call."""

    class Level(enum.IntEnum):
        HIGH = 3

    values = {
        "flag": True,
        "none": None,
        "big": 10**30,
        "neg": -5,
        "level": Level.HIGH,
        "ratio": 1.5,
        "nan": float("nan"),
        "took": timedelta(seconds=1.5),
        "at": datetime(2026, 1, 2, 3, 4, 5),
        "nested": {"password": "x", "ids": (1, 2)},
        "api_token": 7,
        "quote": 'a"b\\',
    }
    expected = (
        ',"flag":true,"none":null,"big":1000000000000000000000000000000,"neg":-5,"level":3'
        ',"ratio":1.5,"nan":NaN,"took":1500000000,"at":"2026-01-02T03:04:05"'
        ',"nested":{"password":"[REDACTED]","ids":[1,2]},"api_token":"[REDACTED]"'
        ',"quote":"a\\"b\\\\"}'
    )
    stream = io.StringIO()
    Logger(stream, "json").info("given", **values)
    Logger(stream, "json").bind(**values).info("bound")
    for line in stream.getvalue().splitlines():
        assert line.endswith(expected), line


def test_json_log_time_is_local_rfc3339_with_milliseconds():
    stream = io.StringIO()
    before = datetime.now().astimezone()
    Logger(stream, "json").info("now")
    after = datetime.now().astimezone()
    stamp = json.loads(stream.getvalue())["time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)", stamp)
    moment = datetime.fromisoformat(stamp)
    assert moment.utcoffset() == before.utcoffset()
    # Milliseconds are cut, not rounded, as Go formats them.
    assert before - timedelta(milliseconds=1) < moment <= after


def test_text_log_lines():
    stream = io.StringIO()
    Logger(stream, "text", {"worker_id": "w1"}).info("Executing task", task_path="a.b", token="t")
    line = stream.getvalue().strip()
    assert " INFO  Executing task  worker_id=w1 task_path=a.b token=[REDACTED]" in line


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("45s", 45),
        ("120", 120),
        ("1m30s", 90),
        ("", 0),
        ("nope", -1),
        ("0", -1),
        ("-5s", -1),
        # reproq-django's parser took fractions and upper-case units
        ("0.5", 0.5),
        ("1.5", 1.5),
        ("90S", 90),
        ("1.5M", 90),
        # digits that str.isdigit() knows but float() does not: the worker died of them
        ("\u00b2", -1),
        ("\u0661\u0660", -1),
    ],
)
def test_memory_log_interval(raw, seconds):
    value, error = memory_log_interval(raw)
    assert value == seconds
    assert bool(error) == (seconds < 0)


def test_a_wait_longer_than_threading_allows():
    stop = threading.Event()
    stop.set()
    assert wait_or_stop(stop, 1e12)  # Event.wait(1e12) raises OverflowError
    assert not wait_or_stop(threading.Event(), 0.01)


@pytest.mark.parametrize(
    ("line", "raw", "stderr"),
    [
        (
            b'{"result": {"ok": true, "return": 2.50}, "stderr": "x"}\n',
            '{"ok": true, "return": 2.50}',
            "x",
        ),
        (
            b'{"stderr": "", "result": {"ok":true,"return":1e400}}\n',
            '{"ok":true,"return":1e400}',
            "",
        ),
        # Our key is "result" exactly; a look-alike is not taken for it.
        (
            b'{"Result": 1, "result": {"ok": true, "return": 1E2}}\n',
            '{"ok": true, "return": 1E2}',
            "",
        ),
    ],
)
def test_a_pool_answer_passes_its_envelope_on_as_written(line, raw, stderr):
    # Decoded and encoded again, 2.50 lost its scale and 1e400 became an Infinity that
    # failed the task, where spawn mode, which reads stdout as written, kept both.
    assert _decode_response(line) == (raw, stderr)
    assert parse_envelope(raw).return_raw == raw.split('"return":')[1].strip(" }")


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b'["result"]\n',
        b'{"stderr": ""}\n',
        b'{"result": 1}\xff\n',
        b'{"result": {"ok": true, "return": Infinity}, "stderr": ""}\n',
    ],
)
def test_a_garbled_pool_answer_fails_its_envelope(line):
    text, stderr = _decode_response(line)
    assert stderr == ""
    assert not parse_envelope(text).ok


_ANSWERS = [
    b'{"result": {"ok": true, "return": null}, "stderr": ""}\n',
    b'{"result": {"ok": true, "return": 2.50}, "stderr": "a \\"quoted\\" line\\n\\u00e9"}\n',
    b'{"result": {"ok": false, "exception_class": "ValueError", "message": "m",'
    b' "traceback": "t"}, "stderr": ""}  \n',
    b'{"result": {"ok": true, "return": NaN}, "stderr": ""}\n',
    b'{"result": {"ok": "yes"}, "stderr": ""}\n',
    b'{"result": {"ok": true, "message": 3}, "stderr": ""}\n',
    b'{"result": null, "stderr": ""}\n',
    b'{"result": [1], "stderr": ""}\n',
    b'{"result": {"OK": true, "Return": 1E2}, "stderr": "x"}\n',
    b'{"result": {"ok": true}, "stderr": "x", "extra": 1}\n',
    b'{"result": {"ok": true}, "stderr": "x"} trailing\n',
    b'{"stderr": "x", "result": {"ok": true, "return": 1}}\n',
    b'{"result": {"ok": true, "return": "\xff"}, "stderr": ""}\n',
    b"garbage\n",
]


@pytest.mark.parametrize("line", _ANSWERS)
def test_an_answer_reads_the_same_by_the_one_pass_and_the_general_way(line):
    # read_answer decodes our executor's layout in one pass; whatever it takes that way must
    # come out exactly as the general path (_decode_response, then parse_envelope) says.
    raw, stderr = _decode_response(line)
    assert read_answer(line) == (raw, stderr, parse_envelope(raw))
