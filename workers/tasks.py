"""Celery tasks.  They take ids, re-read state, and hold no business rules."""

import socket

from django.utils import timezone

from workers.celery import app


@app.task(name="strata.ping")
def ping(token: str) -> dict:
    """Answer with who ran it: a worker health check and a broker round trip."""
    return {"token": token, "worker": socket.gethostname(), "at": timezone.now().isoformat()}
