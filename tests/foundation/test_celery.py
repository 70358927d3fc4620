"""One task through the real Redis broker to a real worker process."""

import uuid
from pathlib import Path

import pytest

from workers.celery import app
from workers.tasks import ping

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture
def worker(worker_factory):
    """A Celery worker in its own process serving a queue unique to this test."""
    queue = f"host.test-{uuid.uuid4().hex[:8]}"
    worker_factory(queue)
    return queue


def test_reliability_settings():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_default_queue == "strata"


def test_task_round_trip_through_redis(worker):
    token = uuid.uuid4().hex
    result = ping.apply_async(args=[token], queue=worker).get(timeout=60)
    assert result["token"] == token
    assert result["worker"]


def test_objects_cannot_be_sent_only_json():
    with pytest.raises(Exception, match="not JSON serializable|EncodeError|serializ"):
        ping.apply_async(args=[object()], queue="nowhere")
