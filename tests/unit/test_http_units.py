"""The HTTP side's rules without a server: allow-list, limiter, addresses, events, TLS."""

from __future__ import annotations

import io
import ipaddress
import json
import re
import ssl

import pytest

from reproq_cli.core.events import REPLAY_SIZE, SUBSCRIBER_CAPACITY, Event, EventBroker, EventFilter
from reproq_cli.core.httpserver import (
    Authorizer,
    DenyLimiter,
    HttpSettings,
    client_ip,
    is_loopback,
    parse_allowlist,
    split_address,
    tls_context,
)
from reproq_cli.core.logs import Logger
from reproq_cli.errors import ConfigError
from tests.support.http import make_pki


def settings(**overrides) -> HttpSettings:
    base = {
        "addr": "127.0.0.1:0",
        "auth_token": "",
        "allow": (),
        "auth_limit": 30,
        "auth_window": 60.0,
        "auth_max_entries": 1000,
        "tls_cert": "",
        "tls_key": "",
        "tls_client_ca": "",
    }
    return HttpSettings(**{**base, **overrides})


def test_allowlist_parsing_matches_go_vectors():
    networks = parse_allowlist(["192.0.2.0/24, 2001:db8::/32, 127.0.0.1, localhost"])

    def allowed(text: str) -> bool:
        ip = client_ip(text)
        return ip is not None and any(ip in n for n in networks)

    for ok in ("192.0.2.10", "2001:db8::1", "127.0.0.1", "::1", "::ffff:192.0.2.7"):
        assert allowed(ok), ok
    assert not allowed("198.51.100.1")
    assert not allowed("not-an-ip")
    assert parse_allowlist(["", " , "]) == ()
    assert parse_allowlist(["10.1.2.3/8"]) == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(
        ConfigError, match=re.escape('invalid metrics allowlist prefix "10.0.0.0/40"')
    ):
        parse_allowlist(["10.0.0.0/40"])
    with pytest.raises(
        ConfigError, match=re.escape('invalid metrics allowlist address "example.com"')
    ):
        parse_allowlist(["example.com"])


def test_zone_suffix_is_stripped():
    assert client_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


def test_addresses():
    assert split_address(":9090") == ("", 9090)
    assert split_address("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert split_address("[::1]:9090") == ("::1", 9090)
    for bad in ("9090", "host:", "host:port", "h:70000"):
        with pytest.raises(ConfigError, match="invalid metrics address"):
            split_address(bad)
    assert is_loopback("127.0.0.1:9090")
    assert is_loopback("LocalHost:1")
    assert is_loopback("[::1]:9090")
    assert not is_loopback(":9090")  # every interface, as Go counts it
    assert not is_loopback("0.0.0.0:9090")
    assert not is_loopback("10.0.0.1:9090")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_fixed_window_per_host():
    clock = Clock()
    limiter = DenyLimiter(limit=2, window=60, max_entries=100, clock=clock)
    assert [limiter.over_limit("a") for _ in range(4)] == [False, False, True, True]
    assert limiter.over_limit("b") is False  # hosts are counted apart
    clock.now += 59
    assert limiter.over_limit("a") is True
    clock.now += 1  # the window began at a's first denial
    assert limiter.over_limit("a") is False
    assert limiter.over_limit("") is False  # an unknown host gets its own key
    assert limiter.over_limit("") is False
    assert limiter.over_limit("") is True


def test_limiter_forgets_hosts():
    clock = Clock()
    limiter = DenyLimiter(limit=1, window=10, max_entries=3, clock=clock)
    for host in ("a", "b", "c"):
        limiter.over_limit(host)
    clock.now += 25  # two windows without a denial
    limiter.over_limit("d")
    assert limiter.tracked() == 1
    for n in range(10):
        limiter.over_limit(f"h{n}")
    assert limiter.tracked() <= 3


def test_authorizer_order_and_tokens():
    stream = io.StringIO()
    log = Logger(stream)
    auth = Authorizer(settings(auth_token="tok", auth_limit=1), log)
    assert auth.check("127.0.0.1", "Bearer tok", "/metrics", "GET") is None
    assert auth.check("127.0.0.1", "bearer tok ", "/metrics", "GET") is None
    first = auth.check("127.0.0.1", None, "/metrics", "GET", 51234)
    assert first is not None and first.status == 401
    logged = json.loads(stream.getvalue().splitlines()[-1])
    assert (logged["msg"], logged["remote_addr"], logged["remote_host"]) == (
        "Unauthorized request", "127.0.0.1:51234", "127.0.0.1"
    )  # fmt: skip
    auth.check("::1", None, "/metrics", "GET", 7)
    assert json.loads(stream.getvalue().splitlines()[-1])["remote_addr"] == "[::1]:7"
    second = auth.check("127.0.0.1", "Basic dG9r", "/metrics", "GET")
    assert second is not None and second.status == 429
    # open server: everyone in
    assert Authorizer(settings(), log).check("203.0.113.9", None, "/", "GET") is None
    # the allow-list is checked before the token
    listed = Authorizer(settings(auth_token="tok", allow=parse_allowlist(["10.0.0.0/8"])), log)
    denial = listed.check("127.0.0.1", "Bearer tok", "/metrics", "GET")
    assert denial is not None and denial.status == 403
    assert listed.check("10.2.3.4", "Bearer tok", "/metrics", "GET") is None


def test_event_json_field_order_and_omissions():
    event = Event(level="info", type="task_started", msg="task started", ts="T")
    assert event.to_json() == '{"ts":"T","level":"info","type":"task_started","msg":"task started"}'
    full = Event(
        level="warn",
        type="task_retry",
        msg="m",
        queue="q",
        task_id=7,
        worker_id="w",
        metadata={"attempt": "1"},
        ts="T",
    )
    assert list(json.loads(full.to_json())) == [
        "ts",
        "level",
        "type",
        "msg",
        "queue",
        "task_id",
        "worker_id",
        "metadata",
    ]


def _event(n: int, queue: str = "q") -> Event:
    return Event(level="info", type="task_started", msg="m", queue=queue, task_id=n)


def test_broker_replays_the_last_events_filtered():
    broker = EventBroker()
    for n in range(1, REPLAY_SIZE + 51):
        broker.publish(_event(n, queue="even" if n % 2 == 0 else "odd"))
    _, replay = broker.subscribe(EventFilter())
    assert len(replay) == REPLAY_SIZE
    assert replay[0].task_id == 51 and replay[-1].task_id == REPLAY_SIZE + 50
    _, odd = broker.subscribe(EventFilter(queue="odd"))
    assert {e.queue for e in odd} == {"odd"} and len(odd) == REPLAY_SIZE // 2
    _, one = broker.subscribe(EventFilter(task_id=100))
    assert [e.task_id for e in one] == [100]


def test_slow_subscriber_loses_events_not_the_publisher():
    broker = EventBroker()
    slow, _ = broker.subscribe(EventFilter())
    fast, _ = broker.subscribe(EventFilter(queue="other"))
    for n in range(SUBSCRIBER_CAPACITY + 20):
        broker.publish(_event(n))
    assert slow.queue.qsize() == SUBSCRIBER_CAPACITY
    assert slow.dropped == 20
    assert fast.queue.qsize() == 0
    slow.close()
    assert broker.subscriber_count() == 1


def test_tls_requires_a_pair_and_sets_tls12_minimum(tmp_path):
    assert tls_context(settings()) is None
    with pytest.raises(ConfigError, match="requires both cert and key"):
        tls_context(settings(tls_key="k.pem"))
    with pytest.raises(ConfigError, match="load metrics TLS cert/key"):
        tls_context(settings(tls_cert=str(tmp_path / "c"), tls_key=str(tmp_path / "k")))
    pki = make_pki(tmp_path)
    plain = tls_context(settings(tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key")))
    assert plain is not None
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    mutual = tls_context(
        settings(
            tls_cert=str(pki / "server.pem"),
            tls_key=str(pki / "server.key"),
            tls_client_ca=str(pki / "ca.pem"),
        )
    )
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED


def test_tui_tokens_that_would_crash_the_parser_are_refused():
    import base64

    from reproq_cli import tuitoken
    from tests.support.http import make_jwt

    nested = base64.urlsafe_b64encode(b"[" * 20000).decode().rstrip("=")
    # Unsigned: refused before any JSON is parsed (this raised RecursionError).
    assert tuitoken.verify(f"{nested}.e30.AAAA", "s3cret") is False
    assert tuitoken.verify("é.e30.AAAA", "s3cret") is False
    claims = {"aud": "reproq-tui", "superuser": True}
    for exp in (float("nan"), float("inf"), float("-inf")):  # json writes NaN, Infinity
        assert tuitoken.verify(make_jwt("s3cret", {**claims, "exp": exp}), "s3cret") is False
    assert tuitoken.verify(make_jwt("s3cret", claims), "s3cret") is True


def test_tui_token_segments_are_strict_raw_base64url():
    from reproq_cli import tuitoken
    from tests.support.http import make_jwt

    good = make_jwt("s3cret", {"aud": "reproq-tui", "superuser": True})
    assert tuitoken.verify(good, "s3cret") is True
    head, body, signature = good.split(".")
    # Go's RawURLEncoding refuses padding and characters outside the alphabet; Python's
    # decoder skipped them, so these variants of a valid token were accepted.
    for variant in (
        f"{head}.{body}.{signature}==",
        f"{head}.{body}.{signature[:5]}!!$${signature[5:]}",
        f"{head}=.{body}.{signature}",
    ):
        assert tuitoken.verify(variant, "s3cret") is False, variant
