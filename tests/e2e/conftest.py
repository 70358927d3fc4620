"""One real guest per test session, booted by Strata's hypervisor driver.

The guest runs under qemu:///system with TCG; it is reached only through its
127.0.0.1 SSH forward, with the host key Strata generated and pinned.  Tests
that destroy the guest (test_vm_lifecycle.py) run last, so every other e2e
test can share the one boot (about a minute under TCG).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hypervisor.storage_cleanup import remove_pools
from workers.hypervisor import (
    DomainSpec,
    Hypervisor,
    KernelBoot,
    SeedConfig,
    SshKeyPair,
    UserNetwork,
    build_seed_iso,
    find_free_loopback_ports,
    generate_ed25519_keypair,
)
from workers.remote import Endpoint, SSHConnection, load_private_key, wait_for_ssh

LIBVIRT_URI = "qemu:///system"
# Where workers.images caches the built Debian image (shared with other runs).
IMAGE_DATA_DIR = Path(os.environ.get("STRATA_E2E_IMAGE_DATA_DIR", "/var/lib/strata"))
# Outside /root and pytest's 0700 tmp dirs: QEMU runs as libvirt-qemu and must
# reach the volumes.
TEST_ROOT = Path("/var/lib/strata-test")
BOOT_TIMEOUT_SECONDS = float(os.environ.get("STRATA_E2E_BOOT_TIMEOUT", "420"))
GUEST_VCPUS = 2
GUEST_MEMORY_MIB = 1024
GUEST_DISK_GIB = 4
LIFECYCLE_MODULE = "test_vm_lifecycle.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Stable sort: the tests that destroy the shared guest go last.
    items.sort(key=lambda item: item.path.name == LIFECYCLE_MODULE)


@dataclass
class BootedVm:
    hypervisor: Hypervisor
    name: str
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


@pytest.fixture(scope="session")
def guest_image():
    from workers.images import build_debian_image

    return build_debian_image(IMAGE_DATA_DIR)


@pytest.fixture(scope="session")
def e2e_hypervisor():
    """A Hypervisor with its own pools in a fresh directory, all removed afterwards."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    data_dir = TEST_ROOT / f"e2e-{run_id}"
    hypervisor = Hypervisor(
        LIBVIRT_URI, data_dir, pool_name=f"strata-e2e-{run_id}", virt_type="qemu"
    )
    try:
        hypervisor.ensure_storage()
        yield hypervisor
    finally:
        for domain in hypervisor.list_strata_domains():
            if domain.metadata.vm_id.startswith(f"e2e-{run_id}"):
                hypervisor.destroy(domain.name, domain.uuid)
        remove_pools(hypervisor)
        hypervisor.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def manager_key() -> SshKeyPair:
    """The manager's own SSH client key for this session."""
    return generate_ed25519_keypair("strata-e2e")


@pytest.fixture(scope="session")
def base_image_name(e2e_hypervisor, guest_image) -> str:
    name = f"debian-12-{guest_image.recipe_hash[:16]}"
    e2e_hypervisor.import_base_image(name, guest_image.disk_path)
    return name


def session_vm_name(hypervisor: Hypervisor, suffix: str) -> str:
    """A VM name carrying this session's run id (the teardown sweeps those up)."""
    return f"e2e-{hypervisor.pool_name.rsplit('-', 1)[1]}-{suffix}"


def print_console_tail(hypervisor: Hypervisor, name: str) -> None:
    console = Path(hypervisor.console_log_path(name))
    if console.exists():
        print(console.read_text(errors="replace")[-4000:])


def provision_vm(
    hypervisor: Hypervisor,
    guest_image,
    base_image_name: str,
    manager_key: SshKeyPair,
    name: str,
    vm_uuid: str,
) -> BootedVm:
    """The provision_vm job's steps, in order, then wait for SSH."""
    host_key = generate_ed25519_keypair()
    (ssh_port,) = find_free_loopback_ports(1)
    seed = build_seed_iso(
        SeedConfig(
            instance_id=vm_uuid,
            hostname=name,
            authorized_keys=(manager_key.public_openssh,),
            host_key=host_key,
        )
    )
    disk_path = hypervisor.create_disk(name, base_image_name, GUEST_DISK_GIB)
    seed_path = hypervisor.write_seed(name, seed)
    hypervisor.define(
        DomainSpec(
            name=name,
            uuid=vm_uuid,
            vm_id=name,
            environment_id="e2e",
            vcpus=GUEST_VCPUS,
            memory_mib=GUEST_MEMORY_MIB,
            disk_path=disk_path,
            seed_path=seed_path,
            console_log_path=hypervisor.console_log_path(name),
            network=UserNetwork(ssh_host_port=ssh_port),
            virt_type="qemu",
            kernel_boot=KernelBoot(
                kernel_path=str(guest_image.kernel_path),
                initrd_path=str(guest_image.initrd_path),
                cmdline=guest_image.kernel_cmdline,
            ),
        )
    )
    started = time.monotonic()
    hypervisor.start(vm_uuid)
    endpoint = Endpoint("127.0.0.1", ssh_port, "root", host_key.public_openssh)
    try:
        wait_for_ssh(
            endpoint, load_private_key(manager_key.private_openssh), timeout=BOOT_TIMEOUT_SECONDS
        ).close()
    except BaseException:
        print_console_tail(hypervisor, name)
        raise
    return BootedVm(
        hypervisor=hypervisor,
        name=name,
        uuid=vm_uuid,
        ssh_port=ssh_port,
        host_key=host_key,
        client_key=manager_key,
        boot_to_ssh_seconds=time.monotonic() - started,
    )


@pytest.fixture(scope="session")
def booted_vm(e2e_hypervisor, guest_image, base_image_name, manager_key):
    """The session's one guest, SSH-ready; destroyed with everything it owns at the end."""
    name = session_vm_name(e2e_hypervisor, "vm")
    vm_uuid = str(uuid.uuid4())
    try:
        yield provision_vm(e2e_hypervisor, guest_image, base_image_name, manager_key, name, vm_uuid)
    finally:
        e2e_hypervisor.destroy(name, vm_uuid)


@pytest.fixture
def strata_host(make_team):
    """This machine registered as a host, the built Debian image and a small flavor."""
    from django.conf import settings

    from cloud.models import Flavor, Image
    from cloud.services.hosts import register_host
    from cloud.services.images import built_image_fields
    from workers.images import build_debian_image

    built = build_debian_image(settings.STRATA_DATA_DIR)
    Image.objects.create(name="debian-12", **built_image_fields(built))
    Flavor.objects.create(name="small", vcpus=1, memory_mb=1024, disk_gb=4)
    host, _ = register_host(f"e2e-{uuid.uuid4().hex[:6]}", LIBVIRT_URI, virt_type="qemu")
    return host


@pytest.fixture
def web_images():
    """Two busybox httpd images in the host's engine (v2 = v1 + one small layer)."""
    import docker

    from tests.remote.servers import build_web_images, remove_web_images

    engine = docker.from_env()
    tags = build_web_images(engine)
    yield tags
    remove_web_images(engine, tags)
