from __future__ import annotations

import uuid

import pytest

from workers.drivers.hypervisor import DomainSpec, Hypervisor, KernelBoot, UserNetwork

# The test driver keeps no files; the paths only have to be valid.
TEST_DATA_DIR = "/var/lib/strata-unit"


def make_spec(**overrides) -> DomainSpec:
    values = dict(
        name="web-1",
        uuid=str(uuid.UUID(int=1)),
        vm_id="42",
        environment_id="7",
        vcpus=2,
        memory_mib=1024,
        disk_path="/var/lib/strata/volumes/web-1.disk.qcow2",
        seed_path="/var/lib/strata/volumes/web-1.seed.iso",
        console_log_path="/var/lib/strata/console/web-1.log",
        network=UserNetwork(ssh_host_port=22001),
        virt_type="qemu",
        kernel_boot=KernelBoot(
            kernel_path="/var/lib/strata/images/d/vmlinuz",
            initrd_path="/var/lib/strata/images/d/initrd.img",
            cmdline="root=/dev/vda rw console=ttyS0 apparmor=0",
        ),
    )
    values.update(overrides)
    return DomainSpec(**values)


@pytest.fixture
def test_hypervisor():
    """A Hypervisor on libvirt's in-process test driver, with Strata's pools.

    The driver's state lives as long as a connection to it is open, so each
    test starts from the driver's stock state.
    """
    hypervisor = Hypervisor("test:///default", TEST_DATA_DIR, virt_type="qemu")
    hypervisor.storage.ensure_pools()
    try:
        yield hypervisor
    finally:
        hypervisor.close()
