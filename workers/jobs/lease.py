"""A run's lease on a job: owner, expiry and fencing token.

One run at a time: a run takes the job's lease and a thread renews it while
the steps run.  Every write of step state, log, progress and outcome goes
through the lease and checks the token first, so a run whose lease was taken
over stops at its next write.  Rows are locked FOR NO KEY UPDATE (see
``workers.jobs.engine`` for why never FOR UPDATE).
"""

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import Error as DatabaseError
from django.db import connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from cloud.models import Job, JobStep

log = logging.getLogger(__name__)

# What a finished or requeued job keeps of its lease: the last owner, for history.
NO_LEASE = {"lease_token": None, "lease_expires_at": None}


class LeaseLost(Exception):
    """Another run has taken this job over: this one must stop without writing."""


def lease_expiry():
    # The database's clock, so workers on hosts with skewed clocks agree.
    return Now() + timedelta(seconds=settings.STRATA_JOB_LEASE_SECONDS)


def locked(jobs_or_teams):
    """The rows, locked against the engine's other writers but not against the
    foreign-key checks of rows that name them (see the engine's docstring)."""
    return jobs_or_teams.select_for_update(no_key=True)


def lease_owner() -> str:
    """Who holds a lease: host, process and thread, for whoever reads the job."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclass
class Lease:
    """This run's claim on a job; every write through it checks the claim first."""

    job_id: uuid.UUID
    token: uuid.UUID
    lost: threading.Event = field(default_factory=threading.Event)

    def _mine(self):
        return Job.objects.filter(pk=self.job_id, lease_token=self.token)

    def _lose(self) -> LeaseLost:
        self.lost.set()
        return LeaseLost(f"job {self.job_id}: another run holds its lease")

    def renew(self) -> None:
        """Extend the lease; raises LeaseLost once another run holds the job."""
        if self.lost.is_set() or not self._mine().update(lease_expires_at=lease_expiry()):
            raise self._lose()

    def update_job(self, **fields) -> None:
        if self.lost.is_set() or not self._mine().update(**fields, updated_at=timezone.now()):
            raise self._lose()

    def update_step(self, step_id: int, **fields) -> None:
        with transaction.atomic():
            # The job row's lock keeps a takeover from committing between the
            # check and the write.
            held = locked(self._mine()).values_list("pk", flat=True)
            if self.lost.is_set() or not list(held):
                raise self._lose()
            JobStep.objects.filter(pk=step_id).update(**fields)

    def locked_job(self) -> Job:
        """The job, row-locked in the caller's transaction, if this run still holds it."""
        job = locked(Job.objects).get(pk=self.job_id)
        if self.lost.is_set() or job.lease_token != self.token:
            raise self._lose()
        return job

    def give_back(self) -> None:
        """End this run's claim now, so the job's next delivery may take it at once."""
        try:
            self._mine().update(**NO_LEASE)
        except DatabaseError as error:
            log.warning("job %s: could not give its lease back (it lapses): %s", self.job_id, error)

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew the lease from a thread while the body runs (steps may block long)."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self._heartbeat, args=(stop,), name=f"lease-{self.job_id}", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            # Bounded: a renewal stuck on a lock must not hold the worker.
            thread.join(timeout=settings.STRATA_JOB_LEASE_SECONDS)

    def _heartbeat(self, stop: threading.Event) -> None:
        try:
            while not stop.wait(settings.STRATA_JOB_LEASE_SECONDS / 3):
                try:
                    self.renew()
                except LeaseLost:
                    log.warning("job %s: its lease was taken over; this run stops", self.job_id)
                    return
                except DatabaseError as error:
                    # Keep trying: the next renewal that gets through finds out
                    # whether another run took the job over meanwhile.
                    log.warning("job %s: could not renew its lease: %s", self.job_id, error)
                    connection.close()
        finally:
            connection.close()
