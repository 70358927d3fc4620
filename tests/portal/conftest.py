import pytest
from django.utils import timezone

from cloud.models import (
    Container,
    Deployment,
    Job,
    JobState,
    Release,
    Service,
    VirtualMachine,
    VMState,
)
from cloud.services.deployments import validate_spec
from cloud.services.environments import create_environment
from tenants.models import Membership, Role
from tests.services.conftest import catalogue  # noqa: F401 - fixture


@pytest.fixture
def world(make_team, django_user_model, catalogue):  # noqa: F811 - the imported fixture
    """Team alpha with an admin, a developer and a viewer, and a dev environment
    of two running VMs with a deployed service; team beta with its own member."""
    team, admin = make_team("alpha", Role.ADMIN, username="alice")
    developer = django_user_model.objects.create_user("dave", password="pw")
    viewer = django_user_model.objects.create_user("vera", password="pw")
    Membership.objects.create(team=team, user=developer, role=Role.DEVELOPER)
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    other_team, outsider = make_team("beta", Role.ADMIN, username="olga")

    job = create_environment(user=admin, team=team, name="shop", kind="dev", vm_count=2)
    finish_job(job)
    env = job.environment
    VirtualMachine.objects.filter(environment=env).update(
        state=VMState.RUNNING, started_at=timezone.now() - timezone.timedelta(hours=3)
    )
    vm = VirtualMachine.objects.filter(environment=env).order_by("name").first()
    service = Service.objects.create(environment=env, name="web", image="alpha/nginx:1.27")
    release = Release.objects.create(
        service=service,
        version=1,
        image_digest="sha256:" + "b" * 64,
        spec=validate_spec({"image": "alpha/nginx:1.27"}, team),
    )
    Deployment.objects.create(environment=env, release=release, state="succeeded")
    Container.objects.create(
        vm=vm, service=service, release=release, name="web-1", state="running", health="healthy"
    )
    other_job = create_environment(user=outsider, team=other_team, name="secret", kind="dev")
    finish_job(other_job)
    return {
        "team": team,
        "admin": admin,
        "developer": developer,
        "viewer": viewer,
        "outsider": outsider,
        "other_team": other_team,
        "env": env,
        "vm": vm,
        "job": job,
        "other_env": other_job.environment,
        "other_vm": other_job.environment.vms.first(),
        "other_job": other_job,
    }


def finish_job(job):
    """Mark a job and its children succeeded, as a worker would have."""
    now = timezone.now()
    for row in [job, *job.children.all()]:
        Job.objects.filter(pk=row.pk).update(
            state=JobState.SUCCEEDED, progress=100, started_at=now, finished_at=now
        )
        row.steps.update(state="done", started_at=now, finished_at=now)


@pytest.fixture
def client_as(client):
    def login(user):
        client.force_login(user)
        return client

    return login
