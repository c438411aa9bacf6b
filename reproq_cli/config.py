"""Configuration for worker and beat: defaults < config file < environment < flags.

Behaviour follows go-worker.md §2: file discovery (``--config``, ``REPROQ_CONFIG``, then
``reproq.yaml``/``.yml``/``.toml`` and their dot-files in the working directory), empty file
and env values meaning "not set", list and duration syntax, truthy parsing. Every resolved
value remembers where it came from so ``reproq config --explain`` can show it.

Errors name the input (file and key, env var, or flag), the value, and the fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reproq_cli.defaults import (
    CONFIG_ENV,
    CONFIG_FILENAMES,
    KNOWN_FILE_KEYS,
    SETTINGS_BY_MODE,
    Mode,
    Setting,
)
from reproq_cli.errors import ConfigError

Source = Literal["default", "file", "env", "flag"]

# --- scalar syntaxes ---------------------------------------------------------------------------

_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
# ASCII digits only ([0-9], not \d): Go's ParseDuration takes no other.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
DURATION_HINT = "use Go duration syntax, e.g. 300ms, 5s, 1m30s, 1h"


MAX_DURATION_NS = float(2**63 - 1)


def parse_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds.

    Raises ValueError with a short reason; callers add which input it was.
    """
    original = text
    if text == "":
        raise ValueError("empty duration")
    sign = 1
    if text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0.0
    if text == "":
        raise ValueError(f"invalid duration {original!r}")
    total_ns = 0.0
    pos = 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            if re.fullmatch(r"[0-9.]+", text[pos:]):
                raise ValueError(f"missing unit in duration {original!r}")
            raise ValueError(f"invalid duration {original!r}")
        number, unit = match.groups()
        total_ns += float(number) * _DURATION_UNITS_NS[unit]
        pos = match.end()
    if total_ns > MAX_DURATION_NS:
        # Go's Duration is an int64 of nanoseconds; past it ParseDuration fails, and here
        # the value would overflow the clocks and timeouts it is used with.
        raise ValueError(f"duration {original!r} is out of range (at most 2562047h)")
    return sign * total_ns / 1e9


def format_duration(seconds: float) -> str:
    """Render seconds the way Go's ``Duration.String`` does (``1h0m0s``, ``5s``, ``100ms``)."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{sign}{_trim(ns / size)}{unit}"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1e9)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_list(text: str) -> list[str]:
    """Comma list: split on ``,``, trim whitespace, drop empties."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_queues(text: str) -> list[str]:
    return parse_list(text) or ["default"]


QUEUE_NAME_RULE = "it is blank, or holds a comma or a control character"


def is_queue_name(name: str) -> bool:
    """A name a worker can be given in --queues: not blank, no comma, one printable line."""
    return bool(name.strip()) and "," not in name and name.isprintable()


def is_truthy(value: str | None) -> bool:
    """``1``, ``true``, ``yes``, ``on`` (any case, trimmed) are true; anything else false."""
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def parse_bool(text: str) -> bool:
    """A bool setting's text: the truthy words, or ``0``, ``false``, ``no``, ``off``.

    Stricter than ``is_truthy`` (which the Go worker's own switches use): a typo in a setting
    reproq added is reported instead of silently meaning false.
    """
    word = text.strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{text!r} is not a boolean")


# --- masking -----------------------------------------------------------------------------------

MASK = "****"
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``****`` (URL and key=value forms)."""
    if not dsn:
        return dsn
    if "://" in dsn:
        scheme, _, rest = dsn.partition("://")
        password = _url_password(rest)
        if password is not None:
            user = rest.partition(":")[0]
            rest = f"{user}:{MASK}@{rest[len(user) + len(password) + 2 :]}"
        base, question, query = rest.partition("?")
        query = _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", query)
        return f"{scheme}://{base}{question}{query}"
    return _KV_PASSWORD.sub(rf"\g<1>{MASK}", dsn)


def _url_password(rest: str) -> str | None:
    """The password of a URL DSN (``rest`` is what follows ``://``) where libpq finds it:
    the user info runs to the first ``@`` that comes before any ``/``, so it may hold ``?``
    or ``#``, which a URL parser would take for the query or the fragment."""
    userinfo = re.match(r"[^@/]*@", rest)
    if userinfo is not None:
        _user, colon, password = userinfo.group(0)[:-1].partition(":")
        return password if colon and password else None
    # No user info for libpq, but it looks like a password (one with a "/"): an error about
    # the DSN would quote it, so mask it too.
    intended = re.match(r"[^:/@]*:(.+)@", rest)
    return intended.group(1) if intended else None


_QUERY_PASSWORD_VALUE = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)


def mask_secrets(text: str, dsn: str) -> str:
    """``text`` (a driver's message about ``dsn``) with the DSN's password masked wherever
    it appears: libpq quotes the raw DSN, or the token it could not parse, in its errors."""
    if not dsn:
        return text
    text = text.replace(dsn, mask_dsn(dsn))
    url_password = _url_password(dsn.partition("://")[2]) if "://" in dsn else None
    secrets = [url_password] if url_password else []
    secrets += [m.group(1) for m in _QUERY_PASSWORD_VALUE.finditer(dsn)]
    secrets += [m.group(2).strip("'") for m in _KV_PASSWORD.finditer(dsn)]
    # Longest first, so a password that contains another is masked whole.
    ordered = sorted({s for s in secrets if s and s != MASK}, key=len, reverse=True)

    def mask_quoted(match: re.Match[str]) -> str:
        quoted = match.group(0)
        for secret in ordered:
            quoted = quoted.replace(secret, MASK)
        return quoted

    # Only inside what libpq quotes (the DSN or the token it could not parse): replaced
    # everywhere, a short password garbled the message and its gaps spelled the password
    # out ("on" made "connection" into "c****necti****").
    return _QUOTED.sub(mask_quoted, text)


_QUOTED = re.compile(r'"[^"]*"')


# --- resolved configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """One resolved setting: its value and where it came from."""

    value: Any
    source: Source
    origin: str  # "built-in", "reproq.yaml: worker.dsn", "env DATABASE_URL", "flag --dsn"


@dataclass
class Config:
    mode: Mode
    path: Path | None
    values: dict[str, Resolved]
    warnings: list[str] = field(default_factory=list)

    def get(self, key: str) -> Any:
        return self.values[key].value

    def section(self, name: str) -> dict[str, Any]:
        prefix = name + "."
        return {k[len(prefix) :]: r.value for k, r in self.values.items() if k.startswith(prefix)}

    def display(self, *, mask: bool = True) -> dict[str, Any]:
        """Nested dict for printing; durations in Go syntax, secrets masked."""
        settings = {s.key: s for s in SETTINGS_BY_MODE[self.mode]}
        out: dict[str, Any] = {}
        for key, resolved in self.values.items():
            out_section = out
            parts = key.split(".")
            for part in parts[:-1]:
                out_section = out_section.setdefault(part, {})
            out_section[parts[-1]] = display_value(settings[key], resolved.value, mask=mask)
        return out


def display_value(setting: Setting, value: Any, *, mask: bool = True) -> Any:
    if setting.kind == "duration":
        return format_duration(value)
    if mask and setting.key == "dsn":
        return mask_dsn(value)
    if mask and setting.secret and value:
        return MASK
    return value


# --- file loading --------------------------------------------------------------------------------


def resolve_config_path(
    explicit: str | None, env: Mapping[str, str], cwd: Path
) -> tuple[Path | None, str]:
    """Which config file to read, and why: ``--config``, then REPROQ_CONFIG, then the cwd."""
    if explicit is not None:
        if explicit.strip() == "":
            raise ConfigError(
                "missing value for --config", hint="pass a path: --config reproq.yaml"
            )
        return Path(explicit), "flag --config"
    from_env = env.get(CONFIG_ENV, "")
    if from_env:
        return Path(from_env), f"env {CONFIG_ENV}"
    for name in CONFIG_FILENAMES:
        if (cwd / name).is_file():
            return Path(name), "working directory"  # shown relative, as the Go worker does
    return None, "none found"


class _UniqueKeyLoader(yaml.SafeLoader):
    """Config files as Go's yaml.v3 reads them where PyYAML differs. PyYAML keeps the last of
    two equal keys; yaml.v3 (and TOML) refuse them: a second ``worker:`` would otherwise drop
    every setting of the first without a word. Booleans: below."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's booleans, which Go's yaml.v3 reads: only true and false. PyYAML follows YAML
# 1.1, where yes/no/on/off/y/n are booleans too, so `worker_id: on` was refused and
# `queues: [yes]` a boolean; as plain words they are strings here, as in Go (a bool setting
# still takes yes, no, on and off, as yaml.v3 does for a typed bool).
_BOOL_TAG = "tag:yaml.org,2002:bool"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# The YAML 1.1 words yaml.v3 still takes for a bool field.
_YAML11_BOOLS = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "off", "Off", "OFF"), False),
}


def load_file(path: Path, *, cwd: Path | None = None) -> dict[str, Any]:
    """Read a YAML or TOML config file into a dict; every failure names the file.

    A relative ``path`` is read from ``cwd`` (default: the process's working directory) but
    keeps its relative form in messages.
    """
    suffix = path.suffix.lower()
    if suffix not in {".yaml", ".yml", ".toml"}:
        raise ConfigError(
            f"unsupported config extension: {suffix or '(none)'} ({path})",
            hint="name the file .yaml, .yml or .toml",
        )
    try:
        raw = (path if cwd is None or path.is_absolute() else cwd / path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror or exc}",
            hint="check the path given by --config or REPROQ_CONFIG",
        ) from exc
    try:
        if suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = yaml.load(raw, Loader=_UniqueKeyLoader)  # a SafeLoader
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        kind = "TOML" if suffix == ".toml" else "YAML"
        raise ConfigError(
            f"cannot parse {kind} config file {path}: {reason}",
            hint=f"fix the {kind} syntax in {path}",
        ) from exc
    if data is None:
        return {}
    if suffix == ".toml":
        data = _toml_key_case(data)
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of settings, not a {type(data).__name__}",
            hint="start the file with keys such as `dsn:` and `worker:`",
        )
    for section in ("worker", "beat", "metrics"):
        if section in data and data[section] is not None and not isinstance(data[section], dict):
            raise ConfigError(
                f"invalid {section} in {path}: expected a mapping of settings, "
                f"got {json.dumps(data[section], default=str)}",
                hint=f"write `{section}:` followed by indented keys",
            )
    return data


def _toml_key_case(data: dict[str, Any]) -> dict[str, Any]:
    """Known keys in any case, as go-toml v2 matches them (``DSN``, ``[Worker]``,
    ``Concurrency``); yaml.v3 does not, so YAML keys stay case-sensitive."""

    def fold(table: dict[str, Any], known: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            name = key if key in known or key.lower() not in known else key.lower()
            if isinstance(out.get(name), dict) and isinstance(value, dict):
                value = {**out[name], **value}  # [worker] and [Worker] fill one section
            out[name] = value
        return out

    sections = {"worker", "beat", "metrics"}
    folded = fold(data, {k for k in KNOWN_FILE_KEYS if "." not in k} | sections)
    for section in sections:
        if isinstance(folded.get(section), dict):
            known = {k.partition(".")[2] for k in KNOWN_FILE_KEYS if k.startswith(section + ".")}
            folded[section] = fold(folded[section], known)
    return folded


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in {"worker", "beat", "metrics"} and isinstance(value, dict):
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[str(key)] = value
    return flat


# --- coercion ------------------------------------------------------------------------------------


_INTEGER = re.compile(r"[+-]?[0-9]+")


def fits_int64(number: int) -> bool:
    """Whether Go's int (64 bits) holds ``number``: its flag and file parsers refuse the rest."""
    return -(2**63) <= number < 2**63


def parse_int64(text: str) -> int:
    """An int64 as Go's strconv.ParseInt reads it: ASCII digits, an optional sign, no
    spaces (int() also took "5_0" and other scripts' digits). ValueError says why not."""
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid integer")
    number = int(text)
    if not fits_int64(number):
        raise ValueError(f"{text} is out of range (a 64-bit integer)")
    return number


# Go's integer literals, as its flag package reads them (strconv.ParseInt with base 0): hex,
# binary, octal with 0o or a bare leading 0, decimal; one underscore between digits or after
# the base prefix.
_GO_INT_LITERAL = re.compile(
    r"[+-]?(0[xX](_?[0-9a-fA-F])+|0[bB](_?[01])+|0[oO](_?[0-7])+|0(_?[0-7])*|[1-9](_?[0-9])*)"
)


def parse_go_int(text: str) -> int:
    """An integer flag's value as Go's flag package reads it: an optional sign and a Go
    integer literal (``0x10`` is 16, ``010`` is 8, ``1_000`` is 1000), no spaces, within 64
    bits. ValueError says why not."""
    if not _GO_INT_LITERAL.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid integer")
    digits = text.lstrip("+-").replace("_", "")
    if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXbBoO":
        number = int(digits, 8)  # Go's legacy octal, which Python's int(…, 0) refuses
    else:
        number = int(digits, 0)
    if text.startswith("-"):
        number = -number
    if not fits_int64(number):
        raise ValueError(f"{text} is out of range (a 64-bit integer)")
    return number


# What Go's strconv.ParseFloat takes in decimal (plus inf/nan, refused just after).
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(?i:inf(inity)?|nan)")


def _coerce_text(setting: Setting, text: str) -> Any:
    """Parse a string value (env var, flag, or a file string) into the setting's type."""
    if setting.kind == "str":
        return text
    if setting.kind == "int":
        # As Go's strconv.Atoi: ASCII digits (int() also took "5_0" and other scripts' digits).
        if not _INTEGER.fullmatch(text.strip()):
            raise ValueError(f"{text!r} is not an integer")
        return int(text.strip())
    if setting.kind == "float":
        if not _FLOAT.fullmatch(text.strip()):
            raise ValueError(f"{text!r} is not a number")
        value = float(text.strip())
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
        return value
    if setting.kind == "duration":
        return parse_duration(text.strip())
    if setting.kind == "bool":
        return parse_bool(text)
    if setting.kind == "list":
        return parse_list(text)
    return parse_queues(text)


# A float with an exponent that YAML 1.2 (yaml.v3) reads as a number and YAML 1.1 (PyYAML)
# as a string: no dot (1e3) or an unsigned exponent (1.5e3).
_YAML12_EXPONENT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


def _coerce_file(setting: Setting, value: Any) -> Any:
    """Type-check a value read from YAML/TOML."""
    kind = setting.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in _YAML11_BOOLS:
            return _YAML11_BOOLS[value]
        if isinstance(value, str):
            return parse_bool(value)
        raise ValueError(f"{json.dumps(value, default=str)} is not a boolean")
    if isinstance(value, bool):
        raise ValueError(f"{json.dumps(value)} is a boolean, expected {_expected(kind)}")
    # Go's yaml.v3 reads a number into a string field as its text (worker_id: 12345), an
    # integral float into an int (30.0), and 1e3 as a float (PyYAML's YAML 1.1 leaves it a
    # string); these are taken the same way.
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, int | float):
            return str(value)
        raise ValueError(f"{json.dumps(value, default=str)} is not a string")
    if kind == "int":
        number = value
        if isinstance(value, str) and _YAML12_EXPONENT.fullmatch(value.strip()):
            number = float(value)  # yaml.v3 reads a plain 1e3 as a float, PyYAML as a string
        if isinstance(number, int):
            return number
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ValueError(f"{json.dumps(value, default=str)} is not an integer")
    if kind == "float":
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
        raise ValueError(f"{json.dumps(value, default=str)} is not a number")
    if kind == "duration":
        if isinstance(value, str):
            return parse_duration(value.strip())
        if value == 0:
            return 0.0  # "0" is a duration with no unit, in Go too
        if isinstance(value, int | float):
            raise ValueError(
                f'missing unit in duration {value!r} (write it as a string, e.g. "{value}s")'
            )
        raise ValueError(f"{json.dumps(value, default=str)} is not a duration")
    # lists: a real list, or a comma string as a convenience
    if isinstance(value, str):
        return _coerce_text(setting, value)
    if isinstance(value, list) and all(
        isinstance(item, str | int | float) and not isinstance(item, bool) for item in value
    ):
        items = [str(item).strip() for item in value if str(item).strip()]
        return items
    raise ValueError(f"{json.dumps(value, default=str)} is not a list of strings")


def _expected(kind: str) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "duration": "a duration such as 5s",
        "bool": "true or false",
    }.get(kind, "a list of strings")


def _is_unset(value: Any) -> bool:
    # go-worker.md §2.1: empty strings and empty lists never override.
    return value is None or value == "" or value == []


def _check_range(setting: Setting, value: Any) -> str | None:
    if setting.kind in {"int", "float", "duration"}:
        if not math.isfinite(value):
            return "must be a finite number"
        if setting.maximum is not None and value > setting.maximum:
            return f"must be <= {_number(setting.maximum)}"
        if setting.strictly_positive and value <= 0:
            return "must be a positive duration" if setting.kind == "duration" else "must be > 0"
        if setting.minimum is not None and value < setting.minimum:
            if setting.kind == "duration":
                return "must not be negative"
            return f"must be >= {_number(setting.minimum)}"
        if setting.kind == "int" and not fits_int64(value):
            return "is out of range (a 64-bit integer)"
    if setting.choices is not None and value not in setting.choices:
        return f"must be one of {', '.join(setting.choices)}"
    return None


def _number(bound: float) -> str:
    # 9223372036, not 9.22337e+09: the hint must give a value the user can type.
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _describe(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def resolve(
    mode: Mode,
    *,
    flags: Mapping[str, Any] | None = None,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    only: frozenset[str] | None = None,
) -> Config:
    """Resolve every setting of ``mode``: defaults < file < env < flags.

    ``flags`` maps setting keys to the values given on the command line (only the ones the
    user actually passed); strings are parsed like env values, typed values are kept.
    ``only``: resolve (and check) just these keys, e.g. the DSN for an operator command,
    which a mistake in a worker setting of the same file must not stop.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    flags = flags or {}
    settings = [s for s in SETTINGS_BY_MODE[mode] if only is None or s.key in only]

    path, _why = resolve_config_path(config_path, env, cwd)
    file_data: dict[str, Any] = {}
    warnings: list[str] = []
    if path is not None:
        file_data = _flatten(load_file(path, cwd=cwd))
        for key in sorted(file_data):
            if key not in KNOWN_FILE_KEYS:
                warnings.append(f"{path}: unknown key {key!r} ignored")

    values: dict[str, Resolved] = {}
    for setting in settings:
        resolved = Resolved(setting.default_value(), "default", "built-in")
        for file_key in setting.file_keys:
            if file_key not in file_data or _is_unset(file_data[file_key]):
                continue
            raw = file_data[file_key]
            try:
                value = _coerce_file(setting, raw)
            except ValueError as exc:
                raise ConfigError(
                    f"invalid {file_key} in {path}: {exc}",
                    hint=_fix_hint(setting, f"in {path}"),
                ) from None
            if _is_unset(value):
                continue
            problem = _check_range(setting, value)
            if problem:
                raise ConfigError(
                    f"invalid {file_key} in {path}: {_describe(raw)} {problem}",
                    hint=_range_hint(setting, f"in {path}"),
                )
            resolved = Resolved(value, "file", f"{path}: {file_key}")
        if setting.env and env.get(setting.env, "") != "":
            raw_env = env[setting.env]
            try:
                value = _coerce_text(setting, raw_env)
            except ValueError as exc:
                raise ConfigError(
                    f"invalid {setting.env}: {exc}",
                    hint=_fix_hint(setting, f"in the environment variable {setting.env}"),
                ) from None
            problem = _check_range(setting, value)
            if not problem and setting.key in _LIMITER_SIZES and value < 1:
                # Checked when read, as Go does: a flag that overrides it does not excuse it.
                problem = "must be a positive integer"
            if problem:
                raise ConfigError(
                    f"invalid {setting.env} {_describe(raw_env)} ({problem})",
                    hint=_range_hint(setting, f"in the environment variable {setting.env}"),
                )
            # Any non-empty env value applies, as in Go: ALLOWED_TASK_MODULES="," is an empty
            # list that replaces the file's (the validator's default prefixes then apply).
            resolved = Resolved(value, "env", f"env {setting.env}")
        if setting.key in flags and flags[setting.key] is not None:
            value = _flag_value(setting, flags[setting.key])
            # An explicit empty flag (--dsn "") still counts: the user asked for it.
            resolved = Resolved(value, "flag", f"flag {setting.flag or setting.key}")
        values[setting.key] = resolved

    config = Config(mode=mode, path=path, values=values, warnings=warnings)
    _check_cross_field(config)
    return config


def _flag_value(setting: Setting, raw_flag: Any) -> Any:
    """A flag's value, typed and checked; ``ConfigError`` (a usage error) otherwise."""
    flag_name = setting.flag or setting.key
    try:
        value = _coerce_text(setting, raw_flag) if isinstance(raw_flag, str) else raw_flag
    except ValueError as exc:
        raise ConfigError(
            f"invalid value for {flag_name}: {exc}",
            hint=_fix_hint(setting, f"after {flag_name}"),
            exit_code=2,
        ) from None
    problem = _check_range(setting, value)
    if setting.key == "metrics.auth_window" and value <= 0:
        problem = None  # as Go: refused only when there is a server (_check_limiter)
    if problem:
        raise ConfigError(
            f"invalid value for {flag_name}: {_describe(raw_flag)} {problem}",
            hint=_range_hint(setting, f"after {flag_name}"),
            exit_code=2,
        )
    return value


def check_flag(mode: Mode, key: str, raw: Any) -> Any:
    """The value of one setting's flag, checked as ``resolve`` checks it: for a command that
    writes the flag down to be read later (``manage.py reproq systemd``), where a value the
    worker refuses would only surface when the unit starts."""
    setting = next(s for s in SETTINGS_BY_MODE[mode] if s.key == key)
    return _flag_value(setting, raw)


def _range_hint(setting: Setting, where: str) -> str:
    low, high = setting.minimum, setting.maximum
    if setting.kind == "duration" or (low is None and high is None):
        return _fix_hint(setting, where)
    what = _expected(setting.kind)
    if low is not None and high is not None:
        return f"give {what} from {_number(low)} to {_number(high)} {where}"
    if low is not None:
        return f"give {what} of at least {_number(low)} {where}"
    return f"give {what} of at most {_number(high)} {where}"


def _fix_hint(setting: Setting, where: str) -> str:
    if setting.kind == "duration":
        return f"{DURATION_HINT} {where}"
    if setting.choices:
        return f"use one of {', '.join(setting.choices)} {where}"
    if setting.kind in {"list", "queues"}:
        return f"give a comma-separated list {where}"
    return f"give {_expected(setting.kind)} {where}"


_LIMITER_SIZES = {
    "metrics.auth_limit": "--metrics-auth-limit",
    "metrics.auth_max_entries": "--metrics-auth-max-entries",
}


def _check_limiter(config: Config) -> None:
    """The auth limiter's settings, as the Go worker checks them (go-worker.md §1.1 steps 4
    and 12): the environment's and the file's window when read (in resolve), the rest only
    when there is an HTTP server to limit; a fatal error (exit 1), not a flag error."""
    serving = bool(config.values["metrics.addr"].value) or config.values["metrics.port"].value > 0
    if not serving:
        return
    for key, flag in _LIMITER_SIZES.items():
        resolved = config.values[key]
        if resolved.value < 1:
            raise ConfigError(
                f"{flag} must be a positive integer (from {resolved.origin})",
                hint=f"give {flag} a value of at least 1",
            )
    window = config.values["metrics.auth_window"]
    if window.value <= 0:
        raise ConfigError(
            f"--metrics-auth-window must be a positive duration (from {window.origin})",
            hint="give --metrics-auth-window a duration such as 1m",
        )


def _check_cross_field(config: Config) -> None:
    if config.mode != "worker" or "worker.poll_min_backoff" not in config.values:
        return
    _check_limiter(config)
    worker_id = config.values["worker.worker_id"]
    if not str(worker_id.value).strip():
        # The lease owner and the registry key: a blank one cannot tell workers apart.
        raise ConfigError(
            f"worker.worker_id is blank (from {worker_id.origin})",
            hint="leave it unset for <host>-<pid>, or give each worker a name",
            exit_code=2 if worker_id.source == "flag" else 1,
        )
    low = config.values["worker.poll_min_backoff"]
    high = config.values["worker.poll_max_backoff"]
    if high.value < low.value:
        raise ConfigError(
            "worker.poll_max_backoff must be >= worker.poll_min_backoff "
            f"(poll_min_backoff {format_duration(low.value)} from {low.origin}, "
            f"poll_max_backoff {format_duration(high.value)} from {high.origin})",
            hint="raise poll_max_backoff or lower poll_min_backoff in the config file",
        )
