"""Environment-wide jobs.  They have no steps of their own: each is the parent
of one job per VM (on that VM's host queue) and finishes when they all have."""

from cloud.models import (
    Container,
    Deployment,
    Environment,
    Job,
    JobState,
    Release,
    Service,
    VirtualMachine,
)
from workers.jobs.engine import Plan, register


def forget_environment(job: Job) -> None:
    """After a successful destroy, the environment's rows go; jobs and audit
    events keep the history (their link to the environment becomes empty)."""
    if job.state != JobState.SUCCEEDED or job.environment_id is None:
        return
    env = job.environment_id
    Container.objects.filter(vm__environment=env).delete()
    Deployment.objects.filter(environment=env).delete()
    Release.objects.filter(service__environment=env).delete()
    Service.objects.filter(environment=env).delete()
    VirtualMachine.objects.filter(environment=env).delete()
    Environment.objects.filter(pk=env).delete()


register(Plan("create_environment", ()))
register(Plan("destroy_environment", (), on_finish=forget_environment))
