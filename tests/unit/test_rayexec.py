"""The Ray executor's pure parts: task options from the spec, the resource check, runtime_env."""

from __future__ import annotations

import json

import pytest

from reproq_cli.core.executor import InfraError
from reproq_cli.core.rayexec import parse_runtime_env, task_options, unschedulable


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
