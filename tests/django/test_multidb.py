"""Queues routed to another database (REPROQ_QUEUE_DATABASES) and alias-prefixed result ids."""

from __future__ import annotations

import pytest

from reproq_django import db
from reproq_django.models import TaskRun
from tests.django.sampleapp import tasks

pytestmark = pytest.mark.django_db(databases=["default", "second"])


@pytest.fixture
def routed(settings):
    settings.REPROQ_QUEUE_DATABASES = {"high": "second", "reports-*": "second"}
    return settings


def test_resolution_rules(routed):
    assert db.resolve_queue_db("high") == "second"
    assert db.resolve_queue_db("reports-eu") == "second"
    assert db.resolve_queue_db("default") == "default"
    assert db.resolve_queue_db(None) == "default"
    assert db.queue_db_aliases() == ["default", "second"]
    assert db.should_prefix_result_ids() is True
    assert db.format_result_id(7, "second") == "second:7"
    assert db.parse_result_id("second:7") == ("second", "7")
    assert db.parse_result_id("unknown:7") == ("default", "unknown:7")
    assert db.parse_result_id(7) == ("default", "7")
    routed.REPROQ_RESULT_ID_WITH_ALIAS = False
    assert db.format_result_id(7, "second") == "7"


def test_bad_mapping_is_rejected(settings):
    settings.REPROQ_QUEUE_DATABASES = ["high"]
    with pytest.raises(ValueError, match="must be a dict"):
        db.queue_database_map()


def test_enqueue_goes_to_the_queues_database(routed):
    loud = tasks.shout.enqueue("routed")  # queue "high"
    plain = tasks.add.enqueue(1, 1)
    assert loud.id.startswith("second:")
    assert plain.id.startswith("default:")
    assert TaskRun.objects.using("second").filter(task_path__endswith=".shout").count() == 1
    assert TaskRun.objects.using("default").filter(task_path__endswith=".shout").count() == 0
    fetched = tasks.shout.get_result(loud.id)
    assert fetched.db_alias == "second"
    assert fetched.args == ["routed"]


def test_single_database_ids_have_no_prefix():
    assert "default" in db.queue_db_aliases()
    result = tasks.add.enqueue(2, 2)
    assert ":" not in result.id


def test_router(routed):
    from django.contrib.auth.models import User

    from reproq_django.db_router import ReproqRouter

    router = ReproqRouter()
    assert router.db_for_read(TaskRun) == "default"
    run = TaskRun.objects.using("second").create(
        spec_json={"task_path": "x.y"}, spec_hash="h", task_path="x.y"
    )
    assert router.db_for_write(TaskRun, instance=run) == "second"
    assert router.db_for_read(User) is None
    assert router.allow_migrate("second", "reproq_django") is True
    assert router.allow_migrate("other", "reproq_django") is False
    assert router.allow_migrate("other", "auth") is None
