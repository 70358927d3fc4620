"""Celery tasks.  They take ids, re-read state, and hold no business rules."""

import socket

from django.utils import timezone

import workers.steps  # noqa: F401 - registers the job plans
from workers.celery import app


@app.task(name="strata.ping")
def ping(token: str) -> dict:
    """Answer with who ran it: a worker health check and a broker round trip."""
    return {"token": token, "worker": socket.gethostname(), "at": timezone.now().isoformat()}


@app.task(bind=True, name="strata.run_job", max_retries=None)
def run_job(self, job_id: str) -> None:
    """Run or resume one job; the message carries only its id."""
    from workers import jobs

    try:
        jobs.run(job_id)
    except jobs.RetryLater as later:
        raise self.retry(countdown=later.countdown) from later
