"""The job engine: runs a job's named steps in order, each idempotent, and
persists progress after every step so a redelivered job resumes where the
last run stopped.

A step that raises an error marked ``transient`` (the host or a connection
went away) sends the job back to the queue with exponential backoff; any
other error fails the job at once, and the plan's compensation undoes what
earlier steps made.  Cancellation is honoured at step boundaries; a job that
has not started is cancelled at once.

One run at a time: a run takes the job's lease (``workers.jobs.lease``) and a
thread renews it while the steps run.  Another delivery of the job (a
Redis redelivery, the stuck-job resender) finds the lease alive, runs nothing
and comes back once it would have expired: if the owner died, it takes over
and resumes.  Every write of step state, log, progress and outcome checks the
token, so a run whose lease was taken over stops at its next write.

A team runs at most ``STRATA_TEAM_JOBS_PER_QUEUE`` jobs at once on one queue;
a job over the limit goes back to its queue for a few seconds, so one team's
long jobs cannot hold every worker of a host.

Row locks: the engine locks job and team rows FOR NO KEY UPDATE, never FOR
UPDATE.  The foreign keys are checked at COMMIT (Django makes them DEFERRABLE
INITIALLY DEFERRED) with FOR KEY SHARE on the rows they name: a request that
queues a job behind the environment's holder share-locks the team, the
environment and the holder at its very end, after it took the environment's
row.  FOR UPDATE would make those checks wait for a worker that itself waits
for the environment or team row the request holds: a deadlock.  A deadlock or
serialization failure that still happens (with a transaction outside the
engine) is transient: the run gives the job back and is delivered again.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import Error as DatabaseError
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from cloud.models import Environment, Job, JobState, JobStep
from tenants.models import AuditEvent, Team
from workers.jobs.lease import (
    NO_LEASE,
    Lease,
    LeaseLost,
    lease_expiry,
    lease_owner,
    locked,
)
from workers.jobs.masking import mask
from workers.jobs.queue import enqueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[StepContext], None]


@dataclass(frozen=True)
class Plan:
    kind: str
    steps: tuple[Step, ...]
    compensate: Callable[[StepContext], None] | None = None
    # Called inside the finishing transaction with the finished job.
    on_finish: Callable[[Job], None] | None = None
    # Called inside the cancelling transaction, with the reason, for a job that
    # ends before its first step ran: it undoes database-only reservations
    # (nothing exists on a host yet, and the request must not wait for one).
    discard: Callable[[Job, str], None] | None = None

    def step_named(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


PLANS: dict[str, Plan] = {}


def register(plan: Plan) -> Plan:
    PLANS[plan.kind] = plan
    return plan


class UserError(Exception):
    """A failure that retrying cannot fix: the job fails with this message."""


class RetryLater(Exception):
    def __init__(self, countdown: float):
        super().__init__(f"retry in {countdown:g} s")
        self.countdown = countdown


# PostgreSQL's deadlock_detected and serialization_failure: it rolled the
# transaction back, and running it again succeeds.
_LOCK_CONFLICTS = {"40P01", "40001"}


def is_lock_conflict(error: BaseException) -> bool:
    return (
        isinstance(error, DatabaseError)
        and getattr(error.__cause__, "sqlstate", None) in _LOCK_CONFLICTS
    )


def is_transient(error: BaseException) -> bool:
    return bool(getattr(error, "transient", False)) or is_lock_conflict(error)


def backoff_seconds(attempt: int) -> float:
    return min(settings.STRATA_JOB_BACKOFF_SECONDS * 2 ** (attempt - 1), 300)


# --- taking the lease -------------------------------------------------------------


def _acquire(job_id) -> tuple[Job, Lease] | None:
    """Take the job's lease and mark it running; None when there is nothing to run.

    Raises RetryLater when a live run holds the lease (to look again once it
    would have expired) or when the team is at its limit on the job's queue.
    """
    with transaction.atomic():
        job = locked(Job.objects).annotate(db_now=Now()).filter(pk=job_id).first()
        if job is None or job.is_finished:
            return None  # deleted, or a duplicate delivery of a job already done
        if job.lease_expires_at is not None and job.lease_expires_at > job.db_now:
            remaining = (job.lease_expires_at - job.db_now).total_seconds()
            raise RetryLater(round(remaining + 1, 1))
        _check_team_limit(job)
        lease = Lease(job.pk, uuid.uuid4())
        if job.state == JobState.QUEUED:
            job.move_to(JobState.RUNNING, attempts=job.attempts + 1)
            if job.parent_id:
                # The parent runs as soon as one of its children does.
                Job.objects.filter(pk=job.parent_id, state=JobState.QUEUED).update(
                    state=JobState.RUNNING, started_at=timezone.now()
                )
        Job.objects.filter(pk=job.pk).update(
            lease_token=lease.token, lease_owner=lease_owner(), lease_expires_at=lease_expiry()
        )
    return Job.objects.select_related("team").get(pk=job_id), lease


def _check_team_limit(job: Job) -> None:
    limit = settings.STRATA_TEAM_JOBS_PER_QUEUE
    if limit <= 0:
        return
    # The team's row lock makes two workers starting its jobs at once count each other.
    list(locked(Team.objects).filter(pk=job.team_id).values_list("pk", flat=True))
    running = (
        Job.objects.filter(team=job.team_id, queue=job.queue, lease_expires_at__gt=Now())
        .exclude(pk=job.pk)
        .count()
    )
    if running >= limit:
        raise RetryLater(settings.STRATA_TEAM_LIMIT_RETRY_SECONDS)


# --- running ------------------------------------------------------------------------


@dataclass
class StepContext:
    job: Job
    step: JobStep
    lease: Lease
    secrets: set[str] = field(default_factory=set)

    def log(self, message: str) -> None:
        line = f"{timezone.now():%H:%M:%S} {mask(message, self.secrets)}\n"
        self.lease.update_step(self.step.pk, log=self.step.log + line)
        self.step.log += line

    def heartbeat(self) -> None:
        """Renew the lease now; raises LeaseLost if another run took the job over.
        (A thread renews it anyway; a long step may call this to stop early.)"""
        self.lease.renew()

    def cancel_requested(self) -> bool:
        return Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists()


def create_job(*, team, kind: str, requested_by=None, queue: str = "strata", **fields) -> Job:
    """A queued job with one pending row per step of its plan (not yet enqueued)."""
    plan = PLANS[kind]
    job = Job.objects.create(team=team, kind=kind, requested_by=requested_by, queue=queue, **fields)
    JobStep.objects.bulk_create(
        JobStep(job=job, index=i, name=step.name) for i, step in enumerate(plan.steps)
    )
    return job


def run(job_id: str) -> None:
    """Run (or resume) a job; raises RetryLater when it should come back later."""
    lease = None
    try:
        acquired = _acquire(job_id)
        if acquired is None:
            return
        job, lease = acquired
        with lease.kept_alive():
            try:
                _run_steps(PLANS[job.kind], job, lease)
            except LeaseLost:
                log.warning("job %s: another run took it over; this run stopped", job.pk)
    except DatabaseError as error:
        if not is_lock_conflict(error):
            raise
        # PostgreSQL rolled back what the statement's transaction wrote; what
        # committed (done steps) stays, and the next delivery resumes from it.
        if lease is not None:
            lease.give_back()
        log.warning("job %s: %s; retrying", job_id, str(error).splitlines()[0])
        raise RetryLater(lock_conflict_backoff()) from error


def lock_conflict_backoff() -> float:
    """A short wait, spread so two runs that collided do not collide again."""
    return backoff_seconds(1) * random.uniform(0.5, 1.5)


def _run_steps(plan: Plan, job: Job, lease: Lease) -> None:
    steps = list(job.steps.exclude(name="compensate"))
    for row in steps:
        if row.state in (JobStep.State.DONE, JobStep.State.SKIPPED):
            continue
        ctx = StepContext(job, row, lease)
        if ctx.cancel_requested():
            _compensate(plan, job, lease, "cancelled before step " + row.name)
            finish(job, JobState.CANCELLED, "cancelled by request", lease=lease)
            return
        row.state, row.started_at = JobStep.State.RUNNING, timezone.now()
        lease.update_step(row.pk, state=row.state, started_at=row.started_at)
        try:
            plan.step_named(row.name).run(ctx)
        except LeaseLost:
            raise
        except Exception as error:  # noqa: BLE001 - every failure is recorded on the job
            _step_failed(plan, job, ctx, error)
            return
        row.state, row.finished_at = JobStep.State.DONE, timezone.now()
        lease.update_step(row.pk, state=row.state, finished_at=row.finished_at)
        done = sum(1 for s in steps if s.state == JobStep.State.DONE)
        lease.update_job(progress=done * 100 // len(steps))
    finish(job, JobState.SUCCEEDED, lease=lease)


def _step_failed(plan: Plan, job: Job, ctx: StepContext, error: Exception) -> None:
    message = mask(f"{ctx.step.name}: {error}", ctx.secrets)
    ctx.log(f"failed: {error}")
    if is_transient(error) and job.attempts < settings.STRATA_JOB_MAX_ATTEMPTS:
        with transaction.atomic():
            held = ctx.lease.locked_job()
            JobStep.objects.filter(pk=ctx.step.pk).update(state=JobStep.State.PENDING)
            # Requeued without a lease, so the retry's delivery may take it at once.
            held.move_to(JobState.QUEUED, error=f"retrying after: {message}", **NO_LEASE)
        raise RetryLater(backoff_seconds(job.attempts)) from error
    ctx.lease.update_step(ctx.step.pk, state=JobStep.State.FAILED, finished_at=timezone.now())
    _compensate(plan, job, ctx.lease, message)
    finish(job, JobState.FAILED, message, lease=ctx.lease)


def _compensate(plan: Plan, job: Job, lease: Lease, reason: str) -> None:
    if plan.compensate is None:
        return
    lease.renew()  # a run that lost the job must not undo what the live run makes
    index = job.steps.count()
    row, _ = JobStep.objects.get_or_create(
        job=job, name="compensate", defaults={"index": index, "started_at": timezone.now()}
    )
    job.error = reason
    ctx = StepContext(job, row, lease)
    ctx.log(f"undoing what this job made ({reason})")
    try:
        plan.compensate(ctx)
    except LeaseLost:
        raise
    except Exception as error:  # noqa: BLE001 - the reconciler sweeps what is left
        ctx.log(f"compensation incomplete, the reconciler will clean up: {error}")
        state = JobStep.State.FAILED
    else:
        state = JobStep.State.DONE
    lease.update_step(row.pk, state=state, finished_at=timezone.now())


# --- finishing, cancelling and the environment lock --------------------------------


@transaction.atomic
def finish(job: Job, state: str, error: str = "", *, lease: Lease | None = None) -> None:
    """End ``job``: release its environment, finish its parent, start a waiter.

    With ``lease``, only if that run still holds the job (else LeaseLost)."""
    job = lease.locked_job() if lease else locked(Job.objects).get(pk=job.pk)
    if job.is_finished:
        return
    fields = {"error": error, **NO_LEASE}
    if state == JobState.SUCCEEDED:
        fields["progress"] = 100
    job.move_to(state, **fields)
    if PLANS[job.kind].on_finish is not None:
        PLANS[job.kind].on_finish(job)
    AuditEvent.record(
        f"job.{state}",
        team=job.team,
        actor=job.requested_by,
        target=job,
        kind=job.kind,
        error=error,
    )
    if job.parent_id:
        _child_finished(job.parent_id)
        return
    _release(job)


def _child_finished(parent_id) -> None:
    parent = locked(Job.objects).get(pk=parent_id)
    children = list(parent.children.all())
    if parent.is_finished or not all(c.is_finished for c in children):
        return
    failed = [c for c in children if c.state == JobState.FAILED]
    if parent.state == JobState.QUEUED:
        parent.move_to(JobState.RUNNING)
    if failed:
        finish(parent, JobState.FAILED, "; ".join(f"{c.kind}: {c.error}" for c in failed))
    elif any(c.state == JobState.CANCELLED for c in children):
        finish(parent, JobState.CANCELLED, "cancelled by request")
    else:
        finish(parent, JobState.SUCCEEDED)


def _release(job: Job) -> None:
    """Free what ``job`` held, and hand the environment to the first job waiting."""
    held = Environment.objects.filter(lock_job=job).update(lock_job=None)
    waiting = job.waiters.filter(state=JobState.QUEUED).order_by("created_at")
    if not held and job.waits_for_id and not Job.objects.get(pk=job.waits_for_id).is_finished:
        # It was itself waiting (it was cancelled): its waiters wait for what it waited for.
        waiting.update(waits_for=job.waits_for_id)
        return
    waiter = waiting.first()
    if waiter is None:
        return
    if not Environment.objects.filter(pk=waiter.environment_id).exists():
        # Every waiter waits for the holder itself, so none is left behind.
        reason = f"its environment was destroyed (by job {job.pk}) before it could start"
        for each in list(waiting):
            _end_unstarted(each, JobState.FAILED, reason)
        return
    waiting.exclude(pk=waiter.pk).update(waits_for=waiter)
    Environment.objects.filter(pk=waiter.environment_id).update(lock_job=waiter)
    start(waiter)


def start(job: Job) -> None:
    """Enqueue the job's per-VM children, or the job itself when it has none."""
    children = list(job.children.all())
    for child in children or [job]:
        enqueue(child)


def _not_started(job: Job) -> bool:
    return job.state == JobState.QUEUED and job.attempts == 0


def _end_unstarted(job: Job, state: str, reason: str) -> None:
    """End a job none of whose steps ran (and its children): nothing to undo on a host."""
    children = [c for c in locked(job.children).order_by("pk") if not c.is_finished]
    for each in children or [job]:
        discard = PLANS[each.kind].discard
        if discard is not None:
            discard(each, reason)
        finish(each, state, reason)


@transaction.atomic
def cancel(job_id) -> str | None:
    """Cancel a job: what has not started ends at once, cancelled (releasing its
    environment to the next waiter); what runs stops at its next step boundary
    and undoes what it made.  Returns the state of a job already finished."""
    # Children before their parent: the order in which a starting child locks them.
    children = list(locked(Job.objects).filter(parent=job_id).order_by("pk"))
    job = locked(Job.objects).get(pk=job_id)
    if job.is_finished:
        return job.state
    live = [c for c in children if not c.is_finished]
    Job.objects.filter(pk__in=[job.pk, *(c.pk for c in live)]).update(cancel_requested=True)
    for each in live or ([] if children else [job]):
        if _not_started(each):
            _end_unstarted(each, JobState.CANCELLED, "cancelled before it started")
    return None
