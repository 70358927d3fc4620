"""The environment services: validation, roles, quotas (also under a race),
placement, and the environment lock."""

import threading

import pytest
from django.db import connection

from cloud.models import Environment, Job, VirtualMachine
from cloud.services import environments
from cloud.services.errors import Busy, Forbidden, NotFound, QuotaExceeded, ValidationError
from tenants.models import AuditEvent, Quota

pytestmark = pytest.mark.django_db


def create(user, team, **overrides):
    args = {"name": "web", "kind": "dev", "vm_count": 1, "flavor": "small", "image": "debian-12"}
    return environments.create_environment(user=user, team=team, **{**args, **overrides})


def nothing_made():
    return not (
        Environment.objects.exists() or Job.objects.exists() or VirtualMachine.objects.exists()
    )


def test_create_writes_desired_state_a_job_per_vm_and_an_audit_event(make_team, catalogue):
    team, user = make_team("alpha", "developer")
    parent = create(user, team, vm_count=2)
    env = Environment.objects.get(team=team, name="web")
    assert env.lock_job == parent
    vms = list(env.vms.order_by("name"))
    assert [vm.name for vm in vms] == ["web-1", "web-2"]
    assert all(vm.state == "scheduled" and vm.host == catalogue for vm in vms)
    children = list(parent.children.all())
    assert {c.vm for c in children} == set(vms)
    assert all(c.queue == catalogue.queue and c.kind == "provision_vm" for c in children)
    assert [s.name for s in children[0].steps.order_by("index")] == [
        "reserve",
        "choose path",
        "create disk",
        "write seed",
        "ensure network",
        "define",
        "start",
        "re-identity",
        "wait for ssh",
        "check docker",
    ]
    assert AuditEvent.objects.filter(action="environment.create", team=team).exists()


HOSTILE_NAMES = [
    "a'><devices>",
    "../../etc/passwd",
    "x" * 41,
    "Web",
    "web;rm -rf /",
    "wéb",
    "",
    "-a",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_naming_the_field(make_team, catalogue, name):
    team, user = make_team("alpha")
    with pytest.raises(ValidationError) as err:
        create(user, team, name=name)
    assert set(err.value.message_dict) == {"name"}
    assert nothing_made()


@pytest.mark.parametrize(
    "field, value",
    [
        ("kind", "qa"),
        ("vm_count", 0),
        ("vm_count", -1),
        ("vm_count", 10**9),
        ("vm_count", "3"),
        ("vm_count", True),
        ("flavor", "huge"),
        ("image", "../../x"),
    ],
)
def test_bad_values_are_refused_naming_the_field(make_team, catalogue, field, value):
    team, user = make_team("alpha")
    with pytest.raises(ValidationError) as err:
        create(user, team, **{field: value})
    assert set(err.value.message_dict) == {field}
    assert nothing_made()


@pytest.mark.parametrize(
    "role, kind, allowed",
    [
        ("viewer", "dev", False),
        ("viewer", "prod", False),
        ("developer", "dev", True),
        ("developer", "staging", True),
        ("developer", "prod", False),
        ("admin", "dev", True),
        ("admin", "prod", True),
    ],
)
def test_role_matrix_for_create_and_destroy(make_team, catalogue, role, kind, allowed):
    team, user = make_team("alpha", role)
    admin = make_team("alpha-admins")[1]
    if not allowed:
        with pytest.raises(Forbidden):
            create(user, team, kind=kind)
        assert nothing_made()
        # Destroy needs the same role as create; an admin makes the environment.
        from tenants.models import Membership

        Membership.objects.create(team=team, user=admin, role="admin")
        job = create(admin, team, kind=kind)
        Job.objects.filter(pk=job.pk).update(state="succeeded")
        with pytest.raises(Forbidden):
            environments.destroy_environment(user=user, team=team, env_id=job.environment_id)
    else:
        job = create(user, team, kind=kind)
        Job.objects.filter(pk=job.pk).update(state="succeeded")
        destroy = environments.destroy_environment(user=user, team=team, env_id=job.environment_id)
        assert destroy.kind == "destroy_environment" and destroy.children.count() == 1


def test_other_teams_environments_do_not_exist(make_team, catalogue):
    team_a, user_a = make_team("alpha")
    team_b, user_b = make_team("beta")
    job = create(user_a, team_a)
    with pytest.raises(NotFound):
        environments.destroy_environment(user=user_b, team=team_b, env_id=job.environment_id)
    with pytest.raises(NotFound):  # a team the user is not in
        environments.destroy_environment(user=user_b, team=team_a, env_id=job.environment_id)


def test_quota_is_enforced_naming_what_is_exceeded(make_team, catalogue):
    team, user = make_team("alpha")
    Quota.objects.filter(team=team).update(vms=2, vcpus=100)
    create(user, team, name="one", vm_count=2)
    with pytest.raises(QuotaExceeded, match="vms: 2 used \\+ 1 requested > quota 2"):
        create(user, team, name="two")
    assert not Environment.objects.filter(name="two").exists()


def test_duplicate_name_is_refused(make_team, catalogue):
    team, user = make_team("alpha")
    create(user, team)
    with pytest.raises(ValidationError) as err:
        create(user, team)
    assert "exists" in err.value.message_dict["name"][0]


def test_no_capacity_gives_the_scheduler_reason(make_team, catalogue):
    team, user = make_team("alpha")
    catalogue.status = "disabled"
    catalogue.save()
    with pytest.raises(ValidationError, match="1 disabled or draining"):
        create(user, team)
    assert nothing_made()


def test_busy_environment_refuses_or_queues(make_team, catalogue):
    team, user = make_team("alpha")
    creating = create(user, team)
    with pytest.raises(Busy) as busy:
        environments.destroy_environment(user=user, team=team, env_id=creating.environment_id)
    assert busy.value.job == creating
    queued = environments.destroy_environment(
        user=user, team=team, env_id=creating.environment_id, queue_if_busy=True
    )
    assert queued.waits_for == creating and queued.state == "queued"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_requests_against_a_quota_of_five(make_team, catalogue):
    team, user = make_team("alpha")
    Quota.objects.filter(team=team).update(vms=5)
    outcomes, barrier = [], threading.Barrier(20)

    def request(i):
        try:
            barrier.wait()
            create(user, team, name=f"env-{i}")
            outcomes.append("created")
        except QuotaExceeded:
            outcomes.append("refused")
        except Exception as exc:  # noqa: BLE001 - shown in the assertion below
            outcomes.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=request, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] * 5 + ["refused"] * 15
    assert VirtualMachine.objects.filter(environment__team=team).count() == 5
