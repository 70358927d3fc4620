"""Provisioning survives a SIGKILLed worker at every point where a step has
made its side effect but not yet recorded it, and a libvirtd restart mid-job.

The worker runs the real ``provision_vm`` plan with gates (tests/jobs/
crash_plans.py) after each step's side effect and inside the slow remote
calls; the test SIGKILLs the worker there and starts another, which takes the
job over once its lease has expired and Redis has redelivered it.  Either the
job succeeds with exactly one domain, disk, seed and SSH forward, or it is
cancelled or failed with all of them compensated away: never two of anything.

The SSH deadline is the product's, long enough for a TCG boot.  The cases
that kill before the guest starts stop the resumed job with a cancel once it
is past the killed step (a boot would add nothing there); the points of the
boot are killed one after another in a single job, over one real boot.
"""

import subprocess
import time
from pathlib import Path

import pytest

from cloud.models import Container, Job, JobStep, PortForward, VirtualMachine
from cloud.services import environments
from cloud.services.job_control import cancel_job
from workers.drivers.hypervisor import VolumeKind

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STEPS = [
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
BEFORE_BOOT = STEPS[: STEPS.index("start")]
# Redelivery within seconds of a kill: Redis restores the dead worker's message,
# and the job's lease (not renewed by the dead run) has expired by then.
FAST_REDELIVERY = {
    "STRATA_VISIBILITY_TIMEOUT": "3",
    "STRATA_UNACKED_RESTORE_SECONDS": "1",
    "STRATA_JOB_LEASE_SECONDS": "3",
    "STRATA_JOB_BACKOFF_SECONDS": "1",
}
# The points of the boot, in the order one job passes them.
BOOT_POINTS = [
    "after start",
    "during wait_for_ssh",  # killed while the step polls a guest that is not up yet
    "in wait_for_ssh",
    "after wait for ssh",
    "in docker info",
    "after check docker",
]


class Control:
    """The gates of tests/jobs/crash_plans.py, in this test's directory."""

    def __init__(self, directory: Path):
        self.directory = directory

    def block(self, *points: str) -> None:
        for point in points:
            (self.directory / f"{point}.block").touch()

    def release(self, point: str) -> None:
        (self.directory / f"{point}.block").unlink()

    def entered(self, point: str) -> bool:
        return (self.directory / f"{point}.entered").exists()


@pytest.fixture
def world(strata_host, make_team, tmp_path):
    team, user = make_team("crash", "admin")
    return strata_host, team, user, Control(tmp_path)


def start_worker(worker_factory, host, control, **env):
    return worker_factory(
        f"strata,{host.queue}",
        include=["tests.jobs.crash_plans"],
        STRATA_CRASH_CONTROL=str(control.directory),
        **{**FAST_REDELIVERY, **env},
    )


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def create(team, user, name):
    parent = environments.create_environment(
        user=user, team=team, name=name, kind="dev", vm_count=1, flavor="small"
    )
    vm = VirtualMachine.objects.get(environment=parent.environment)
    return parent, parent.children.get(), vm


def inventory(hypervisor, vm) -> dict[str, int]:
    """How many of each thing provisioning makes exist for ``vm``, in libvirt and the database."""
    volumes = [v.kind for v in hypervisor.storage.list_volumes() if v.owner == vm.domain_name]
    return {
        "domain": sum(d.uuid == str(vm.uuid) for d in hypervisor.guests.list()),
        "disk": volumes.count(VolumeKind.DISK),
        "seed": volumes.count(VolumeKind.SEED),
        "forward": PortForward.objects.filter(vm=vm).count(),
        "container": Container.objects.filter(vm=vm).count(),
        "console log": int(Path(hypervisor.storage.console_log_path(vm.domain_name)).exists()),
    }


def at_most_one_of_each(hypervisor, vm, where):
    made = inventory(hypervisor, vm)
    assert all(count <= 1 for count in made.values()), (where, made)
    return made


def step_row(job, name) -> JobStep:
    return JobStep.objects.get(job=job, name=name)


def wait_finished(job):
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, 600, f"job {job.kind} to end")
    return Job.objects.get(pk=job.pk)


def assert_compensated(hypervisor, parent, vm):
    parent = wait_finished(parent)
    vm.refresh_from_db()
    assert parent.state == "cancelled", parent.error
    assert vm.state == "error", vm.state
    nothing = dict.fromkeys(inventory(hypervisor, vm), 0)
    assert inventory(hypervisor, vm) == nothing


def assert_one_running_vm(hypervisor, parent, vm):
    parent = wait_finished(parent)
    vm.refresh_from_db()
    child = parent.children.get()
    assert parent.state == "succeeded", (parent.error, child.error)
    assert vm.state == "running" and vm.ssh_port
    assert inventory(hypervisor, vm) == {
        "domain": 1,
        "disk": 1,
        "seed": 1,
        "forward": 1,
        "container": 0,
        "console log": 1,
    }
    assert [s.state for s in child.steps.exclude(name="compensate")] == ["done"] * len(STEPS)


@pytest.mark.parametrize("step", BEFORE_BOOT)
def test_worker_killed_after_each_step_before_the_boot(
    world, worker_factory, e2e_hypervisor, step
):
    """Finding 16: a worker SIGKILLed after a step's side effect, before its DONE
    write, is resumed by another: the step runs again and makes nothing twice."""
    host, team, user, control = world
    control.block(f"after {step}", "before start")
    worker = start_worker(worker_factory, host, control)
    parent, child, vm = create(team, user, f"crash-{STEPS.index(step)}")
    try:
        wait_for(lambda: control.entered(f"after {step}"), 300, f"the end of {step}")
        assert step_row(child, step).state == "running"  # done in the world, not recorded
        worker_factory.kill(worker)
        at_most_one_of_each(e2e_hypervisor, vm, f"killed after {step}")
        control.release(f"after {step}")
        start_worker(worker_factory, host, control)
        wait_for(lambda: control.entered("before start"), 300, "the resumed job to reach start")
        made = at_most_one_of_each(e2e_hypervisor, vm, f"resumed past {step}")
        made.pop("console log")  # QEMU writes it once the domain starts
        assert made == {"domain": 1, "disk": 1, "seed": 1, "forward": 1, "container": 0}
        rerun = step_row(child, step)
        assert rerun.state == "done"
        # Its log has one line per run: the killed one and the resumed one.
        assert len(rerun.log.splitlines()) == 2, rerun.log
        cancel_job(user=user, team=team, job_id=parent.pk)
    finally:
        control.release("before start")
    assert_compensated(e2e_hypervisor, parent, vm)


def kill_at(point, control, worker, worker_factory, child):
    """Wait until the job is at ``point``, then SIGKILL the worker."""
    if point == "during wait_for_ssh":
        step = "wait for ssh"
        wait_for(lambda: step_row(child, step).state == "running", 300, "ssh polling")
        time.sleep(5)  # well inside the polling: the guest needs a minute to boot
        assert step_row(child, step).state == "running"
    else:
        wait_for(lambda: control.entered(point), 600, point)
    worker_factory.kill(worker)


def test_worker_killed_at_each_point_of_the_boot(world, worker_factory, e2e_hypervisor):
    """Finding 16: SIGKILLs inside the slow remote calls and after the boot's
    steps, one after another in one job: each resumed run finishes what the
    dead one left, and the VM comes up exactly once."""
    host, team, user, control = world
    gates = [p for p in BOOT_POINTS if not p.startswith("during")]
    control.block(*gates)
    worker = start_worker(worker_factory, host, control)
    parent, child, vm = create(team, user, "crash-boot")
    try:
        for point in BOOT_POINTS:
            kill_at(point, control, worker, worker_factory, child)
            at_most_one_of_each(e2e_hypervisor, vm, f"killed {point}")
            if point in gates:
                control.release(point)
            worker = start_worker(worker_factory, host, control)
        assert_one_running_vm(e2e_hypervisor, parent, vm)
    finally:
        for point in gates:
            (control.directory / f"{point}.block").unlink(missing_ok=True)
        e2e_hypervisor.guests.destroy(vm.domain_name, str(vm.uuid))


def libvirtd_running() -> bool:
    return subprocess.run(["pgrep", "-x", "libvirtd"], check=False).returncode == 0


def test_libvirtd_restarted_mid_job_the_job_retries_and_completes(
    world, worker_factory, e2e_hypervisor
):
    """Finding 18: libvirtd is started again whatever happens; the job retries the
    step that could not reach it and goes on, with nothing made twice."""
    host, team, user, control = world
    control.block("before create disk", "before start")
    start_worker(worker_factory, host, control)
    parent, child, vm = create(team, user, "libvirtd")
    try:
        wait_for(lambda: control.entered("before create disk"), 300, "create disk")
        subprocess.run(["pkill", "-x", "libvirtd"], check=False)
        wait_for(lambda: not libvirtd_running(), 30, "libvirtd to stop")
        control.release("before create disk")
        # The step cannot reach libvirtd: a transient error, the job waits to retry.
        wait_for(
            lambda: "retrying" in Job.objects.get(pk=child.pk).error, 120, "a retry to be planned"
        )
    finally:
        if not libvirtd_running():
            subprocess.run(["libvirtd", "-d"], check=True)
        # The restart dropped the session's connection, which a client notices only
        # at its next call: close it, and the driver opens a new one when next used.
        e2e_hypervisor.close()
    try:
        wait_for(lambda: control.entered("before start"), 300, "the retried job to reach start")
        child.refresh_from_db()
        assert child.attempts >= 2
        assert [step_row(child, s).state for s in ("create disk", "write seed", "define")] == [
            "done"
        ] * 3
        at_most_one_of_each(e2e_hypervisor, vm, "after the retry")
        cancel_job(user=user, team=team, job_id=parent.pk)
    finally:
        control.release("before start")
    assert_compensated(e2e_hypervisor, parent, vm)
