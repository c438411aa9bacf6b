"""The beat's session: what a stop does to passes (the acceptance tests run a real beat)."""

from __future__ import annotations

import pytest

from reproq_cli.db.beat import BeatSession
from reproq_cli.errors import DatabaseError


def test_no_pass_starts_once_the_beat_is_interrupted(db_dsn):
    # A pass starting just after the stop's interrupt would not be cancelled by it, and could
    # wait on a lock for as long as the lock is held.
    session = BeatSession(db_dsn)
    try:
        with session.pass_transaction() as tx:
            assert tx.due() == []
        session.interrupt()
        stopped = pytest.raises(DatabaseError, match="the beat is stopping")
        with stopped, session.pass_transaction():
            pytest.fail("a pass started after the interrupt")
    finally:
        session.close()
