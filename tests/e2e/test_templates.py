"""VMs from a booted template, on real TCG guests: one template built by the
operator's path, two VMs restored from it by the product's provisioning job,
each with its own identity; then a corrupted state file, and the next VM
falls back to a cold boot with the template marked stale."""

import os
import time

import pytest

from cloud.models import Flavor, Image, Template, VirtualMachine
from cloud.services import environments
from tests.e2e.conftest import job_report, wait_for_job
from workers.drivers.guest import Endpoint, HostKeyMismatch, SSHConnection, load_private_key
from workers.drivers.hypervisor.templates import SAVE_HEADER
from workers.jobs.keys import manager_keypair
from workers.jobs.templates import build_template

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT = 900
IDENTITY_FILES = {
    "host_key": ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
    "machine_id": ["cat", "/etc/machine-id"],
    "hostname": ["hostname"],
    "boot_id": ["cat", "/proc/sys/kernel/random/boot_id"],
    "engine_id": ["sh", "-c", "until docker info -f '{{.ID}}'; do sleep 0.5; done"],
    "clock": ["date", "+%s"],
}


def provisioned(job):
    job = wait_for_job(job, JOB_TIMEOUT)
    assert job.state == "succeeded", (job.error, job_report(job))
    return job


def provision_log(vm) -> str:
    return "\n".join(
        step.log
        for job in vm.environment.jobs.filter(kind="provision_vm")
        for step in job.steps.all()
    )


def identity_of(vm) -> dict[str, str]:
    """What the guest says it is, over SSH pinned on the VM's own key."""
    connection = SSHConnection(
        Endpoint("127.0.0.1", vm.ssh_port, "root", vm.host_key_public),
        load_private_key(manager_keypair().private_openssh),
    )
    try:
        return {
            name: connection.run(argv, timeout=120).text.strip()
            for name, argv in IDENTITY_FILES.items()
        }
    finally:
        connection.close()


def corrupt_memory_state(path: str) -> None:
    """Overwrite the start of QEMU's migration stream (its magic and first section)."""
    with open(path, "r+b") as state:
        data_len = SAVE_HEADER.unpack(state.read(SAVE_HEADER.size))[2]
        state.seek(SAVE_HEADER.size + data_len)
        state.write(os.urandom(4096))


def test_vms_from_one_template_have_their_own_identity_and_a_bad_state_boots_cold(
    make_team, worker_factory, strata_host, e2e_hypervisor
):
    template = build_template(
        strata_host,
        Image.objects.get(name="debian-12"),
        Flavor.objects.get(name="small"),
        lambda percent, message: None,
    )
    made = []
    try:
        assert template.state == "ready" and template.memory_state_bytes > 100 * 2**20
        worker_factory(f"strata,{strata_host.queue}")
        team, user = make_team("tmpl", "admin")
        job = environments.create_environment(
            user=user, team=team, name="fast", kind="dev", vm_count=2, flavor="small"
        )
        env = provisioned(job).environment
        vms = list(VirtualMachine.objects.filter(environment=env).order_by("name"))
        made.extend(vms)
        assert [vm.template_id for vm in vms] == [template.pk, template.pk]
        assert "template path: template" in provision_log(vms[0])

        identities = [identity_of(vm) for vm in vms]
        for vm, identity in zip(vms, identities, strict=True):
            assert identity["host_key"].split()[:2] == vm.host_key_public.split()[:2]
            assert identity["machine_id"] == vm.uuid.hex
            assert identity["hostname"] == vm.name
            assert abs(int(identity["clock"]) - time.time()) < 30
        for name in ("host_key", "machine_id", "hostname", "engine_id"):
            assert identities[0][name] != identities[1][name], name
        # Read-only in a running kernel: both still carry the template's boot id.
        assert identities[0]["boot_id"] == identities[1]["boot_id"]

        for vm in vms:
            with pytest.raises(HostKeyMismatch):
                SSHConnection(
                    Endpoint("127.0.0.1", vm.ssh_port, "root", template.host_key_public),
                    load_private_key(manager_keypair().private_openssh),
                ).transport()

        corrupt_memory_state(e2e_hypervisor.templates.state_path(template.name))
        job = environments.create_environment(
            user=user, team=team, name="cold", kind="dev", vm_count=1, flavor="small"
        )
        cold_vm = VirtualMachine.objects.get(environment=provisioned(job).environment)
        made.append(cold_vm)
        assert cold_vm.template_id is None
        assert "template marked stale; falling back to the cold path" in provision_log(cold_vm)
        template.refresh_from_db()
        assert template.state == "stale" and "restore" in template.unusable_reason
        assert identity_of(cold_vm)["hostname"] == cold_vm.name
    finally:
        for vm in made:
            e2e_hypervisor.guests.destroy(vm.domain_name, str(vm.uuid))
        e2e_hypervisor.templates.delete(template.name)
    assert not Template.objects.filter(state="building").exists()
