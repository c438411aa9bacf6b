"""Go's encoding/json syntax check, for what the worker reads from executors and rows, and
the beat from periodic payloads.

Two gaps of Python's decoder against Go's: its error texts differ (``Expecting ':' delimiter``
where Go says ``invalid character 'x' after object key``), and it gives up (RecursionError)
past ~1,500 levels of nesting, which Go's decoder and jsonb take up to 10,000. The worker
decodes with Python's decoder and turns here only when that fails: ``syntax_error`` words an
error as Go's ``json.Unmarshal`` does, and ``value_end`` finds where a value ends without
recursing. Both follow the states of Go's scanner, one character at a time. ``raw_members``
(an object's members as written, for the envelope's raw return value), ``raw_top_level`` and
``top_level`` use
``value_end`` where Python's decoder would recurse too deep; ``top_level`` checks the
document first.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 10_000  # Go's maxNestingDepth

_SPACE = frozenset(" \t\n\r")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = frozenset('bfnrt\\/"')
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_SCANNER = json.JSONDecoder()

# Where the scanner is: the state of Go's scanner of the same name.
(
    BEGIN_VALUE_OR_EMPTY,
    BEGIN_VALUE,
    BEGIN_STRING_OR_EMPTY,
    BEGIN_STRING,
    END_VALUE,
    END_TOP,
    IN_STRING,
    IN_STRING_ESC,
    IN_STRING_ESC_U,
    NEG,
    ONE,
    ZERO,
    DOT,
    DOT0,
    E,
    E_SIGN,
    E0,
    LITERAL,
) = range(18)

_OBJECT_KEY, _OBJECT_VALUE, _ARRAY_VALUE = range(3)

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\"}  # fmt: skip


def go_quote_char(char: str) -> str:
    """How Go's encoding/json quotes the byte it stopped at: its first UTF-8 byte, read as
    one Latin-1 character ('\'' and '"' are Go's own special cases)."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    byte = char.encode("utf-8", errors="replace")[0]
    char = chr(byte)
    if char in _GO_ESCAPES:
        return f"'{_GO_ESCAPES[char]}'"
    if char.isprintable():
        return f"'{char}'"
    return f"'\\x{byte:02x}'" if byte < 0x80 else f"'\\u{byte:04x}'"


class GoSyntaxError(ValueError):
    """The input is not JSON to Go; the message is Go's."""


class _Scanner:
    """Go's scanner: ``step`` takes one character and raises GoSyntaxError where Go's would
    fail; ``done`` is set once a whole top-level value has been read. With ``whole``, what
    follows that value must be whitespace, as in a document; without, the caller stops there.
    """

    def __init__(self, *, whole: bool) -> None:
        self.whole = whole
        self.state = BEGIN_VALUE
        self.stack: list[int] = []
        self.done = False
        self.closed = False  # the last step ended the value with a bracket (part of it)
        self.literal = ""  # the rest of true/false/null still expected
        self.name = ""  # which literal
        self.hex_left = 0

    def fail(self, char: str, context: str) -> GoSyntaxError:
        return GoSyntaxError(f"invalid character {go_quote_char(char)} {context}")

    def push(self, char: str, kind: int) -> None:
        self.stack.append(kind)
        if len(self.stack) > MAX_DEPTH:
            raise self.fail(char, "exceeded max depth")

    def pop(self) -> None:
        self.stack.pop()
        self.state = END_VALUE
        if not self.stack:
            self.state, self.done, self.closed = END_TOP, True, True

    def step(self, c: str) -> None:
        state = self.state
        if state == BEGIN_VALUE_OR_EMPTY:
            if c in _SPACE:
                return
            if c == "]":
                self.pop()
                return
            state = BEGIN_VALUE
        if state == BEGIN_STRING_OR_EMPTY:
            if c in _SPACE:
                return
            if c == "}":
                self.stack[-1] = _OBJECT_VALUE
                self.pop()
                return
            state = BEGIN_STRING
        if state == BEGIN_VALUE:
            self.begin_value(c)
        elif state == BEGIN_STRING:
            if c in _SPACE:
                self.state = BEGIN_STRING
            elif c == '"':
                self.state = IN_STRING
            else:
                raise self.fail(c, "looking for beginning of object key string")
        elif state == END_VALUE:
            self.end_value(c)
        elif state == END_TOP:
            if c not in _SPACE:
                raise self.fail(c, "after top-level value")
        elif state == IN_STRING:
            if c == '"':
                self.state = END_VALUE
            elif c == "\\":
                self.state = IN_STRING_ESC
            elif c < " ":
                raise self.fail(c, "in string literal")
        elif state == IN_STRING_ESC:
            if c in _ESCAPES:
                self.state = IN_STRING
            elif c == "u":
                self.state, self.hex_left = IN_STRING_ESC_U, 4
            else:
                raise self.fail(c, "in string escape code")
        elif state == IN_STRING_ESC_U:
            if c not in _HEX:
                raise self.fail(c, "in \\u hexadecimal character escape")
            self.hex_left -= 1
            if not self.hex_left:
                self.state = IN_STRING
        elif state == NEG:
            if c == "0":
                self.state = ZERO
            elif c in _DIGITS:
                self.state = ONE
            else:
                raise self.fail(c, "in numeric literal")
        elif state == ONE and c in _DIGITS:
            pass
        elif state in (ONE, ZERO):
            if c == ".":
                self.state = DOT
            elif c in "eE":
                self.state = E
            else:
                self.end_value(c)
        elif state == DOT:
            if c not in _DIGITS:
                raise self.fail(c, "after decimal point in numeric literal")
            self.state = DOT0
        elif state == DOT0:
            if c in "eE":
                self.state = E
            elif c not in _DIGITS:
                self.end_value(c)
        elif state == E and c in "+-":
            self.state = E_SIGN
        elif state in (E, E_SIGN):
            if c not in _DIGITS:
                raise self.fail(c, "in exponent of numeric literal")
            self.state = E0
        elif state == E0:
            if c not in _DIGITS:
                self.end_value(c)
        elif state == LITERAL:
            expected = self.literal[0]
            if c != expected:
                context = f"in literal {self.name} (expecting {go_quote_char(expected)})"
                raise self.fail(c, context)
            self.literal = self.literal[1:]
            if not self.literal:
                self.state = END_VALUE

    def begin_value(self, c: str) -> None:
        if c in _SPACE:
            self.state = BEGIN_VALUE
        elif c == "{":
            self.state = BEGIN_STRING_OR_EMPTY
            self.push(c, _OBJECT_KEY)
        elif c == "[":
            self.state = BEGIN_VALUE_OR_EMPTY
            self.push(c, _ARRAY_VALUE)
        elif c == '"':
            self.state = IN_STRING
        elif c == "-":
            self.state = NEG
        elif c == "0":
            self.state = ZERO
        elif c in _DIGITS:
            self.state = ONE
        elif c in _LITERALS:
            self.state, self.name = LITERAL, _LITERALS[c]
            self.literal = self.name[1:]
        else:
            raise self.fail(c, "looking for beginning of value")

    def end_value(self, c: str) -> None:
        """A value has ended; ``c`` is the character after it."""
        if not self.stack:
            self.state, self.done, self.closed = END_TOP, True, False
            if self.whole:
                self.step(c)
            return
        if c in _SPACE:
            self.state = END_VALUE
            return
        kind = self.stack[-1]
        if kind == _OBJECT_KEY:
            if c != ":":
                raise self.fail(c, "after object key")
            self.stack[-1], self.state = _OBJECT_VALUE, BEGIN_VALUE
        elif kind == _OBJECT_VALUE:
            if c == ",":
                self.stack[-1], self.state = _OBJECT_KEY, BEGIN_STRING
            elif c == "}":
                self.pop()
            else:
                raise self.fail(c, "after object key:value pair")
        elif c == ",":
            self.state = BEGIN_VALUE
        elif c == "]":
            self.pop()
        else:
            raise self.fail(c, "after array element")


def syntax_error(text: str) -> str | None:
    """Go's error for ``text`` as one JSON document (``json.Unmarshal``'s syntax check),
    or None when Go's decoder would take it."""
    scanner = _Scanner(whole=True)
    try:
        for c in text:
            scanner.step(c)
        if not scanner.done:
            scanner.step(" ")  # Go's eof: a number at the very end is complete
    except GoSyntaxError as exc:
        return str(exc)
    return None if scanner.done else "unexpected end of JSON input"


def value_end(text: str, start: int) -> int:
    """Where the JSON value at ``text[start]`` ends (exclusive). GoSyntaxError if there is
    no valid value there."""
    scanner = _Scanner(whole=False)
    for i in range(start, len(text)):
        scanner.step(text[i])
        if scanner.done:
            return i + 1 if scanner.closed else i
    scanner.step(" ")
    if scanner.done:
        return len(text)
    raise GoSyntaxError("unexpected end of JSON input")


def raw_members(text: str, *, fold_case: bool = True) -> dict[str, str]:
    """The raw text of each member of the JSON object ``text`` (already decoded once, so
    known to be valid), by lower-cased key (``fold_case``), the last match winning as in Go."""

    def skip(i: int) -> int:
        while text[i] in _SPACE:
            i += 1
        return i

    found: dict[str, str] = {}
    i = skip(skip(0) + 1)  # past "{"
    while text[i] != "}":
        key, i = json.decoder.scanstring(text, i + 1)
        i = skip(skip(i) + 1)  # past ":"
        # Only the extent of each value is wanted here: NaN and the like are the caller's
        # to refuse (parse_envelope does), not a reason to fail the split.
        try:
            _value, end = _SCANNER.raw_decode(text, i)
        except RecursionError:  # nested past Python's decoder (valid: see the docstring)
            end = value_end(text, i)
        found[key.lower() if fold_case else key] = text[i:end]
        i = skip(end)
        if text[i] == ",":
            i = skip(i + 1)
    return found


def go_kind(value: Any) -> str:
    """Go's name for the kind of a decoded JSON value, as its UnmarshalTypeError texts say."""
    kinds = {dict: "object", list: "array", str: "string", bool: "bool"}
    return kinds.get(type(value), "number")


def shallow(raw: str) -> Any:
    """The value of ``raw`` with an empty list or dict standing for any array or object
    (whose contents may be nested too deeply for Python's decoder)."""
    first = raw.lstrip()[:1]
    if first == "[":
        return []
    if first == "{":
        return {}
    return json.loads(raw)


def raw_top_level(text: str) -> dict[str, str] | str:
    """The JSON document ``text`` split one level without recursing: an object's members as
    written, by key (the last one winning), or the document itself, stripped, when it is not
    an object. GoSyntaxError, with Go's text, when Go's decoder would refuse it."""
    problem = syntax_error(text)
    if problem is not None:
        raise GoSyntaxError(problem)
    text = text.strip(" \t\n\r")
    return raw_members(text, fold_case=False) if text.startswith("{") else text


def top_level(text: str) -> Any:
    """The JSON document ``text``, decoded without recursing: an object's members, each array
    or object among them empty (see ``shallow``). GoSyntaxError as raw_top_level."""
    raw = raw_top_level(text)
    if isinstance(raw, str):
        return shallow(raw)
    return {key: shallow(member) for key, member in raw.items()}
