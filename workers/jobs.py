"""The job engine: runs a job's named steps in order, each idempotent, and
persists progress after every step so a redelivered job resumes where the
last run stopped.

A step that raises an error marked ``transient`` (the host or a connection
went away) sends the job back to the queue with exponential backoff; any
other error fails the job at once, and the plan's compensation undoes what
earlier steps made.  Cancellation is honoured at step boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.models import Environment, Job, JobState, JobStep
from tenants.models import AuditEvent


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


def is_transient(error: BaseException) -> bool:
    return bool(getattr(error, "transient", False))


def backoff_seconds(attempt: int) -> float:
    return min(settings.STRATA_JOB_BACKOFF_SECONDS * 2 ** (attempt - 1), 300)


_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S
)


def mask(text: str, secrets: set[str] | frozenset[str] = frozenset()) -> str:
    """Hide private keys and the job's known secret values in logs and errors."""
    text = _PRIVATE_KEY.sub("[private key hidden]", text)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "********")
    return text


@dataclass
class StepContext:
    job: Job
    step: JobStep
    secrets: set[str] = field(default_factory=set)

    def log(self, message: str) -> None:
        line = f"{timezone.now():%H:%M:%S} {mask(message, self.secrets)}\n"
        self.step.log += line
        JobStep.objects.filter(pk=self.step.pk).update(log=self.step.log)

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


def enqueue(job: Job) -> None:
    """Send the job to its queue once the surrounding transaction commits."""
    from workers.tasks import run_job

    job_id, queue = str(job.id), job.queue
    transaction.on_commit(lambda: run_job.apply_async(args=[job_id], queue=queue))


def run(job_id: str) -> None:
    """Run (or resume) a job; raises RetryLater when a transient error wants a retry."""
    job = Job.objects.select_related("team").filter(pk=job_id).first()
    if job is None or job.is_finished:
        return  # deleted, or a duplicate delivery of a job already done
    plan = PLANS[job.kind]
    if job.state == JobState.QUEUED:
        job.move_to(JobState.RUNNING, attempts=job.attempts + 1)
        if job.parent_id:
            # The parent runs as soon as one of its children does.
            Job.objects.filter(pk=job.parent_id, state=JobState.QUEUED).update(
                state=JobState.RUNNING, started_at=timezone.now()
            )
    steps = list(job.steps.exclude(name="compensate"))
    for row in steps:
        if row.state in (JobStep.State.DONE, JobStep.State.SKIPPED):
            continue
        ctx = StepContext(job, row)
        if ctx.cancel_requested():
            _compensate(plan, job, "cancelled before step " + row.name)
            finish(job, JobState.CANCELLED, "cancelled by request")
            return
        row.state, row.started_at = JobStep.State.RUNNING, timezone.now()
        row.save(update_fields=["state", "started_at"])
        try:
            plan.step_named(row.name).run(ctx)
        except Exception as error:  # noqa: BLE001 - every failure is recorded on the job
            _step_failed(plan, job, ctx, error)
            return
        row.state, row.finished_at = JobStep.State.DONE, timezone.now()
        row.save(update_fields=["state", "finished_at"])
        done = sum(1 for s in steps if s.state == JobStep.State.DONE)
        Job.objects.filter(pk=job.pk).update(
            progress=done * 100 // len(steps), updated_at=timezone.now()
        )
    finish(job, JobState.SUCCEEDED)


def _step_failed(plan: Plan, job: Job, ctx: StepContext, error: Exception) -> None:
    message = mask(f"{ctx.step.name}: {error}", ctx.secrets)
    ctx.log(f"failed: {error}")
    if is_transient(error) and job.attempts < settings.STRATA_JOB_MAX_ATTEMPTS:
        ctx.step.state = JobStep.State.PENDING
        ctx.step.save(update_fields=["state"])
        job.move_to(JobState.QUEUED, error=f"retrying after: {message}")
        raise RetryLater(backoff_seconds(job.attempts)) from error
    ctx.step.state, ctx.step.finished_at = JobStep.State.FAILED, timezone.now()
    ctx.step.save(update_fields=["state", "finished_at"])
    _compensate(plan, job, message)
    finish(job, JobState.FAILED, message)


def _compensate(plan: Plan, job: Job, reason: str) -> None:
    if plan.compensate is None:
        return
    index = job.steps.count()
    row, _ = JobStep.objects.get_or_create(
        job=job, name="compensate", defaults={"index": index, "started_at": timezone.now()}
    )
    job.error = reason
    ctx = StepContext(job, row)
    ctx.log(f"undoing what this job made ({reason})")
    try:
        plan.compensate(ctx)
    except Exception as error:  # noqa: BLE001 - the reconciler sweeps what is left
        ctx.log(f"compensation incomplete, the reconciler will clean up: {error}")
        row.state = JobStep.State.FAILED
    else:
        row.state = JobStep.State.DONE
    row.finished_at = timezone.now()
    row.save(update_fields=["state", "finished_at", "log"])


@transaction.atomic
def finish(job: Job, state: str, error: str = "") -> None:
    """End ``job``: release its environment, finish its parent, start a waiter."""
    job = Job.objects.select_for_update().get(pk=job.pk)
    if job.is_finished:
        return
    fields = {"error": error}
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
    parent = Job.objects.select_for_update().get(pk=parent_id)
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
    Environment.objects.filter(lock_job=job).update(lock_job=None)
    waiter = job.waiters.filter(state=JobState.QUEUED).order_by("created_at").first()
    if waiter is not None and waiter.environment_id:
        Environment.objects.filter(pk=waiter.environment_id).update(lock_job=waiter)
        job.waiters.filter(state=JobState.QUEUED).exclude(pk=waiter.pk).update(waits_for=waiter)
        start(waiter)


def start(job: Job) -> None:
    """Enqueue the job's per-VM children, or the job itself when it has none."""
    children = list(job.children.all())
    for child in children or [job]:
        enqueue(child)
