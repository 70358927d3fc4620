"""The VM operations on a real guest (qemu:///system, TCG), each through the
product: the service writes the job, a real Celery worker runs it, and the
test checks the real effect in libvirt and inside the guest.

One VM is provisioned, then snapshot, revert, reboot, stop, resize, start and
snapshot deletion run on it in that order (one first boot; the reboot and the
start after the resize boot it again, as they must).
"""

import time

import pytest

from cloud.models import Flavor, Job, VirtualMachine
from cloud.services import environments
from tests.e2e.conftest import BOOT_TIMEOUT_SECONDS, job_report, wait_for_job
from workers.drivers.guest import (
    CommandFailed,
    HostKeyMismatch,
    RemoteError,
    SSHAuthFailed,
    load_private_key,
    wait_for_ssh,
)
from workers.drivers.hypervisor import DomainState
from workers.jobs.adapters import endpoint, hypervisor
from workers.jobs.keys import manager_keypair

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT = 600
MARKER = "/root/written-after-the-snapshot"
RESIZED = {"vcpus": 2, "memory_mb": 1536}


def succeeded(job: Job) -> Job:
    job = wait_for_job(job, JOB_TIMEOUT)
    assert job.state == "succeeded", (job.error, job_report(job))
    return job


def in_guest(vm: VirtualMachine, argv: list[str], timeout: float = BOOT_TIMEOUT_SECONDS) -> str:
    """Run ``argv`` in the guest over a fresh connection, waiting for it to answer."""
    key = load_private_key(manager_keypair().private_openssh)
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(deadline - time.monotonic(), 1)
        try:
            connection = wait_for_ssh(endpoint(vm), key, timeout=remaining)
            try:
                return connection.run(argv, timeout=120).text.strip()
            finally:
                connection.close()
        except (HostKeyMismatch, SSHAuthFailed, CommandFailed):
            raise
        except RemoteError:
            # A guest that is going down drops connections it has just accepted.
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def wait_for_new_boot(vm: VirtualMachine, old_boot_id: str) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        boot_id = in_guest(vm, ["cat", "/proc/sys/kernel/random/boot_id"])
        if boot_id != old_boot_id:
            return boot_id
        time.sleep(2)
    raise AssertionError(f"the guest did not boot again in {BOOT_TIMEOUT_SECONDS} s")


def domain_state(vm: VirtualMachine) -> DomainState:
    with hypervisor(vm) as hv:
        return hv.guests.state(str(vm.uuid))


def snapshot_names(vm: VirtualMachine) -> list[str]:
    with hypervisor(vm) as hv:
        return [s.name for s in hv.snapshots.list(str(vm.uuid))]


def test_every_vm_operation_on_a_real_guest(make_team, worker_factory, strata_host):
    """Finding 9.17: stop, start, reboot, snapshot, revert and resize, each run end to end
    through its job on a real VM, with the real effect checked."""
    worker_factory(f"strata,{strata_host.queue}")
    team, user = make_team("ops", "admin")
    Flavor.objects.create(name="medium", disk_gb=4, **RESIZED)

    def act(action, **params):
        job = environments.vm_action(user=user, team=team, vm_id=vm.pk, action=action, **params)
        succeeded(job)
        vm.refresh_from_db()
        return job

    env = succeeded(
        environments.create_environment(
            user=user, team=team, name="ops", kind="dev", vm_count=1, flavor="small"
        )
    ).environment
    vm = VirtualMachine.objects.get(environment=env)
    try:
        boot_id = in_guest(vm, ["cat", "/proc/sys/kernel/random/boot_id"])

        act("snapshot", snapshot="clean")
        assert snapshot_names(vm) == ["clean"]

        in_guest(vm, ["sh", "-c", f"echo after > {MARKER} && sync"])
        act("revert", snapshot="clean")
        assert vm.state == "running" and domain_state(vm) is DomainState.RUNNING
        # The guest's memory and disk are the snapshot's: the file was never written.
        assert in_guest(vm, ["sh", "-c", f"test -e {MARKER} && echo present || echo absent"]) == (
            "absent"
        )

        act("reboot")
        boot_id = wait_for_new_boot(vm, boot_id)
        assert vm.state == "running" and domain_state(vm) is DomainState.RUNNING

        act("stop")
        assert vm.state == "stopped" and domain_state(vm) is DomainState.SHUTOFF

        act("resize", flavor="medium")
        assert vm.flavor.name == "medium" and domain_state(vm) is DomainState.SHUTOFF

        act("start")
        assert vm.state == "running" and domain_state(vm) is DomainState.RUNNING
        wait_for_new_boot(vm, boot_id)
        assert int(in_guest(vm, ["nproc"])) == RESIZED["vcpus"]
        mem_total_kib = int(in_guest(vm, ["awk", "/^MemTotal:/ {print $2}", "/proc/meminfo"]))
        # The kernel keeps some memory for itself, far less than the 512 MiB added.
        assert 1024 * 1024 < mem_total_kib <= RESIZED["memory_mb"] * 1024

        act("delete_snapshot", snapshot="clean")
        assert snapshot_names(vm) == []
    finally:
        destroyed = wait_for_job(
            environments.destroy_environment(
                user=user, team=team, env_id=env.pk, queue_if_busy=True
            ),
            JOB_TIMEOUT,
        )
    assert destroyed.state == "succeeded", (destroyed.error, job_report(destroyed))
    with hypervisor(vm) as hv:
        assert str(vm.uuid) not in {d.uuid for d in hv.guests.list()}
