"""Resize reserves its flavor against the team's quota and the VM's host from
the request until its job ends, on PostgreSQL with concurrent requests."""

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from cloud.models import Environment, Flavor, Host, Image, Job, PortForward, VirtualMachine
from cloud.services import environments
from cloud.services.errors import Busy, QuotaExceeded, ValidationError
from tenants.models import ApiToken, Quota
from tests.hypervisor.conftest import TEST_DATA_DIR, make_spec
from workers.drivers.hypervisor import Hypervisor
from workers.jobs import engine as jobs

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def world(make_team, catalogue):
    """Two stopped small VMs (1 vCPU, 512 MiB) of one team in two environments."""
    team, user = make_team("alpha", "admin")
    Flavor.objects.create(name="medium", vcpus=2, memory_mb=1024, disk_gb=5)
    vms = []
    for name in ("one", "two"):
        env = Environment.objects.create(team=team, name=name, kind="dev")
        vms.append(
            VirtualMachine.objects.create(
                environment=env,
                name=f"{name}-1",
                host=catalogue,
                flavor=Flavor.objects.get(name="small"),
                image=Image.objects.get(name="debian-12"),
                state="stopped",
            )
        )
    return team, user, vms


def resize(team, user, vm, flavor="medium", **options) -> Job:
    return environments.vm_action(
        user=user, team=team, vm_id=vm.pk, action="resize", flavor=flavor, **options
    )


def concurrently(*calls) -> list:
    """Run the calls in threads released at once; each outcome is a Job or the error raised."""
    outcomes, barrier = [None] * len(calls), threading.Barrier(len(calls))

    def run(i, call):
        try:
            barrier.wait()
            outcomes[i] = call()
        except Exception as exc:  # noqa: BLE001 - checked by the caller
            outcomes[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def accepted_and_refused(outcomes) -> tuple[list, list]:
    accepted = [o for o in outcomes if isinstance(o, Job)]
    refused = [o for o in outcomes if isinstance(o, ValidationError)]
    assert len(accepted) + len(refused) == len(outcomes), outcomes
    return accepted, refused


def test_two_concurrent_resizes_past_the_quota_one_is_accepted(world):
    """Finding 9.8: two concurrent resizes where only one fits the team's quota:
    exactly one is accepted, the other refused naming the flavor."""
    team, user, (one, two) = world
    Quota.objects.filter(team=team).update(vcpus=3)  # 2 used; each resize adds 1

    outcomes = concurrently(lambda: resize(team, user, one), lambda: resize(team, user, two))

    accepted, refused = accepted_and_refused(outcomes)
    assert len(accepted) == 1 and len(refused) == 1
    assert isinstance(refused[0], QuotaExceeded)
    assert set(refused[0].message_dict) == {"flavor"}
    assert "vcpus" in refused[0].message_dict["flavor"][0]
    assert Job.objects.filter(kind="vm_resize").count() == 1
    assert environments.team_usage(team)["vcpus"] == 3  # the accepted resize is reserved


def test_two_concurrent_resizes_past_the_hosts_capacity_one_is_accepted(world, catalogue):
    """Finding 9.8: the VM's host with its overcommit ratio bounds resizes too."""
    team, user, (one, two) = world
    # 2 real CPUs x 1.5 = 3 vCPUs; the two small VMs take 2.
    Host.objects.filter(pk=catalogue.pk).update(cpus=2, cpu_overcommit=1.5)

    outcomes = concurrently(lambda: resize(team, user, one), lambda: resize(team, user, two))

    accepted, refused = accepted_and_refused(outcomes)
    assert len(accepted) == 1 and len(refused) == 1
    assert not isinstance(refused[0], QuotaExceeded)
    assert set(refused[0].message_dict) == {"flavor"}
    assert "3 vCPUs" in refused[0].message_dict["flavor"][0]


def test_a_queued_resize_counts_against_the_next_request(world):
    """Finding 9.8: a resize waiting behind another job still holds its flavor."""
    team, user, (one, two) = world
    Quota.objects.filter(team=team).update(vcpus=3)
    holder = environments.vm_action(
        user=user, team=team, vm_id=one.pk, action="snapshot", snapshot="before"
    )
    queued = resize(team, user, one, queue_if_busy=True)
    assert queued.waits_for == holder

    with pytest.raises(QuotaExceeded) as refused:
        resize(team, user, two)
    assert set(refused.value.message_dict) == {"flavor"}
    # Queuing the same resize twice for one VM reserves it once.
    again = resize(team, user, one, queue_if_busy=True)
    assert again.state == "queued"
    assert environments.team_usage(team)["vcpus"] == 3


def test_a_reservation_counts_in_the_placement_of_new_vms(world, catalogue):
    """Finding 9.8: the scheduler sees a host's reserved resizes when placing new VMs."""
    team, user, (one, _) = world
    Host.objects.filter(pk=catalogue.pk).update(cpus=3, cpu_overcommit=1.0)
    resize(team, user, one)  # the host: 2 used + 1 reserved = 3 of 3
    with pytest.raises(ValidationError) as refused:
        environments.create_environment(user=user, team=team, name="three", kind="dev")
    assert set(refused.value.message_dict) == {"vm_count"}


def test_a_failed_resize_releases_its_reservation(world):
    """Finding 9.8: when the resize job fails (here libvirt has no such domain),
    the VM keeps its flavor and the reservation is released."""
    team, user, (one, two) = world
    Quota.objects.filter(team=team).update(vcpus=3)
    failing = resize(team, user, one)

    jobs.run(str(failing.id))

    failing.refresh_from_db()
    assert failing.state == "failed"
    assert VirtualMachine.objects.get(pk=one.pk).flavor.name == "small"
    assert environments.team_usage(team)["vcpus"] == 2
    assert resize(team, user, two).state == "queued"


def test_a_cancelled_resize_releases_its_reservation(world):
    """Finding 9.8: a resize cancelled before it ran holds nothing afterwards."""
    team, user, (one, two) = world
    Quota.objects.filter(team=team).update(vcpus=3)
    cancelled = resize(team, user, one)
    Job.objects.filter(pk=cancelled.pk).update(cancel_requested=True)

    jobs.run(str(cancelled.id))

    cancelled.refresh_from_db()
    assert cancelled.state == "cancelled"
    assert environments.team_usage(team)["vcpus"] == 2
    assert resize(team, user, two).state == "queued"


def test_a_done_resize_counts_its_flavor_once(world):
    """Finding 9.8: after the resize the VM's new flavor is its usage, not twice."""
    team, user, (one, _) = world
    hv = Hypervisor("test:///default", TEST_DATA_DIR, virt_type="qemu")
    hv.storage.ensure_pools()
    try:
        hv.guests.define(make_spec(name=one.domain_name, uuid=str(one.uuid), vm_id=str(one.pk)))
        # A provisioned VM has its SSH forward: the resize redefines the domain with it.
        PortForward.objects.create(host=one.host, host_port=22001, vm=one, guest_port=22)
        done = resize(team, user, one)
        jobs.run(str(done.id))
        done.refresh_from_db()
        assert done.state == "succeeded", done.error
        assert hv.guests.stats(str(one.uuid)).vcpus == 2
    finally:
        hv.guests.destroy(one.domain_name, str(one.uuid))
        hv.close()
    assert VirtualMachine.objects.get(pk=one.pk).flavor.name == "medium"
    assert environments.team_usage(team)["vcpus"] == 3


@pytest.mark.parametrize(
    "flavor, message",
    [
        ("small", "already"),
        ("nope", "no flavor"),
        (["medium"], "no flavor"),
        ("bigdisk", "disk"),
    ],
)
def test_bad_resizes_are_refused_naming_the_flavor(world, flavor, message):
    """Finding 9.8: a resize that cannot be done is a 400 naming the flavor, and makes nothing."""
    team, user, (one, _) = world
    Flavor.objects.create(name="bigdisk", vcpus=2, memory_mb=1024, disk_gb=50)
    with pytest.raises(ValidationError) as refused:
        resize(team, user, one, flavor=flavor)
    assert set(refused.value.message_dict) == {"flavor"}
    assert message in refused.value.message_dict["flavor"][0]
    assert not Job.objects.exists()


def test_a_resize_of_another_vm_in_a_busy_environment_is_a_conflict(world):
    """Finding 9.8: the environment's lock still answers first (409), reserving nothing."""
    team, user, (one, _) = world
    environments.vm_action(user=user, team=team, vm_id=one.pk, action="start")
    with pytest.raises(Busy):
        resize(team, user, one)
    assert not Job.objects.filter(kind="vm_resize").exists()


def test_a_smaller_flavor_fits_even_on_a_full_host_over_the_quota(world, catalogue):
    """Finding 9.8: shrinking asks for nothing, so neither the quota nor the host refuses it."""
    team, user, (one, _) = world
    Flavor.objects.create(name="tiny", vcpus=1, memory_mb=256, disk_gb=5)
    Quota.objects.filter(team=team).update(vcpus=1, memory_mb=512)  # the team is over already
    Host.objects.filter(pk=catalogue.pk).update(cpus=1, cpu_overcommit=1.0, memory_mb=512)
    assert resize(team, user, one, flavor="tiny").state == "queued"


def test_through_the_api_the_second_resize_is_a_400_naming_the_flavor(world):
    """Finding 9.8: over HTTP, the queued resize's reservation refuses the next one."""
    team, user, (one, two) = world
    Quota.objects.filter(team=team).update(vcpus=3)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")

    def post(vm):
        return client.post(
            f"/api/v1/teams/{team.name}/vms/{vm.pk}/actions/",
            {"action": "resize", "flavor": "medium"},
            format="json",
        )

    assert post(one).status_code == 202
    refused = post(two)
    assert refused.status_code == 400 and set(refused.json()) == {"flavor"}
    assert Job.objects.filter(kind="vm_resize").count() == 1
