"""VM operations against the reconciler, on libvirt's test driver: whatever
interleaves with a stop or a revert, the database ends up saying what libvirt
runs."""

import threading

import pytest
import redis
from django.conf import settings
from django.db import connection

from cloud.models import Environment, Job, VirtualMachine
from cloud.services import environments
from tests.foundation.factories import catalogue
from tests.hypervisor.conftest import TEST_DATA_DIR, make_spec
from workers.drivers.hypervisor import DomainState, Guests, Hypervisor, HypervisorError, Snapshots
from workers.jobs import engine as jobs
from workers.jobs.reconcile import reconcile_host

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]

RECORDED = {DomainState.RUNNING: "running", DomainState.SHUTOFF: "stopped"}


@pytest.fixture
def hv():
    # The test driver keeps its state while a connection is open.
    hypervisor = Hypervisor("test:///default", TEST_DATA_DIR, virt_type="qemu")
    hypervisor.storage.ensure_pools()
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def running_vm(hv, make_team):
    """A VM recorded as running whose domain runs on the test driver."""
    team, user = make_team("alpha", "admin")
    host, flavor, image = catalogue()
    env = Environment.objects.create(team=team, name="dev", kind="dev")
    vm = VirtualMachine.objects.create(
        environment=env, name="vm1", host=host, flavor=flavor, image=image, state="running"
    )
    hv.guests.define(make_spec(name=vm.domain_name, uuid=str(vm.uuid), vm_id=str(vm.pk)))
    hv.guests.start(str(vm.uuid))
    yield team, user, vm
    hv.guests.destroy(vm.domain_name, str(vm.uuid))
    # The jobs were also sent to the host's queue, which no worker serves here.
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(host.queue)


def reconcile_in_another_thread(host_id: int) -> dict:
    """One reconcile pass on its own database connection, as beat's task runs it."""
    result = {}

    def run():
        try:
            result.update(reconcile_host(host_id))
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert result, "the reconcile pass did not finish"
    return result


def reconcile_around(monkeypatch, driver_class: type, method: str, host_id: int) -> list[dict]:
    """Run a reconcile pass just before and just after ``driver_class.method``."""
    real, passes = getattr(driver_class, method), []

    def wrapped(self, *args, **kwargs):
        passes.append(reconcile_in_another_thread(host_id))
        outcome = real(self, *args, **kwargs)
        passes.append(reconcile_in_another_thread(host_id))
        return outcome

    monkeypatch.setattr(driver_class, method, wrapped)
    return passes


def act(team, user, vm, action, **params) -> Job:
    job = environments.vm_action(user=user, team=team, vm_id=vm.pk, action=action, **params)
    jobs.run(str(job.id))  # the job engine, inline
    job.refresh_from_db()
    return job


def assert_record_matches_libvirt(hv, vm, expected: str) -> None:
    vm.refresh_from_db()
    assert (vm.state, RECORDED.get(hv.guests.state(str(vm.uuid)))) == (expected, expected)


def test_a_reconcile_pass_during_a_stop_does_not_restart_the_vm(hv, running_vm, monkeypatch):
    """Finding 9.7: a reconcile pass between the stop's state write and its shutdown,
    or right after the shutdown, must not restart the VM behind the database's back."""
    team, user, vm = running_vm
    passes = reconcile_around(monkeypatch, Guests, "shutdown", vm.host_id)

    job = act(team, user, vm, "stop")

    assert job.state == "succeeded", job.error
    assert [p["restarted"] for p in passes] == [0, 0]
    assert [p["busy"] for p in passes] == [1, 1]
    assert_record_matches_libvirt(hv, vm, "stopped")
    # Once the job is over the VM is reconciled again, and a stopped VM stays stopped.
    after = reconcile_host(vm.host_id)
    assert after["busy"] == 0 and after["restarted"] == 0
    assert_record_matches_libvirt(hv, vm, "stopped")


def test_the_stop_writes_stopping_before_it_shuts_down(hv, running_vm, monkeypatch):
    """Finding 9.7: while the guest shuts down its record says stopping, not running."""
    team, user, vm = running_vm
    seen = []
    real = Guests.shutdown

    def shutdown(self, uuid, timeout=60.0):
        seen.append(VirtualMachine.objects.get(pk=vm.pk).state)
        return real(self, uuid, timeout)

    monkeypatch.setattr(Guests, "shutdown", shutdown)
    assert act(team, user, vm, "stop").state == "succeeded"
    assert seen == ["stopping"]


def test_a_reconcile_pass_during_a_revert_leaves_the_snapshots_state(hv, running_vm, monkeypatch):
    """Finding 9.7: reverting a running VM to a snapshot of it stopped leaves it stopped,
    recorded as stopped, even with a reconcile pass in the middle."""
    team, user, vm = running_vm
    hv.guests.force_off(str(vm.uuid))
    hv.snapshots.create(str(vm.uuid), "cold")
    hv.guests.start(str(vm.uuid))
    passes = reconcile_around(monkeypatch, Snapshots, "revert", vm.host_id)

    job = act(team, user, vm, "revert", snapshot="cold")

    assert job.state == "succeeded", job.error
    assert [p["restarted"] for p in passes] == [0, 0]
    assert_record_matches_libvirt(hv, vm, "stopped")
    assert reconcile_host(vm.host_id)["restarted"] == 0
    assert_record_matches_libvirt(hv, vm, "stopped")


def test_reverting_a_stopped_vm_to_a_running_snapshot_records_running(hv, running_vm):
    """Finding 9.7: the revert records the state the snapshot brought back."""
    team, user, vm = running_vm
    hv.snapshots.create(str(vm.uuid), "warm")
    hv.guests.force_off(str(vm.uuid))
    VirtualMachine.objects.filter(pk=vm.pk).update(state="stopped")

    assert act(team, user, vm, "revert", snapshot="warm").state == "succeeded"
    assert_record_matches_libvirt(hv, vm, "running")


def test_a_stop_that_fails_after_the_shutdown_records_what_libvirt_has(
    hv, running_vm, monkeypatch
):
    """Finding 9.7: a stop whose step fails after the guest went off leaves the record
    stopped (not running, which the reconciler would undo, nor stuck in stopping)."""
    team, user, vm = running_vm
    real = Guests.shutdown

    def shutdown_then_fail(self, uuid, timeout=60.0):
        real(self, uuid, timeout)
        raise HypervisorError("the connection broke after the shutdown")

    monkeypatch.setattr(Guests, "shutdown", shutdown_then_fail)
    job = act(team, user, vm, "stop")

    assert job.state == "failed" and "connection broke" in job.error
    assert_record_matches_libvirt(hv, vm, "stopped")
    assert reconcile_host(vm.host_id)["restarted"] == 0


def test_a_stop_that_fails_before_the_shutdown_leaves_the_vm_running(
    hv, running_vm, monkeypatch
):
    """Finding 9.7: a refused shutdown does not leave the record stuck in stopping."""
    team, user, vm = running_vm

    def refuse(self, uuid, timeout=60.0):
        raise HypervisorError("the guest refused")

    monkeypatch.setattr(Guests, "shutdown", refuse)
    job = act(team, user, vm, "stop")

    assert job.state == "failed"
    assert_record_matches_libvirt(hv, vm, "running")


def test_a_stopping_vm_left_without_its_job_is_settled_by_the_reconciler(hv, running_vm):
    """Finding 9.7: a stop that died without recording its outcome is not stuck forever."""
    _, _, vm = running_vm
    hv.guests.force_off(str(vm.uuid))
    VirtualMachine.objects.filter(pk=vm.pk).update(state="stopping")

    counts = reconcile_host(vm.host_id)

    assert counts["busy"] == 0 and counts["restarted"] == 0
    assert_record_matches_libvirt(hv, vm, "stopped")


def test_a_vm_whose_environment_a_job_holds_is_left_alone(hv, running_vm):
    """Finding 9.7: the reconciler skips VMs whose environment lock an unfinished job holds."""
    team, _, vm = running_vm
    # Looks like a crash, but a job is working on the environment.
    hv.guests.force_off(str(vm.uuid))
    holder = Job.objects.create(team=team, kind="deploy", environment=vm.environment)
    Environment.objects.filter(pk=vm.environment_id).update(lock_job=holder)

    counts = reconcile_host(vm.host_id)
    assert counts["busy"] == 1 and counts["restarted"] == 0
    assert hv.guests.state(str(vm.uuid)) is DomainState.SHUTOFF

    Job.objects.filter(pk=holder.pk).update(state="succeeded")
    counts = reconcile_host(vm.host_id)
    assert counts["busy"] == 0 and counts["restarted"] == 1
    assert_record_matches_libvirt(hv, vm, "running")
