"""Provisioning survives a SIGKILLed worker in every step, and a libvirtd
restart mid-job: the job ends succeeded with exactly one VM, or failed with
everything compensated, and no orphan either way.

The guest gets a short SSH deadline here, so most cases end in a (fast)
failed-and-compensated job after the resumed steps re-ran; one case boots
the guest fully and must succeed with exactly one domain.
"""

import subprocess
import time

import pytest
from django.conf import settings

from cloud.models import Job, PortForward, VirtualMachine
from cloud.services import environments
from workers.hypervisor import Hypervisor

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STEPS = ["reserve", "create disk", "write seed", "define", "start", "wait for ssh", "check docker"]
FAST_REDELIVERY = {"STRATA_VISIBILITY_TIMEOUT": "3", "STRATA_UNACKED_RESTORE_SECONDS": "1"}


@pytest.fixture
def world(strata_host, make_team, tmp_path):
    team, user = make_team("crash", "admin")
    return strata_host, team, user, tmp_path


def start_worker(worker_factory, host, control, **env):
    return worker_factory(
        f"strata,{host.queue}",
        include=["tests.jobs.crash_plans"],
        STRATA_CRASH_CONTROL=str(control),
        **FAST_REDELIVERY,
        **env,
    )


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def leftovers(vm_uuid):
    with Hypervisor("qemu:///system", settings.STRATA_DATA_DIR) as hv:
        domains = [d.name for d in hv.list_strata_domains() if d.uuid == vm_uuid]
        volumes = [v.name for v in hv.list_strata_volumes() if vm_uuid in v.name]
    console = list((settings.STRATA_DATA_DIR / "console").glob(f"*{vm_uuid}*"))
    return domains, volumes, console


def create(team, user, name):
    parent = environments.create_environment(
        user=user, team=team, name=name, kind="dev", vm_count=1, flavor="small"
    )
    return parent, VirtualMachine.objects.get(environment=parent.environment)


def finish_and_check(parent, vm, expect):
    wait_for(lambda: Job.objects.get(pk=parent.pk).is_finished, 600, "the job to end")
    parent.refresh_from_db()
    vm.refresh_from_db()
    domains, volumes, console = leftovers(str(vm.uuid))
    try:
        child = Job.objects.filter(parent=parent).first()
        assert parent.state == expect, (parent.error, child.error if child else None)
        if expect == "succeeded":
            assert vm.state == "running" and len(domains) == 1 and len(volumes) == 2
        else:
            assert vm.state == "error"
            assert not domains and not volumes and not console
            assert not PortForward.objects.filter(vm=vm).exists()
    finally:
        with Hypervisor("qemu:///system", settings.STRATA_DATA_DIR) as hv:
            hv.destroy(vm.domain_name, str(vm.uuid))


# Killed before the guest boots: the resumed steps re-run, then a short SSH
# deadline fails the job, which compensates.  Killed while waiting for the
# guest: the job resumes and the VM comes up, exactly once.
CASES = [(step, "failed") for step in STEPS[:5]] + [(step, "succeeded") for step in STEPS[5:]]


@pytest.mark.parametrize("step, outcome", CASES)
def test_worker_killed_in_each_provisioning_step(world, worker_factory, step, outcome):
    host, team, user, control = world
    deadlines = (
        {"STRATA_SSH_READY_SECONDS": "8", "STRATA_DOCKER_READY_SECONDS": "5"}
        if outcome == "failed"
        else {}
    )
    (control / f"{step}.block").touch()
    worker = start_worker(worker_factory, host, control, **deadlines)
    parent, vm = create(team, user, f"crash-{STEPS.index(step)}")
    wait_for(lambda: (control / f"{step}.entered").exists(), 300, f"the job to enter {step}")
    worker_factory.kill(worker)
    (control / f"{step}.block").unlink()
    start_worker(worker_factory, host, control, **deadlines)
    finish_and_check(parent, vm, expect=outcome)
    steps = parent.children.get().steps.all()
    if outcome == "failed":
        assert [s.state for s in steps if s.name == "wait for ssh"] == ["failed"]
    else:
        assert all(s.state == "done" for s in steps)


def test_libvirtd_restarted_mid_job_the_job_retries_and_completes(world, worker_factory):
    host, team, user, control = world
    (control / "create disk.block").touch()
    start_worker(
        worker_factory,
        host,
        control,
        STRATA_JOB_BACKOFF_SECONDS="2",
        STRATA_SSH_READY_SECONDS="8",
        STRATA_DOCKER_READY_SECONDS="5",
    )
    parent, vm = create(team, user, "libvirtd")
    wait_for(lambda: (control / "create disk.entered").exists(), 300, "create disk")
    subprocess.run(["pkill", "-x", "libvirtd"], check=False)
    wait_for(lambda: subprocess.run(["pgrep", "-x", "libvirtd"]).returncode != 0, 30, "stop")
    (control / "create disk.block").unlink()
    child = parent.children.get()
    # The step cannot reach libvirtd: a transient error, the job waits to retry.
    wait_for(
        lambda: (
            Job.objects.get(pk=child.pk).attempts >= 1
            and "retrying" in Job.objects.get(pk=child.pk).error
        ),
        60,
        "a retry",
    )
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(lambda: Job.objects.get(pk=parent.pk).is_finished, 600, "the job to end")
    child.refresh_from_db()
    assert child.attempts >= 2
    assert [s.state for s in child.steps.filter(name__in=["create disk", "define", "start"])] == [
        "done",
        "done",
        "done",
    ]
    finish_and_check(parent, vm, expect="failed")  # the short SSH deadline, then compensation
