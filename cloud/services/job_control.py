"""Job operations teams can do: read and cancel."""

from django.db import transaction

from cloud.models import Job
from tenants.models import AuditEvent, Role
from workers.jobs import engine

from .access import ACT_ROLE, membership, team_row
from .errors import Forbidden, ValidationError


def get_job(user, team, job_id) -> Job:
    return team_row(user, team, Job.objects, job_id, "job")


def cancel_job(*, user, team, job_id) -> Job:
    """Cancel a job.  One that has not started ends at once, cancelled, in this
    transaction (its environment goes to the next job waiting); a running one
    stops at its next step boundary and undoes what it made."""
    job = get_job(user, team, job_id)
    needed = ACT_ROLE[job.environment.kind] if job.environment else Role.DEVELOPER
    if not membership(user, team).has_role(needed):
        raise Forbidden(f"cancelling this job needs the {needed} role")
    with transaction.atomic():
        finished = engine.cancel(job.pk)  # decided under the job's row lock
        if finished is not None:
            raise ValidationError({"state": [f"the job has already {finished}"]})
        AuditEvent.record("job.cancel", team=team, actor=user, target=job)
    job.refresh_from_db()
    return job
