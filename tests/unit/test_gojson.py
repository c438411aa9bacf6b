"""Go's encoding/json syntax check (reproq_cli.gojson) and what the worker decodes
with it: Go's error texts, and JSON nested deeper than Python's decoder goes."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from reproq_cli import gojson
from reproq_cli.core.executor import GO_SPACE, parse_envelope
from reproq_cli.core.policy import resolve_task_path
from reproq_cli.core.pool import read_answer
from reproq_cli.models import ClaimedTask

DEEP = 3_000  # past Python's decoder (~1,500 levels), well within Go's and jsonb's 10,000


def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "unexpected end of JSON input"),
        ("   ", "unexpected end of JSON input"),
        ("[1, 2", "unexpected end of JSON input"),
        ('{"a": "cut', "unexpected end of JSON input"),
        ('{"a" 1}', "invalid character '1' after object key"),
        ('{"a": 1 "b": 2}', "invalid character '\"' after object key:value pair"),
        ("[1 2]", "invalid character '2' after array element"),
        ("{1: 2}", "invalid character '1' looking for beginning of object key string"),
        ('{"a": 1,}', "invalid character '}' looking for beginning of object key string"),
        ("[1,]", "invalid character ']' looking for beginning of value"),
        ('{"X": "foo", "Y"}', "invalid character '}' after object key"),
        ('{"F3": -}', "invalid character '}' in numeric literal"),
        ("01", "invalid character '1' after top-level value"),
        ("[1.]", "invalid character ']' after decimal point in numeric literal"),
        ("1e+", "invalid character ' ' in exponent of numeric literal"),  # Go's eof: a space
        ("-", "invalid character ' ' in numeric literal"),
        ("tru", "invalid character ' ' in literal true (expecting 'e')"),
        ("[nul1]", "invalid character '1' in literal null (expecting 'l')"),
        ("fake", "invalid character 'k' in literal false (expecting 'l')"),
        ('"a\\x"', "invalid character 'x' in string escape code"),
        ('"\\u12G4"', "invalid character 'G' in \\u hexadecimal character escape"),
        ('"tab\there"', "invalid character '\\t' in string literal"),
        ("NaN", "invalid character 'N' looking for beginning of value"),
        ("[-Infinity]", "invalid character 'I' in numeric literal"),
        # Go quotes the first byte of the character, read as Latin-1: é is C3 A9.
        ("\u00e9", "invalid character '\u00c3' looking for beginning of value"),
        ('{"a": 1} x', "invalid character 'x' after top-level value"),
        (nested(10_001), "invalid character '[' exceeded max depth"),
    ],
)
def test_go_syntax_error_texts(text, error):
    assert gojson.syntax_error(text) == error


@pytest.mark.parametrize("text", ["0", " 1.5e-3 ", "[]", '{"a": [true, false, null]}', "-0"])
def test_valid_documents_have_no_error(text):
    assert gojson.syntax_error(text) is None


def test_go_and_python_agree_on_what_is_json():
    """Python's decoder, refusing NaN and the infinities, takes exactly what Go's scanner
    takes, over random strings of JSON's characters (seeded: the same strings every run)."""
    alphabet = [*'{}[],:"\\ \t\n0123456789-+.eEtrufalsnNI\x01\u00e9', "true", '"k"', "null"]

    def refuse(name: str) -> None:
        raise ValueError(name)

    strict = json.JSONDecoder(parse_constant=refuse)
    generator = random.Random(20261127)
    valid = 0
    for _ in range(20_000):
        text = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 10)))
        try:
            strict.decode(text)
        except ValueError:
            assert gojson.syntax_error(text) is not None, text
        else:
            valid += 1
            assert gojson.syntax_error(text) is None, text
            start = len(text) - len(text.lstrip(" \t\n\r"))
            assert gojson.value_end(text, start) == len(text.rstrip(" \t\n\r")), text
    assert valid > 500  # the comparison saw both kinds


def test_value_end_without_recursion():
    text = '{"a": ' + nested(DEEP) + ', "b": 12, "c": "x"}'
    start = text.index("[")
    assert gojson.value_end(text, start) == start + 2 * DEEP
    assert gojson.value_end(text, text.index("12")) == text.index("12") + 2
    assert gojson.value_end(text, text.index('"x"')) == text.index('"x"') + 3


@pytest.mark.parametrize(
    ("stdout", "error"),
    [
        # Python's decoder reads a 12 and stops; Go's scanner is still in the number.
        ("12.", "invalid character ' ' after decimal point in numeric literal"),
        ("1e", "invalid character ' ' in exponent of numeric literal"),
        ("0x", "invalid character 'x' after top-level value"),
        ('{"ok": true} {', "invalid character '{' after top-level value"),
    ],
)
def test_data_after_the_value_is_worded_as_go_does(stdout, error):
    assert parse_envelope(stdout).message == f"Invalid JSON on stdout: {error}"


def test_stdout_is_trimmed_as_gos_strings_trimspace_trims_it():
    # str.strip() also took the separators \x1c-\x1f, so "\x1e" + an envelope succeeded
    # (found by the bad-input property test); Go's decoder refuses the character.
    assert parse_envelope('\x1e{"ok": true}').message == (
        "Invalid JSON on stdout: invalid character '\\x1e' looking for beginning of value"
    )
    assert parse_envelope('{"ok": true}\x1f').message == (
        "Invalid JSON on stdout: invalid character '\\x1f' after top-level value"
    )
    # What Go does trim: ASCII space, NEL, NBSP and the Unicode spaces.
    assert parse_envelope('\x85\xa0\u2003{"ok": true}\u3000\u2029 \n').ok is True
    assert (
        "".join(c for c in map(chr, range(0x110000)) if c.isspace() and c not in "\x1c\x1d\x1e\x1f")
        == GO_SPACE
    )


def test_an_envelope_nested_past_pythons_decoder_is_read():
    deep = nested(DEEP, "1")
    with pytest.raises(RecursionError):
        json.loads(deep)
    envelope = parse_envelope('{"ok": true, "message": "m", "return": ' + deep + "}")
    assert (envelope.ok, envelope.message, envelope.return_raw) == (True, "m", deep)
    # Wrong inside, it fails as Go's decoder would, at the first wrong character.
    broken = parse_envelope('{"ok": true, "return": ' + nested(DEEP, "1 2") + "}")
    assert broken.message == "Invalid JSON on stdout: invalid character '2' after array element"
    too_deep = parse_envelope('{"ok": true, "return": ' + nested(10_000) + "}")
    assert too_deep.message == "Invalid JSON on stdout: invalid character '[' exceeded max depth"
    top = parse_envelope(nested(DEEP))
    assert top.message == (
        "Invalid JSON on stdout: json: cannot unmarshal array into Go value of type "
        "executor.ResultEnvelope"
    )


@pytest.mark.parametrize(
    ("stdout", "error"),
    [
        ('{"ok": "yes"}', "cannot unmarshal string into Go struct field ResultEnvelope.ok of type bool"),
        ('{"ok": 1}', "cannot unmarshal number into Go struct field ResultEnvelope.ok of type bool"),
        ('{"message": true}', "cannot unmarshal bool into Go struct field ResultEnvelope.message of type string"),
        ('{"Traceback": [1]}', "cannot unmarshal array into Go struct field ResultEnvelope.traceback of type string"),
        ('{"exception_class": {}}', "cannot unmarshal object into Go struct field ResultEnvelope.exception_class of type string"),
        # The first wrong member in the order written, as Go's decoder reports it.
        ('{"message": 3, "ok": "yes"}', "cannot unmarshal number into Go struct field ResultEnvelope.message of type string"),
        ('{"ok": ' + nested(DEEP) + "}", "cannot unmarshal array into Go struct field ResultEnvelope.ok of type bool"),
    ],
)  # fmt: skip
def test_wrong_field_types_name_the_json_kind(stdout, error):
    assert parse_envelope(stdout).message == f"Invalid JSON on stdout: json: {error}"


def test_a_pool_answer_nested_past_pythons_decoder_is_read():
    deep = nested(DEEP)
    line = ('{"result": {"ok": true, "return": ' + deep + '}, "stderr": "said"}\n').encode()
    raw, stderr, envelope = read_answer(line)
    assert (envelope.ok, envelope.return_raw, stderr) == (True, deep, "said")
    assert raw == '{"ok": true, "return": ' + deep + "}"


def _claimed(spec_text: str) -> ClaimedTask:
    now = datetime.now(UTC)
    return ClaimedTask(
        result_id=1,
        queue_name="default",
        priority=0,
        spec_text=spec_text,
        spec_hash="0" * 64,
        enqueued_at=now,
        attempts=1,
        max_attempts=3,
        timeout_seconds=900,
        lock_key=None,
        concurrency_key=None,
        concurrency_limit=0,
        leased_until=now,
        task_path=None,  # from the spec, as for a row whose writer left the column empty
        workflow_id=None,
    )


def test_a_spec_nested_past_pythons_decoder_still_names_its_task():
    spec = '{"task_path": "app.tasks.run", "args": [' + nested(DEEP) + "]}"
    assert resolve_task_path(_claimed(spec)) == ("app.tasks.run", None)
    broken = '{"task_path": "app.tasks.run", "args": [' + nested(DEEP, "1}") + "]}"
    assert resolve_task_path(_claimed(broken)) == (
        None,
        "spec_json is not valid JSON: invalid character '}' after array element",
    )
    wrong = '{"task_path": ' + nested(DEEP) + "}"
    assert resolve_task_path(_claimed(wrong)) == (
        None,
        "json: cannot unmarshal array into Go struct field taskSpec.task_path of type string",
    )
