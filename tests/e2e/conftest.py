"""The e2e tier: real TCG guests under qemu:///system, made by the product.

The tier is an installation of its own next to any `make run` on the same
machine: its own data directory, storage pools, installation id and
encryption key (in the test process and in every worker it starts), removed
with everything in them at the end; its Redis database comes from the
environment (scripts/test.sh gives the suite its own).  Hosts are registered
under a fresh name per test, so their queues are new too.

The session's one shared guest (``booted_vm``) is provisioned by the product's
own ``provision_vm`` plan, run by a real worker; the tests that use it run
last, and test_vm_lifecycle.py (which destroys it) last of all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bench.harness.storage_cleanup import remove_domains_in, remove_pools
from workers.drivers.guest import Endpoint, SSHConnection, load_private_key
from workers.drivers.hypervisor import Hypervisor, SshKeyPair

LIBVIRT_URI = "qemu:///system"
# Where workers.drivers.images caches the built Debian image: a content-addressed cache
# that is only read here, shared with other runs.
IMAGE_DATA_DIR = Path(os.environ.get("STRATA_E2E_IMAGE_DATA_DIR", "/var/lib/strata"))
# Outside /root and pytest's 0700 tmp dirs: QEMU runs as libvirt-qemu and must
# reach the volumes.
TEST_ROOT = Path("/var/lib/strata-test")
BOOT_TIMEOUT_SECONDS = float(os.environ.get("STRATA_E2E_BOOT_TIMEOUT", "600"))
LIFECYCLE_MODULE = "test_vm_lifecycle.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Stable sort: the tests sharing the session's guest go last (its records
    # stay in the database meanwhile), and those that destroy it last of all.
    def rank(item: pytest.Item) -> int:
        if item.path.name == LIFECYCLE_MODULE:
            return 2
        return int("booted_vm" in getattr(item, "fixturenames", ()))

    items.sort(key=rank)


@dataclass(frozen=True)
class E2eInstall:
    """What makes this test run an installation of its own."""

    run_id: str
    data_dir: Path
    pool_name: str
    installation_id: str
    encryption_key: str

    @property
    def settings(self) -> dict:
        return {
            "STRATA_DATA_DIR": self.data_dir,
            "STRATA_STORAGE_POOL": self.pool_name,
            "STRATA_INSTALLATION_ID": self.installation_id,
            "STRATA_ENCRYPTION_KEYS": self.encryption_key,
        }

    @property
    def worker_env(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.settings.items()}

    def hypervisor(self) -> Hypervisor:
        return Hypervisor(
            LIBVIRT_URI,
            self.data_dir,
            pool_name=self.pool_name,
            virt_type="qemu",
            installation_id=self.installation_id,
        )


@pytest.fixture(scope="session")
def e2e_install():
    """This run's installation; at the end its domains, pools and files are removed."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    install = E2eInstall(
        run_id=run_id,
        data_dir=TEST_ROOT / f"e2e-{run_id}",
        pool_name=f"strata-e2e-{run_id}",
        installation_id=f"e2e-{run_id}",
        encryption_key=Fernet.generate_key().decode(),
    )
    install.data_dir.mkdir(mode=0o755)
    try:
        yield install
    finally:
        with install.hypervisor() as hypervisor:
            remove_domains_in(hypervisor)
            remove_pools(hypervisor)
        shutil.rmtree(install.data_dir, ignore_errors=True)


@contextlib.contextmanager
def installation_settings(install: E2eInstall):
    """The test process acts as ``install`` (the same settings its workers get)."""
    from django.test import override_settings

    from cloud.models import crypto
    from workers.jobs import keys

    crypto._fernet.cache_clear()
    keys.manager_keypair.cache_clear()
    try:
        with override_settings(**install.settings):
            yield
    finally:
        crypto._fernet.cache_clear()
        keys.manager_keypair.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def e2e_settings(e2e_install):
    with installation_settings(e2e_install):
        yield e2e_install


@pytest.fixture
def worker_factory(worker_factory, e2e_install):
    """Workers of this run's installation (data dir, pools, id, encryption key)."""

    def start(queue: str, include=(), **env):
        return worker_factory(queue, include, **{**e2e_install.worker_env, **env})

    start.kill = worker_factory.kill
    return start


@pytest.fixture(scope="session")
def guest_image():
    from workers.drivers.images import build_debian_image

    return build_debian_image(IMAGE_DATA_DIR)


@pytest.fixture(scope="session")
def e2e_hypervisor(e2e_install):
    with e2e_install.hypervisor() as hypervisor:
        hypervisor.storage.ensure_pools()
        yield hypervisor


@dataclass
class BootedVm:
    hypervisor: Hypervisor
    vm_id: int
    name: str  # the domain's name, which its volumes and console log carry
    hostname: str
    uuid: str
    ssh_port: int
    host_key: SshKeyPair
    client_key: SshKeyPair
    boot_to_ssh_seconds: float

    def endpoint(self, host_key: str | None = None) -> Endpoint:
        return Endpoint(
            "127.0.0.1", self.ssh_port, "root", host_key or self.host_key.public_openssh
        )

    def connect(self, host_key: str | None = None) -> SSHConnection:
        """A fresh connection (a reverted snapshot breaks older ones)."""
        return SSHConnection(
            self.endpoint(host_key), load_private_key(self.client_key.private_openssh)
        )

    def run(self, argv: list[str], timeout: float = 120.0) -> str:
        """Run a command in the guest; CommandFailed fails the test on a non-zero exit."""
        connection = self.connect()
        try:
            return connection.run(argv, timeout=timeout).text
        finally:
            connection.close()


def register_world(guest_image, name: str):
    """This machine as a host (a new name, so a new queue), the image and a flavor."""
    from cloud.models import Flavor, Image
    from cloud.services.hosts import register_host
    from cloud.services.images import built_image_fields

    Image.objects.create(name="debian-12", **built_image_fields(guest_image))
    Flavor.objects.create(name="small", vcpus=1, memory_mb=1024, disk_gb=4)
    host, _ = register_host(name, LIBVIRT_URI, virt_type="qemu")
    return host


def wait_for_job(job, timeout: float):
    """The job once finished (re-read from the database); fails after ``timeout``."""
    from cloud.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job.pk)
        if job.is_finished:
            return job
        time.sleep(1)
    raise AssertionError(f"job {job.pk} ({job.kind}) not finished after {timeout} s")


def job_report(job) -> list:
    """Each step of the job and its children, with the end of its log."""
    from cloud.models import Job

    rows = [job, *Job.objects.filter(parent=job)]
    return [(j.kind, s.name, s.state, s.log[-400:]) for j in rows for s in j.steps.all()]


def provision_shared_guest(install: E2eInstall, guest_image, hypervisor) -> BootedVm:
    """One VM created through the service and provisioned by a real worker."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from bench.harness.celery_workers import database_url, kill_worker, start_worker
    from cloud.models import VirtualMachine
    from cloud.services import environments
    from tenants.services import create_team
    from workers.jobs.keys import manager_keypair

    user = get_user_model().objects.create_user(f"e2e-{install.run_id}", password="pw")
    team = create_team(f"e2e-{install.run_id}", user)
    host = register_world(guest_image, f"e2e-{install.run_id}")
    env = {**install.worker_env, "DATABASE_URL": database_url(connection.settings_dict)}
    worker = start_worker(host.queue, f"shared-guest-{install.run_id}", env)
    try:
        job = environments.create_environment(
            user=user, team=team, name="shared", kind="dev", vm_count=1, flavor="small"
        )
        job = wait_for_job(job, BOOT_TIMEOUT_SECONDS)
    finally:
        kill_worker(worker)
    assert job.state == "succeeded", (job.error, job_report(job))
    vm = VirtualMachine.objects.get(environment=job.environment)
    steps = {s.name: s for s in job.children.get().steps.all()}
    return BootedVm(
        hypervisor=hypervisor,
        vm_id=vm.pk,
        name=vm.domain_name,
        hostname=vm.name,
        uuid=str(vm.uuid),
        ssh_port=vm.ssh_port,
        host_key=SshKeyPair(vm.host_key_private, vm.host_key_public),
        client_key=manager_keypair(),
        boot_to_ssh_seconds=(
            steps["wait for ssh"].finished_at - steps["start"].started_at
        ).total_seconds(),
    )


@pytest.fixture(scope="session")
def booted_vm(django_db_setup, django_db_blocker, e2e_install, e2e_hypervisor, guest_image):
    """The session's one guest, SSH-ready, made by the product's provisioning plan;
    destroyed with everything it owns at the end (its records stay until then, so
    the tests using it are marked django_db)."""
    with django_db_blocker.unblock(), installation_settings(e2e_install):
        vm = provision_shared_guest(e2e_install, guest_image, e2e_hypervisor)
    try:
        yield vm
    finally:
        e2e_hypervisor.guests.destroy(vm.name, vm.uuid)


@pytest.fixture
def strata_host(guest_image):
    """This machine registered as a host, the built Debian image and a small flavor."""
    return register_world(guest_image, f"e2e-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def web_images():
    """Two busybox httpd images in the host's engine (v2 = v1 + one small layer).

    Afterwards nothing the test made is left in the host's Docker: no container
    of these images, no image of theirs, no new dangling image."""
    import docker

    from bench.harness.guest_servers import build_web_images, remove_web_images

    engine = docker.from_env()
    before = {image.id for image in engine.images.list(all=True)}
    tags = build_web_images(engine)
    repository = tags[0].rsplit(":", 1)[0]
    try:
        yield tags
    finally:
        running_ours = [
            c.name
            for c in engine.containers.list(all=True)
            if c.attrs["Config"]["Image"].startswith(repository + ":")
        ]
        remove_web_images(engine, tags)
        left = [i.tags for i in engine.images.list(name=repository)] + [
            i.id for i in engine.images.list(filters={"dangling": True}) if i.id not in before
        ]
        engine.close()
    assert not running_ours, f"containers left on the host's engine: {running_ours}"
    assert not left, f"images left in the host's engine: {left}"
