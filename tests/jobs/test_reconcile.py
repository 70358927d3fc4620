"""The reconciler against libvirt's test driver: lost VMs, restarts, orphans."""

import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from cloud.models import Host, Job, Orphan, VirtualMachine, VMSample
from tenants.models import AuditEvent
from tests.foundation.factories import team_world
from tests.hypervisor.conftest import TEST_DATA_DIR, make_spec
from workers.drivers.hypervisor import DomainState, Hypervisor
from workers.jobs.reconcile import reconcile_host, resend_stuck_jobs

pytestmark = [pytest.mark.django_db, pytest.mark.libvirt]


@pytest.fixture
def hv():
    # The test driver keeps its state while a connection is open.
    hypervisor = Hypervisor(
        "test:///default",
        TEST_DATA_DIR,
        virt_type="qemu",
        installation_id=settings.STRATA_INSTALLATION_ID,
    )
    hypervisor.storage.ensure_pools()
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def vm(hv, make_team):
    team, _ = make_team("alpha")
    env = team_world(team, port=20022)
    vm = VirtualMachine.objects.get(environment=env)
    VirtualMachine.objects.filter(pk=vm.pk).update(state="running")
    # The world's job is done: a VM a job still acts on is left alone.
    Job.objects.filter(vm=vm).update(state="succeeded")
    vm.refresh_from_db()
    return vm


def define_for(hv, vm_uuid, name):
    hv.guests.define(make_spec(name=name, uuid=vm_uuid, vm_id="999"))


def test_a_vm_whose_domain_vanished_is_marked_lost_not_deleted(hv, vm):
    counts = reconcile_host(vm.host_id)
    vm.refresh_from_db()
    assert counts["lost"] == 1 and vm.state == "lost" and "vanished" in vm.error
    assert AuditEvent.objects.filter(action="vm.lost", target_id=str(vm.pk)).exists()


def test_a_vm_that_should_run_is_started_again(hv, vm):
    define_for(hv, str(vm.uuid), vm.domain_name)
    assert hv.guests.state(str(vm.uuid)) == DomainState.SHUTOFF
    assert reconcile_host(vm.host_id)["restarted"] == 1
    assert hv.guests.state(str(vm.uuid)) == DomainState.RUNNING
    assert AuditEvent.objects.filter(action="vm.restarted").exists()


def test_orphans_are_noted_then_removed_after_the_grace_period(hv, vm, settings):
    define_for(hv, str(vm.uuid), vm.domain_name)  # not an orphan: it has a record
    stray = str(uuid.uuid4())
    define_for(hv, stray, f"strata-{stray}")
    lone = str(uuid.uuid4())
    hv.host.connection.storagePoolLookupByName(hv.storage.pool_name).createXML(
        f"<volume><name>strata-{lone}.{hv.installation_id}.seed.iso</name>"
        "<capacity>1024</capacity></volume>",
        0,
    )

    settings.STRATA_ORPHAN_GRACE_SECONDS = 3600
    counts = reconcile_host(vm.host_id)
    assert counts["orphans_seen"] == 2 and counts["orphans_removed"] == 0
    assert {o.name for o in Orphan.objects.all()} == {
        f"strata-{stray}",
        f"strata-{lone}.{hv.installation_id}.seed.iso",
    }

    Orphan.objects.update(first_seen_at=timezone.now() - timedelta(hours=2))
    counts = reconcile_host(vm.host_id)
    assert counts["orphans_removed"] == 2
    assert not Orphan.objects.exists()
    assert [d.uuid for d in hv.guests.list()] == [str(vm.uuid)]
    assert not [v for v in hv.storage.list_volumes() if lone in v.name]
    assert AuditEvent.objects.filter(action="orphan.removed").count() == 2


def test_a_found_again_vm_leaves_lost(hv, vm):
    reconcile_host(vm.host_id)
    define_for(hv, str(vm.uuid), vm.domain_name)
    reconcile_host(vm.host_id)
    vm.refresh_from_db()
    assert vm.state == "stopped"


def test_running_vms_are_sampled_and_old_samples_pruned(hv, vm):
    define_for(hv, str(vm.uuid), vm.domain_name)
    hv.guests.start(str(vm.uuid))
    VMSample.objects.all().delete()  # the factory's sample
    stale = VMSample.objects.create(
        vm=vm, at=timezone.now() - timedelta(hours=25), cpu_percent=1, cpu_time_ns=1, memory_mib=1
    )

    assert reconcile_host(vm.host_id)["samples"] == 1
    assert not VMSample.objects.filter(pk=stale.pk).exists()
    first = VMSample.objects.get(vm=vm)
    stats = hv.guests.stats(str(vm.uuid))
    assert first.cpu_percent == 0 and first.cpu_time_ns > 0
    assert first.memory_mib == (stats.rss_mib if stats.rss_mib is not None else stats.memory_mib)
    assert first.memory_mib > 0

    # Pretend the first pass was 10 s ago; the test driver's CPU time keeps growing.
    VMSample.objects.filter(pk=first.pk).update(at=first.at - timedelta(seconds=10))
    assert reconcile_host(vm.host_id)["samples"] == 1
    second = VMSample.objects.filter(vm=vm).latest("at")
    assert second.cpu_time_ns >= first.cpu_time_ns
    assert 0 <= second.cpu_percent <= 100
    assert VMSample.objects.filter(vm=vm).count() == 2


def test_cpu_percent_is_the_cpu_time_delta_over_wall_time_and_vcpus():
    from workers.jobs.reconcile import cpu_percent

    now = timezone.now()
    before = VMSample(at=now - timedelta(seconds=10), cpu_time_ns=5 * 10**9)
    assert cpu_percent(None, 10**9, 2, now) == 0
    assert cpu_percent(before, 15 * 10**9, 2, now) == 50.0  # 10 s of CPU over 2 vCPUs x 10 s
    assert cpu_percent(before, 10**9, 2, now) == 0  # counter reset: the domain restarted
    assert cpu_percent(before, 10**12, 1, now) == 100.0


def test_a_stopped_vm_is_not_sampled(hv, vm):
    define_for(hv, str(vm.uuid), vm.domain_name)  # shut off; the reconciler restarts it
    VMSample.objects.all().delete()
    assert reconcile_host(vm.host_id)["samples"] == 0


def test_stuck_jobs_are_sent_again(make_team, django_capture_on_commit_callbacks, settings):
    team, _ = make_team("alpha")
    stuck = Job.objects.create(team=team, kind="provision_vm", state="running")
    fresh = Job.objects.create(team=team, kind="provision_vm", state="running")
    Job.objects.filter(pk=stuck.pk).update(updated_at=timezone.now() - timedelta(hours=2))
    with django_capture_on_commit_callbacks() as callbacks:
        assert resend_stuck_jobs() == 1
    assert len(callbacks) == 1
    assert Job.objects.get(pk=stuck.pk).updated_at > Job.objects.get(pk=fresh.pk).created_at


def test_unknown_host_raises(hv):
    with pytest.raises(Host.DoesNotExist):
        reconcile_host(999999)
