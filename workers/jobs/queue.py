"""Sending work to the workers by task name, so nothing below the Celery entry
points (``workers.tasks``) imports them: the one way services and the engine
reach a queue."""

from celery.result import AsyncResult
from django.db import transaction

from cloud.models import Job
from workers.celery import app

RUN_JOB = "strata.run_job"


def send(task: str, args: list, *, queue: str, **options) -> AsyncResult:
    """Send the task named ``task`` to ``queue`` now; its result can be waited for."""
    return app.send_task(task, args=args, queue=queue, **options)


def enqueue(job: Job) -> None:
    """Send the job to its queue once the surrounding transaction commits."""
    job_id, queue = str(job.id), job.queue
    transaction.on_commit(lambda: send(RUN_JOB, [job_id], queue=queue))
