"""The HTTP side checked byte for byte against the Go worker (go-worker.md §8.3, §8.4)."""

from __future__ import annotations

import json
import signal
import socket

from tests.support.harness import enqueue, row, wait_for
from tests.support.http import EventStream, served_port

TOKEN = "audit-token"
LOCAL = ("--metrics-addr", "127.0.0.1:0")


def _raw_body(port: int, path: str, headers: bytes = b"") -> bytes:
    """The bytes after the header block, as the server sent them."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n" % (path.encode(), headers)
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.split(b"\r\n\r\n", 1)[1]


def test_denials_have_the_go_workers_bare_bodies(workers):
    """Go writes these bodies with w.Write: no trailing newline (only its 404 has one)."""
    guarded = workers.start(*LOCAL, "--metrics-auth-token", TOKEN, "--metrics-auth-limit", "1")
    port = served_port(workers, guarded)
    assert _raw_body(port, "/metrics") == b"unauthorized"
    assert _raw_body(port, "/metrics") == b"rate limited"
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    assert _raw_body(port, "/events?task_id=x", auth) == b"invalid task_id"
    assert _raw_body(port, "/nope", auth) == b"404 page not found\n"

    fenced = workers.start(*LOCAL, "--metrics-allow-cidrs", "10.0.0.0/8")
    assert _raw_body(served_port(workers, fenced), "/healthz") == b"forbidden"
    for proc in (guarded, fenced):
        proc.send_signal(signal.SIGTERM)
        assert workers.finish(proc, timeout=15).returncode == 0


def test_task_id_zero_is_a_filter_and_event_json_is_gos(conn, workers):
    proc = workers.start(*LOCAL, "--worker-id", "w-audit")
    port = served_port(workers, proc)
    failed = enqueue(conn, "fail", "a < b & c", columns={"max_attempts": 1})
    wait_for(lambda: row(conn, failed)["status"] == "FAILED", what="the task to fail")
    # Connected after the task ended: each stream gets the ring buffer's events, filtered,
    # written before anything else; the worker's shutdown then ends every stream, so what a
    # stream holds once closed is all it was ever sent.
    by_id = EventStream(port, f"/events?task_id={failed}").start()
    zero = EventStream(port, "/events?task_id=0").start()
    # Query().Get takes the first value even when it is empty: no filter at all.
    first_blank = EventStream(port, "/events?task_id=&task_id=999999").start()
    assert (by_id.status, zero.status, first_blank.status) == (200, 200, 200)
    wait_for(lambda: by_id.has("task_failed", failed), what="the replayed task_failed")
    wait_for(lambda: first_blank.has("task_failed", failed), what="the unfiltered replay")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    for stream in (by_id, zero, first_blank):
        wait_for(lambda s=stream: s.closed, timeout=10, what="the stream to end")
        stream.close()

    # Go's filter compares a given task_id, 0 included: no task has id 0, so no events.
    assert zero.events() == []
    assert {e["type"] for e in by_id.events()} == {"task_started", "task_failed"}

    # json.Marshal of the event: map keys sorted, <, > and & escaped.
    lines = [text for _, text in by_id.lines if text.startswith("data: ")]
    failed_line = next(text for text in lines if '"type":"task_failed"' in text)
    assert '"error_message":"a \\u003c b \\u0026 c"' in failed_line, failed_line
    for text in lines:
        metadata = json.loads(text[6:])["metadata"]
        assert list(metadata) == sorted(metadata), text
    started = next(e for e in by_id.events() if e["type"] == "task_started")
    assert list(started["metadata"]) == ["attempt", "max_attempts", "role", "task_path"]
