"""Ray resource requests: from ``@ray_options`` and ``enqueue(ray_options=...)`` into the spec."""

from __future__ import annotations

import pytest
from django.tasks import task

from reproq_django.backend import ReproqBackend
from reproq_django.raytask import ray_options
from tests.django.sampleapp import ray_tasks, tasks


@ray_options(num_gpus=1, memory=2**30)
@task()
def gpu_job(x: int) -> int:
    return x


def test_decorator_and_enqueue_options_go_into_the_spec():
    backend = ReproqBackend("default", {"OPTIONS": {}})
    spec, _ = backend.build_spec(gpu_job, [1], {"ray_options": {"num_cpus": 4}})
    assert spec["ray"] == {"num_gpus": 1, "memory": 2**30, "num_cpus": 4}
    assert spec["kwargs"] == {}  # a reserved kwarg, not passed to the task
    only_decorator, _ = backend.build_spec(ray_tasks.needs_gpus, [], {})
    assert only_decorator["ray"] == {"num_gpus": 8}
    # Tasks that ask for nothing keep the spec (and its hash) they always had.
    plain, _ = backend.build_spec(tasks.add, [1, 2], {})
    assert "ray" not in plain


def test_bad_options_are_refused_at_enqueue_and_decoration():
    backend = ReproqBackend("default", {"OPTIONS": {}})
    with pytest.raises(ValueError, match="unknown Ray option 'gpus'"):
        backend.build_spec(gpu_job, [1], {"ray_options": {"gpus": 1}})
    with pytest.raises(ValueError, match="non-negative number"):
        ray_options(num_cpus=-1)
