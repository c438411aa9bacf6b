"""Beat rules of go-worker.md §7 that an audit found handled differently, checked with a real
`reproq beat` process against a real database."""

from __future__ import annotations

import datetime as dt

from tests.acceptance.test_beat import INSERT
from tests.support.harness import parse_logs


def test_cron_zone_prefixes_as_go_loads_them(run_cli, conn, db_dsn):
    # robfig/cron loads the zone with Go's time.LoadLocation: "" is UTC and "Local" the
    # process's zone ($TZ). Both rows failed every pass with "provided bad location".
    for name, cron in (("empty", "TZ= 0 9 * * *"), ("local", "CRON_TZ=Local 0 9 * * *")):
        conn.execute(INSERT, (name, cron, "myapp.tasks.t", "{}", "2025-01-01T00:00:00Z"))
    result = run_cli("beat", "--once", "--dsn", db_dsn, env={"TZ": "Asia/Tokyo"})
    assert result.returncode == 0
    logs = parse_logs(result.stdout)
    assert [e["msg"] for e in logs if e["level"] != "INFO"] == [], logs
    rows = dict(conn.execute("SELECT name, next_run_at FROM periodic_tasks").fetchall())
    assert rows["empty"].astimezone(dt.UTC).time() == dt.time(9, 0)
    assert rows["local"].astimezone(dt.UTC).time() == dt.time(0, 0)  # 09:00 in Tokyo
    (enqueued,) = conn.execute("SELECT count(*) FROM task_runs").fetchone()
    assert enqueued == 2
