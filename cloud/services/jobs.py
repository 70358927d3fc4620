"""Job operations teams can do: read and cancel."""

from django.db import transaction

from cloud.models import Job, JobState
from tenants.models import AuditEvent, Role

from .access import ACT_ROLE, membership, require_read
from .errors import Forbidden, NotFound, ValidationError


def get_job(user, team, job_id) -> Job:
    require_read(user, team)
    job = Job.objects.for_team(team).filter(pk=job_id).first()
    if job is None:
        raise NotFound("no such job")
    return job


def cancel_job(*, user, team, job_id) -> Job:
    """Ask a job to stop at its next step boundary; a queued one stops at once."""
    job = get_job(user, team, job_id)
    needed = ACT_ROLE[job.environment.kind] if job.environment else Role.DEVELOPER
    if not membership(user, team).has_role(needed):
        raise Forbidden(f"cancelling this job needs the {needed} role")
    if job.is_finished:
        raise ValidationError({"state": [f"the job has already {job.state}"]})
    # The worker stops the job at its next step boundary (a queued job before its
    # first step) and undoes what it made; the request itself changes nothing else.
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(cancel_requested=True)
        job.children.filter(state__in=[JobState.QUEUED, JobState.RUNNING]).update(
            cancel_requested=True
        )
        AuditEvent.record("job.cancel", team=team, actor=user, target=job)
    job.refresh_from_db()
    return job
