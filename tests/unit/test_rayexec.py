"""The Ray executor's parts that need no Ray: task options from the spec, the resource check,
runtime_env, and the start-up handshake with a stand-in bridge process."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

from reproq_cli.core.executor import InfraError
from reproq_cli.core.logs import Logger
from reproq_cli.core.rayexec import (
    START_ATTEMPTS,
    RayRunner,
    RefusedByRay,
    parse_runtime_env,
    task_options,
    unschedulable,
)


def spec(**ray) -> str:
    return json.dumps({"task_path": "x.y", **({"ray": ray} if ray else {})})


def test_task_options_read_and_checked():
    assert task_options(spec()) == {}
    assert task_options("not json") == {}  # the entry point reports the payload itself
    assert task_options(spec(num_cpus=2, num_gpus=0.5, memory=1024.0)) == {
        "num_cpus": 2,
        "num_gpus": 0.5,
        "memory": 1024,
    }
    assert task_options(spec(resources={"ssd": 1})) == {"resources": {"ssd": 1.0}}
    for bad in ({"num_cpus": -1}, {"num_gpus": "1"}, {"gpus": 1}, {"resources": {"a": True}}):
        with pytest.raises(InfraError) as info:
            task_options(spec(**bad))
        assert info.value.retryable is False


def test_task_options_of_a_spec_nested_past_pythons_decoder():
    # Was RecursionError out of run_attempt: the row stayed RUNNING until its lease ran out,
    # then ran into it again.
    deep = "[" * 3000 + "]" * 3000
    assert task_options(f'{{"task_path": "x.y", "args": {deep}, "ray": {{"num_cpus": 2}}}}') == {
        "num_cpus": 2
    }
    assert task_options(f'{{"task_path": "x.y", "args": {deep}}}') == {}
    assert task_options(f'{{"args": {deep}') == {}  # not JSON: the entry point reports it
    with pytest.raises(InfraError, match=r"^spec field 'ray' is nested too deeply$") as info:
        task_options(f'{{"task_path": "x.y", "ray": {{"resources": {deep}}}}}')
    assert info.value.retryable is False


def test_unschedulable_names_what_is_missing():
    cluster = {"CPU": 2.0, "memory": 8e9, "ssd": 1.0}
    assert unschedulable({}, cluster) is None
    assert unschedulable({"num_cpus": 2, "resources": {"ssd": 1}}, cluster) is None
    assert unschedulable({}, {}) == (
        "task asks for more than the Ray cluster has: CPU=1 (cluster has 0)"
    )
    reason = unschedulable({"num_gpus": 1, "num_cpus": 4}, cluster)
    assert reason == (
        "task asks for more than the Ray cluster has: GPU=1 (cluster has 0), CPU=4 (cluster has 2)"
    )
    assert "ssd=2 (cluster has 1)" in unschedulable({"resources": {"ssd": 2}}, cluster)


def test_runtime_env_is_a_json_object():
    assert parse_runtime_env("") == {}
    assert parse_runtime_env('{"env_vars": {"A": "1"}}') == {"env_vars": {"A": "1"}}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_runtime_env("{")
    with pytest.raises(ValueError, match="JSON object"):
        parse_runtime_env("[]")


# A stand-in for `python -m reproq_cli.core.rayexec`: the first $FAILS starts answer as the
# bridge does when Ray refuses the driver (or, with $RETRY=false, any other failure), the
# next one is ready. Each start is counted in $COUNT.
STAND_IN_BRIDGE = """#!/bin/sh
n=$(cat "$COUNT" 2>/dev/null || echo 0)
echo $((n + 1)) > "$COUNT"
if [ "$n" -lt "$FAILS" ]; then
  echo '{"error": "ConnectionAbortedError: Initialization failure from server: boom", '\\
'"retry": '"$RETRY"'}'
  exit 2
fi
echo '{"ready": true, "resources": {"CPU": 1.0}}'
exec cat > /dev/null
"""


def _runner(tmp_path, fails: int, retry: str = "true") -> tuple[RayRunner, io.StringIO, Path]:
    bridge = tmp_path / "python"
    bridge.write_text(STAND_IN_BRIDGE)
    bridge.chmod(0o755)
    count = tmp_path / "count"
    out = io.StringIO()
    runner = RayRunner(
        "ray://127.0.0.1:1",
        max_payload_bytes=1 << 20,
        max_stderr_bytes=1 << 16,
        log=Logger(out),
        python_bin=str(bridge),
        env={"PATH": os.environ["PATH"], "COUNT": str(count), "FAILS": str(fails), "RETRY": retry},
    )
    return runner, out, count


def test_a_refused_driver_is_asked_again_at_start_up(tmp_path):
    runner, out, count = _runner(tmp_path, fails=1)
    try:
        runner.start()
        assert count.read_text().strip() == "2"
        warnings = [json.loads(line) for line in out.getvalue().splitlines()]
        refused = [w for w in warnings if w["msg"] == "Ray refused this driver; trying again"]
        assert len(refused) == 1 and refused[0]["attempt"] == 1
        assert "Initialization failure from server: boom" in refused[0]["error"]
    finally:
        runner.close()


def test_start_up_gives_up_after_its_attempts_and_fails_other_errors_at_once(tmp_path):
    (tmp_path / "refused").mkdir()
    runner, _, count = _runner(tmp_path / "refused", fails=99)
    with pytest.raises(
        RefusedByRay, match=re.escape("cannot connect to Ray at 'ray://127.0.0.1:1'")
    ):
        runner.start()
    assert count.read_text().strip() == str(START_ATTEMPTS)

    (tmp_path / "other").mkdir()
    runner, _, count = _runner(tmp_path / "other", fails=99, retry="false")
    with pytest.raises(InfraError) as info:
        runner.start()
    assert not isinstance(info.value, RefusedByRay)
    assert count.read_text().strip() == "1"
