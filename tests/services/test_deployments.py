"""Deploy, promote, scale and rollback as services: validation, roles, what
they freeze into releases and which jobs they start.  (The jobs themselves
run in tests/e2e against a real VM.)"""

import pytest

from cloud.models import (
    Deployment,
    Environment,
    Flavor,
    Image,
    Job,
    Release,
    Service,
    VirtualMachine,
)
from cloud.services import deployments
from cloud.services.errors import Forbidden, ValidationError
from tenants.models import Membership

pytestmark = pytest.mark.django_db

SPEC = {
    "image": "alpha/web:1",
    "ports": [8080],
    "healthcheck": {"type": "http", "path": "/", "port": 8080},
}


@pytest.fixture
def envs(make_team, catalogue):
    """A dev and a staging environment with two running VMs each."""
    team, user = make_team("alpha", "admin")
    made = {}
    for kind in ("dev", "staging", "prod"):
        env = Environment.objects.create(team=team, name=kind, kind=kind)
        for i in (1, 2):
            VirtualMachine.objects.create(
                environment=env,
                name=f"{kind}-{i}",
                host=catalogue,
                state="running",
                flavor=Flavor.objects.get(),
                image=Image.objects.get(),
            )
        made[kind] = env
    return team, user, made


def deploy(team, user, environment, **overrides):
    args = {"service_name": "web", "replicas": 1, **SPEC, **overrides}
    return deployments.deploy(user=user, team=team, env_id=environment.pk, **args)


def succeed(job):
    """Mark a deploy job and its deployment done, as the worker would."""
    from workers.jobs.engine import finish

    Job.objects.filter(pk=job.pk).update(state="running")
    Job.objects.filter(parent=job).update(state="succeeded")
    finish(Job.objects.get(pk=job.pk), "succeeded")
    Release.objects.filter(deployments__id=job.params["deployment"]).update(
        image_digest="sha256:" + "b" * 64
    )


def test_deploy_freezes_a_release_and_spreads_replicas(envs):
    team, user, env = envs
    job = deploy(team, user, env["dev"], replicas=2, ports=[])
    service = Service.objects.get(environment=env["dev"], name="web")
    release = service.releases.get()
    assert release.version == 1 and release.spec["image"] == "alpha/web:1" and service.replicas == 2
    children = list(job.children.order_by("vm__name"))
    assert [c.params["replicas"] for c in children] == [1, 1]
    assert [s.name for s in children[0].steps.all()] == [
        "resolve image",
        "publish ports",
        "roll out",
        "record containers",
    ]


def test_published_ports_take_any_number_of_replicas_per_vm(envs):
    """The guest's HAProxy fronts them all on the one published port."""
    team, user, env = envs
    job = deploy(team, user, env["dev"], replicas=6)
    assert [c.params["replicas"] for c in job.children.order_by("vm__name")] == [3, 3]
    succeed(job)
    scaled = deployments.scale(
        user=user, team=team, env_id=env["dev"].pk, service_name="web", replicas=3
    )
    assert sorted(c.params["replicas"] for c in scaled.children.all()) == [1, 2]


@pytest.mark.parametrize(
    "field, value",
    [
        ("image", "Web:1; reboot"),
        ("image", "../../etc"),
        ("image", ""),
        ("ports", [0]),
        ("ports", [70000]),
        ("ports", ["80"]),
        ("ports", [80, 80]),
        ("env", {"BAD-NAME": "x"}),
        ("env", {"A": 1}),
        ("command", "sh -c reboot"),
        ("volumes", ["/etc:/host-etc"]),
        ("volumes", ["data:/a/../../etc"]),
        ("volumes", ["data:relative"]),
        ("volumes", ["data:/a", "data:/b"]),
        ("cpu_limit", -1),
        ("cpu_limit", 10**9),
        ("memory_limit_mb", 1),
        ("restart_policy", "sometimes"),
        ("healthcheck", {"type": "http", "path": "no slash", "port": 80}),
        # Behind a published port (SPEC has 8080) HAProxy checks the path too.
        ("healthcheck", {"type": "http", "path": "/h?full=1", "port": 8080}),
        ("healthcheck", {"type": "magic"}),
        ("replicas", -1),
        ("replicas", 10**6),
        ("service_name", "<svc>"),
        ("service_name", "a" * 80),
    ],
)
def test_bad_specs_are_refused_naming_the_field(envs, field, value):
    team, user, env = envs
    with pytest.raises(ValidationError) as err:
        deploy(team, user, env["dev"], **{field: value})
    assert field in err.value.message_dict
    assert not Service.objects.exists() and not Job.objects.exists()


def test_promote_takes_the_exact_release_to_the_next_kind(envs):
    team, user, env = envs
    first = deploy(team, user, env["dev"])
    succeed(first)
    dev_release = Release.objects.get(service__environment=env["dev"])
    job = deployments.promote(user=user, team=team, env_id=env["dev"].pk, service_name="web")
    staged = Release.objects.get(service__environment=env["staging"])
    assert staged.promoted_from == dev_release
    assert staged.image_digest == dev_release.image_digest and staged.spec == dev_release.spec
    assert job.environment == env["staging"]


def test_promote_needs_a_successful_release_and_a_next_stage(envs):
    team, user, env = envs
    deploy(team, user, env["dev"])  # not succeeded yet
    with pytest.raises(ValidationError) as err:
        deployments.promote(user=user, team=team, env_id=env["dev"].pk, service_name="web")
    assert "service_name" in err.value.message_dict
    with pytest.raises(ValidationError) as err:
        deployments.promote(user=user, team=team, env_id=env["prod"].pk, service_name="web")
    assert "environment" in err.value.message_dict


def test_only_admins_promote_to_prod(envs):
    team, admin, env = envs
    succeed(deploy(team, admin, env["staging"]))
    developer = Membership.objects.create(
        team=team, user=type(admin).objects.create_user("dev-user"), role="developer"
    ).user
    with pytest.raises(Forbidden):
        deployments.promote(user=developer, team=team, env_id=env["staging"].pk, service_name="web")
    job = deployments.promote(user=admin, team=team, env_id=env["staging"].pk, service_name="web")
    assert job.environment == env["prod"]


def test_scale_reuses_the_current_release(envs):
    team, user, env = envs
    succeed(deploy(team, user, env["dev"], ports=[]))
    job = deployments.scale(
        user=user, team=team, env_id=env["dev"].pk, service_name="web", replicas=4
    )
    assert Service.objects.get(environment=env["dev"]).replicas == 4
    assert Release.objects.filter(service__environment=env["dev"]).count() == 1
    assert sorted(c.params["replicas"] for c in job.children.all()) == [2, 2]
    with pytest.raises(ValidationError):
        deployments.scale(
            user=user, team=team, env_id=env["dev"].pk, service_name="web", replicas=-2
        )
    with pytest.raises(ValidationError, match="no service named"):
        deployments.scale(
            user=user, team=team, env_id=env["dev"].pk, service_name="nope", replicas=1
        )


def test_rollback_deploys_the_release_before_the_current_one(envs):
    team, user, env = envs
    with pytest.raises(ValidationError, match="no service named"):
        deployments.rollback(user=user, team=team, env_id=env["dev"].pk, service_name="web")
    succeed(deploy(team, user, env["dev"], image="alpha/web:1"))
    succeed(deploy(team, user, env["dev"], image="alpha/web:2"))
    job = deployments.rollback(user=user, team=team, env_id=env["dev"].pk, service_name="web")
    deployment = Deployment.objects.get(pk=job.params["deployment"])
    assert deployment.release.version == 1 and deployment.release.spec["image"] == "alpha/web:1"


def test_viewers_cannot_deploy(envs):
    team, admin, env = envs
    viewer = Membership.objects.create(
        team=team, user=type(admin).objects.create_user("viewer"), role="viewer"
    ).user
    with pytest.raises(Forbidden):
        deploy(team, viewer, env["dev"])
