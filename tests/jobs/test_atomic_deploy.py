"""Deployments over two VMs are all or nothing, run by a real worker: each
"VM" is a real sshd in front of its own dockerd (the second one's dockerd
runs in a network namespace this test makes, so its engine shares nothing
with the host's)."""

import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import docker
import pytest
import requests

from bench.harness.guest_servers import KeyPair, Sshd, new_ed25519_key, wait_for
from cloud.models import (
    Container,
    Deployment,
    DeploymentTarget,
    Environment,
    Job,
    Service,
    VirtualMachine,
)
from cloud.services import deployments
from tenants.models import Membership
from workers import tasks
from workers.drivers.guest import list_containers
from workers.jobs.keys import manager_keypair

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

Outcome = DeploymentTarget.Outcome
HEALTH_SECONDS = 6


class NamespacedDockerd:
    """A dockerd of its own, in a network namespace of its own (so its bridge
    setup cannot touch the host's docker0), answering on a unix socket."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="/tmp/h3d-")  # short: socket paths are limited
        self.netns = f"strata-h3-{uuid.uuid4().hex[:8]}"
        self.socket = f"{self.root}/docker.sock"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        # nsenter, not "ip netns exec": that remounts /sys, hiding the cgroups dockerd needs.
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", "dockerd", "-H", f"unix://{self.socket}"]
        argv += ["--data-root", f"{self.root}/data", "--exec-root", f"{self.root}/exec"]
        argv += ["--pidfile", f"{self.root}/docker.pid", "--bridge", "none"]
        argv += ["--iptables=false", "--ip-masq=false", "--containerd-namespace", self.netns]
        argv += ["--containerd-plugins-namespace", f"{self.netns}-plugins"]
        self.log = open(f"{self.root}/dockerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        self.client = docker.DockerClient(base_url=f"unix://{self.socket}", version="1.41")
        try:
            wait_for(self._answers, 60, "the second dockerd")
        except Exception:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"dockerd exited with {self.process.returncode}")
        try:
            return self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.ConnectionError):
            return False  # its socket is not there yet

    def stop(self):
        if self.process.poll() is None:
            for container in self.client.containers.list(all=True):
                container.remove(force=True)
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.client.close()
        self.log.close()
        subprocess.run(["ip", "netns", "delete", self.netns], check=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def two_vms(sshd_guest, tmp_path, worker_factory):
    """The sshd_guest VM plus a second VM of the same environment with its own engine,
    and a worker on their host's queue whose rollouts may wait HEALTH_SECONDS for health."""
    vm1, host_engine, image = sshd_guest
    second = NamespacedDockerd()
    sshd = None
    try:
        manager = manager_keypair()
        host_key = new_ed25519_key()
        sshd = Sshd(
            tmp_path / "sshd2",
            host_key,
            KeyPair(manager.private_openssh, manager.public_openssh),
            docker_host=f"unix://{second.socket}",
        )
        vm2 = VirtualMachine.objects.create(
            environment=vm1.environment,
            name="vm2",
            host=vm1.host,
            flavor=vm1.flavor,
            image=vm1.image,
            state="running",
            ssh_port=sshd.port,
            host_key_public=host_key.public_line,
        )
        worker_factory(vm1.host.queue, STRATA_ROLLOUT_HEALTH_SECONDS=str(HEALTH_SECONDS))
        tasks.ping.apply_async(args=["up"], queue=vm1.host.queue).get(timeout=90)
        yield vm1, vm2, host_engine, second.client, image
    finally:
        if sshd is not None:
            sshd.stop()
        second.stop()
        for volume in host_engine.volumes.list(filters={"name": "strata-"}):
            if volume.name.endswith("-flag"):
                volume.remove(force=True)


def deploy(vm, image, **spec):
    team = vm.environment.team
    user = Membership.objects.get(team=team).user
    return deployments.deploy(
        user=user,
        team=team,
        env_id=vm.environment_id,
        service_name="web",
        image=image,
        replicas=2,
        **spec,
    )


def settled(job, timeout=240) -> Deployment:
    """The job's deployment once it is no longer pending or rolling out."""
    deployment = Deployment.objects.get(pk=job.params["deployment"])

    def done():
        deployment.refresh_from_db()
        return deployment.state not in ("pending", "rolling_out")

    wait_for(done, timeout, "the deployment to settle", interval=0.5)
    return deployment


def serving(engine, service_id) -> list[tuple[str, str]]:
    return sorted(
        (c.release_id, c.state)
        for c in list_containers(engine, service_id=str(service_id))
        if c.role == "serving"
    )


# v2 is healthy only where its named volume holds a flag file: on the first
# VM's engine the test writes it, on the second engine the volume is empty.
FLAGGED = {
    "volumes": ["flag:/flag"],
    "healthcheck": {"type": "command", "command": ["cat", "/flag/ok"], "interval": 1},
}


def write_flag(engine, service_id, image):
    engine.containers.run(
        image,
        ["sh", "-c", "echo ok > /flag/ok"],
        volumes={f"strata-{service_id}-flag": {"bind": "/flag", "mode": "rw"}},
        remove=True,
    )


def test_a_failed_vm_puts_every_vm_back_on_the_previous_release(two_vms):
    """Finding 11 (and 5 through the worker): the second VM's health check never
    passes within the rollout's health budget; the first VM, where the new release
    already served, goes back to the previous release, and each VM's outcome is typed."""
    vm1, vm2, host_engine, second_engine, image = two_vms
    first = settled(deploy(vm1, image))
    assert first.state == "succeeded", first.reason
    service_id, before = first.release.service_id, f"v{first.release.version}"
    write_flag(host_engine, service_id, image)

    started = time.monotonic()
    failing = deploy(vm1, image, **FLAGGED)
    deployment = settled(failing)

    assert deployment.state == "rolled_back", deployment.reason
    outcomes = {t.vm.name: t for t in deployment.targets.select_related("vm")}
    assert outcomes["vm1"].outcome == Outcome.REVERTED
    assert outcomes["vm1"].detail == f"back to {before}"
    assert outcomes["vm2"].outcome == Outcome.ROLLED_BACK
    assert f"within the rollout's {HEALTH_SECONDS} s health budget" in outcomes["vm2"].detail
    assert "vm1: reverted" in deployment.reason and "vm2: rolled_back" in deployment.reason
    # Each VM's health wait is bounded: vm2's by the budget, not by 30 retries x 1 s.
    assert time.monotonic() - started < 90

    failing.refresh_from_db()
    revert = Job.objects.get(kind="deploy_revert", params__deployment=deployment.pk)
    assert failing.state == "failed" and f"job {revert.pk}" in failing.error
    assert revert.state == "succeeded"
    assert serving(host_engine, service_id) == [(before, "running")]
    assert serving(second_engine, service_id) == [(before, "running")]
    assert set(Container.objects.values_list("vm__name", "release__version")) == {
        ("vm1", first.release.version),
        ("vm2", first.release.version),
    }
    assert Environment.objects.get(pk=vm1.environment_id).lock_job is None


def test_a_failed_first_release_leaves_no_vm_running_it(two_vms):
    """Finding 11: with nothing before it, going back means the new release is removed
    from the VMs it reached."""
    vm1, vm2, host_engine, second_engine, image = two_vms
    # The service exists (with no successful release) before the deploy, so its
    # volume's flag is in place before any health check.
    service_id = Service.objects.get(environment=vm1.environment, name="web").pk
    write_flag(host_engine, service_id, image)
    deployment = settled(deploy(vm1, image, **FLAGGED))
    assert deployment.state == "rolled_back", deployment.reason
    outcomes = dict(deployment.targets.values_list("vm__name", "outcome"))
    assert outcomes == {"vm1": Outcome.REVERTED, "vm2": Outcome.ROLLED_BACK}
    assert serving(host_engine, service_id) == []
    assert serving(second_engine, service_id) == []
    assert not Container.objects.exists()
