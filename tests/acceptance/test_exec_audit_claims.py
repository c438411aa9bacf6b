"""Audit of the claim loop against go-worker.md §4.1: queues take turns task by task."""

from __future__ import annotations

import psycopg

from tests.support.harness import enqueue


def _claimed_per_queue(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute(
        "SELECT queue_name, count(*) FROM task_runs WHERE attempts > 0 GROUP BY queue_name"
    ).fetchall()
    return {str(queue): int(count) for queue, count in rows}


def test_free_slots_are_dealt_to_the_queues_in_turn(conn, workers):
    # The Go worker claims one task per poll and starts the next poll at the queue after the
    # one that gave the last task: four free slots over two busy queues take q1, q2, q1, q2.
    for n in range(4):
        enqueue(conn, "add", n, 1, columns={"queue_name": "q1"})
        enqueue(conn, "add", n, 2, columns={"queue_name": "q2"})
    run = workers.run("--max-tasks", "4", concurrency=4, queues=["q1", "q2"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert _claimed_per_queue(conn) == {"q1": 2, "q2": 2}


def test_an_empty_queue_gives_its_turns_to_the_others(conn, workers):
    # q1 first in turn but empty, q3 empty: every slot goes to q2, in one claim loop pass.
    for n in range(3):
        enqueue(conn, "add", n, 2, columns={"queue_name": "q2"})
    run = workers.run("--max-tasks", "3", concurrency=3, queues=["q1", "q2", "q3"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert _claimed_per_queue(conn) == {"q2": 3}
