"""Bad input, generated (hypothesis): every parser answers with a value or its own clear
error, never anything else. Example counts stay modest for CI time."""

# The exception is one allowed outcome of each property, checked where it happens.
# ruff: noqa: PT017

from __future__ import annotations

import datetime as dt
import io
import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reproq_cli import tuitoken
from reproq_cli.config import format_duration, mask_dsn, parse_duration, resolve
from reproq_cli.core import cron
from reproq_cli.core.executor import BoundedBuffer, parse_envelope
from reproq_cli.core.httpserver import Authorizer, HttpSettings
from reproq_cli.core.logs import Logger
from reproq_cli.db.connect import connection_kwargs
from reproq_cli.errors import ConfigError

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
WORKER_KEYS = st.sampled_from(
    ["concurrency", "lease_seconds", "queues", "poll_max_backoff", "exec_timeout",
     "payload_mode", "executor", "allowed_task_modules", "task_cpu_limit", "logs_dir",
     "no_listen", "priority_aging_factor", "unknown_key"]
)  # fmt: skip


# --- config files -----------------------------------------------------------------------------


def _resolve_file(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    try:
        resolve("worker", config_path=str(path), env={}, cwd=tmp_path)
    except ConfigError as exc:
        assert exc.message and "\n" not in exc.message, exc.message
        assert exc.hint


@SETTINGS
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_garbage_config_files(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("cfg")
    _resolve_file(tmp_path, "reproq.yaml", data)
    _resolve_file(tmp_path, "reproq.toml", data)


@SETTINGS
@given(worker=st.dictionaries(WORKER_KEYS, JSON, max_size=5), root=JSON)
def test_wrongly_typed_config_values(tmp_path_factory, worker, root):
    tmp_path = tmp_path_factory.mktemp("cfg")
    # JSON is YAML: any structure the generator makes is a syntactically valid file.
    _resolve_file(tmp_path, "reproq.yaml", json.dumps({"worker": worker, "dsn": root}).encode())
    _resolve_file(tmp_path, "r2.yaml", json.dumps(root).encode())


# --- durations --------------------------------------------------------------------------------

DURATION_TEXT = st.text(alphabet="0123456789.-+hmsuµn ", max_size=12) | st.text(max_size=12)


@SETTINGS
@given(text=DURATION_TEXT)
def test_durations_parse_or_say_why(text):
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert seconds == seconds  # not NaN
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-6, abs=1e-9)


@SETTINGS
@given(text=DURATION_TEXT)
def test_duration_settings_from_env_are_config_errors(text):
    try:
        config = resolve("worker", env={"METRICS_AUTH_WINDOW": text}, cwd=Path("/"))
    except ConfigError as exc:
        assert "METRICS_AUTH_WINDOW" in exc.message
    else:
        assert config.get("metrics.auth_window") > 0


# --- cron -------------------------------------------------------------------------------------

CRON_FIELD = st.text(alphabet="0123456789*/,-LW?#JANFEBMONSUNabc", min_size=1, max_size=6)


@SETTINGS
@given(expr=st.lists(CRON_FIELD, min_size=4, max_size=6).map(" ".join) | st.text(max_size=30))
def test_cron_expressions_parse_or_say_why(expr):
    try:
        schedule = cron.parse(expr)
    except cron.CronError as exc:
        assert str(exc)
        return
    now = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)
    following = schedule.next_after(now)
    assert following is None or following > now


# --- DSNs -------------------------------------------------------------------------------------

DSN_TEXT = (
    st.text(max_size=60)
    | st.builds(
        lambda user, pw, host, rest: f"postgresql://{user}:{pw}@{host}/{rest}",
        st.text(max_size=8), st.text(max_size=12), st.text(max_size=12), st.text(max_size=20),
    )
    | st.lists(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["host", "port", "dbname",
                  "password", "sslmode", "bogus", "connect_timeout"]), st.text(max_size=8)),
        max_size=4,
    ).map(" ".join)
)  # fmt: skip


@SETTINGS
@given(dsn=DSN_TEXT)
def test_dsns_are_accepted_or_rejected_in_one_line(dsn):
    masked = mask_dsn(dsn)  # never raises: it is used inside error messages
    assert isinstance(masked, str)
    try:
        kwargs = connection_kwargs(dsn)
    except ConfigError as exc:
        assert exc.message.startswith("invalid DSN")
        assert "\n" not in exc.message
    else:
        assert isinstance(kwargs, dict)


@SETTINGS
@given(
    password=st.text(alphabet=string.ascii_letters + string.digits + "%[]:/?&=", min_size=8),
    template=st.sampled_from(
        ["postgresql://app:{}@[::1", "postgresql://app:{}@db:5x/app", "host=db password={} x"]
    ),
)
def test_an_invalid_dsn_error_never_shows_the_password(password, template):
    dsn = template.format(password)
    try:
        connection_kwargs(dsn)
    except ConfigError as exc:
        if password not in template:
            assert password not in exc.message, exc.message


@SETTINGS
@given(password=st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=16))
def test_passwords_never_shown(password):
    for template in ("postgresql://app:{}@db/app", "host=db password={} dbname=x"):
        masked = mask_dsn(template.format(password))
        assert masked == template.format("****")
        # Only a password that is not also a word of the rest ("password") can be looked for.
        if password not in template:
            assert password not in masked


@SETTINGS
@given(value=st.text(max_size=60), fmt=st.sampled_from(["json", "text"]))
def test_a_log_record_is_one_line_whatever_its_values(value, fmt):
    """Task paths, errors and stderr from garbage rows end up in log values: a record must stay
    one line for every reader (Python's splitlines also breaks at U+0085, U+2028, U+2029)."""
    stream = io.StringIO()
    Logger(stream, fmt).warn("Task rejected by validator", task_path=value)
    out = stream.getvalue()
    assert out.endswith("\n") and len(out.splitlines()) == 1, repr(out)
    if fmt == "json":
        assert json.loads(out)["task_path"] == value


# --- executor stdout --------------------------------------------------------------------------


@SETTINGS
@given(stdout=st.text(max_size=400) | JSON.map(json.dumps) | st.binary(max_size=200).map(
    lambda b: b.decode("utf-8", errors="replace")))  # fmt: skip
def test_executor_stdout_never_breaks_the_worker(stdout):
    envelope = parse_envelope(stdout)
    if envelope.ok:
        value = json.loads(stdout)
        assert isinstance(value, dict)
        assert any(k.lower() == "ok" and v is True for k, v in value.items())
    elif not envelope.message and not envelope.exception_class:
        pass  # a JSON object with ok false/absent and no message: the worker reports it
    else:
        assert isinstance(envelope.message, str)


@SETTINGS
@given(
    envelope=st.fixed_dictionaries({"ok": st.just(True), "return": JSON}).map(json.dumps),
    cut=st.integers(min_value=1),
)
def test_partial_envelopes_fail_cleanly(envelope, cut):
    partial = envelope[: cut % len(envelope)]
    result = parse_envelope(partial)
    assert not result.ok
    assert result.message.startswith("Invalid JSON on stdout")


@SETTINGS
@given(chunks=st.lists(st.binary(max_size=5000), max_size=20), limit=st.integers(1, 4096))
def test_huge_output_is_capped(chunks, limit):
    buffer = BoundedBuffer(limit)
    for chunk in chunks:
        buffer.write(chunk)
    assert len(buffer.data) <= limit
    assert buffer.truncated == (sum(map(len, chunks)) > limit)
    buffer.text()  # any bytes decode (replacement characters)


# --- HTTP auth headers and JWTs -----------------------------------------------------------------

SECRET = "s3cret-token-value"


def _authorizer() -> Authorizer:
    import io

    settings_ = HttpSettings(
        addr="127.0.0.1:0", auth_token=SECRET, allow=(), auth_limit=1000, auth_window=60.0,
        auth_max_entries=100, tls_cert="", tls_key="", tls_client_ca="",
    )  # fmt: skip
    return Authorizer(settings_, Logger(io.StringIO()))


@SETTINGS
@given(header=st.none() | st.text(max_size=200) | st.text(max_size=120).map("Bearer ".__add__),
       host=st.text(max_size=40))  # fmt: skip
def test_arbitrary_authorization_headers_are_refused(header, host):
    auth = _authorizer()
    accepted = auth.token_accepted(header)
    assert accepted == (header is not None and header[:7].lower() == "bearer "
                        and header[7:].strip() == SECRET)  # fmt: skip
    denial = auth.check(host, header, "/metrics", "GET")
    assert (denial is None) == accepted
    assert denial is None or denial.status in (401, 429)


def _same_bytes(token: str, other: str) -> bool:
    """base64url has slack bits in the last character of a part: a change there may decode
    to the same bytes, which is the same token, not a forgery."""
    parts, others = token.split("."), other.split(".")
    if len(others) != 3:
        return False
    try:
        return all(
            tuitoken._b64decode(a) == tuitoken._b64decode(b)
            for a, b in zip(parts, others, strict=True)
        )
    except ValueError:
        return False


def _token(**claims) -> str:
    return tuitoken.issue(SECRET, subject="1", username="ops", **claims)


@SETTINGS
@given(data=st.data())
def test_tampered_jwts_are_refused(data):
    token = _token()
    assert tuitoken.verify(token, SECRET)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_.="))
    tampered = token[:position] + replacement + token[position + 1 :]
    if tampered != token:
        assert tuitoken.verify(tampered, SECRET) == _same_bytes(token, tampered)
    assert not tuitoken.verify(token, SECRET + "x")


@SETTINGS
@given(header=JSON, payload=JSON, signature=st.binary(max_size=40))
def test_forged_jwt_parts_are_refused(header, payload, signature):
    import base64

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    token = ".".join(
        [part(json.dumps(header).encode()), part(json.dumps(payload).encode()), part(signature)]
    )
    assert tuitoken.verify(token, SECRET) is False
