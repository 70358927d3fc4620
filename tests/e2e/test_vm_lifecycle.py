"""A real VM through its whole life under qemu:///system (TCG): first boot via
cloud-init, SSH with the pinned host key, Docker inside, snapshot and revert,
graceful shutdown, destroy, and nothing left behind.

The tests share conftest's one guest, provisioned by the product's plan, and
run in file order after every other test (conftest sorts this module last):
the final test destroys the guest.
"""

from __future__ import annotations

import os
import time

import pytest

from workers.drivers.guest import HostKeyMismatch
from workers.drivers.hypervisor import DomainState, NotFound, generate_ed25519_keypair

# The shared guest's records (made by the product) live in the test database.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

SNAPSHOT = "before-marker"
MARKER = "/root/strata-marker"


def test_first_boot_reaches_ssh_with_pinned_host_key(booted_vm):
    """Finding 20: the shared guest comes from the product's own provision_vm plan
    (service, queue, worker, steps), so its first boot is the product's."""
    print(f"boot to ssh: {booted_vm.boot_to_ssh_seconds:.1f} s")
    assert booted_vm.hypervisor.guests.state(booted_vm.uuid) is DomainState.RUNNING
    stats = booted_vm.hypervisor.guests.stats(booted_vm.uuid)
    print(f"qemu rss: {stats.rss_mib} MiB, guest cpu time: {stats.cpu_time_ns / 1e9:.1f} s")
    assert stats.cpu_time_ns > 0 and stats.rss_mib > 0
    assert booted_vm.run(["hostname"]).strip() == booted_vm.hostname
    # cloud-init applied our key: the guest's host key is exactly the pinned one.
    guest_host_key = booted_vm.run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
    assert guest_host_key.split()[:2] == booted_vm.host_key.public_openssh.split()[:2]


def test_another_host_key_is_rejected(booted_vm):
    impostor = generate_ed25519_keypair()
    connection = booted_vm.connect(host_key=impostor.public_openssh)
    with pytest.raises(HostKeyMismatch):
        connection.transport()


def test_docker_runs_in_the_guest(booted_vm):
    started = time.monotonic()
    output = booted_vm.run(
        ["docker", "info", "--format", "{{.ServerVersion}} {{.Driver}}"], timeout=180
    )
    print(f"docker info: {time.monotonic() - started:.1f} s -> {output.strip()}")
    assert output.split()[1] == "overlay2"


def test_snapshot_create_and_revert(booted_vm):
    hypervisor = booted_vm.hypervisor
    started = time.monotonic()
    snapshot = hypervisor.snapshots.create(booted_vm.uuid, SNAPSHOT)
    print(f"snapshot of the running guest: {time.monotonic() - started:.1f} s")
    assert snapshot.state == "running"
    assert [s.name for s in hypervisor.snapshots.list(booted_vm.uuid)] == [SNAPSHOT]

    booted_vm.run(["sh", "-c", f"touch {MARKER} && sync"])
    started = time.monotonic()
    hypervisor.snapshots.revert(booted_vm.uuid, SNAPSHOT)
    print(f"revert: {time.monotonic() - started:.1f} s")
    assert hypervisor.guests.state(booted_vm.uuid) is DomainState.RUNNING
    # The reverted guest never wrote the marker.
    assert (
        booted_vm.run(["sh", "-c", f"test -e {MARKER} && echo present || echo absent"]).strip()
        == "absent"
    )

    hypervisor.snapshots.delete(booted_vm.uuid, SNAPSHOT)
    assert hypervisor.snapshots.list(booted_vm.uuid) == []


def test_graceful_shutdown_then_destroy_leaves_nothing(booted_vm):
    hypervisor = booted_vm.hypervisor
    hypervisor.snapshots.create(booted_vm.uuid, "kept-until-destroy")
    started = time.monotonic()
    assert hypervisor.guests.shutdown(booted_vm.uuid, timeout=120) is True
    print(f"graceful shutdown: {time.monotonic() - started:.1f} s")
    assert hypervisor.guests.state(booted_vm.uuid) is DomainState.SHUTOFF
    console_log = hypervisor.storage.console_log_path(booted_vm.name)
    assert os.path.getsize(console_log) > 0

    hypervisor.guests.destroy(booted_vm.name, booted_vm.uuid)
    hypervisor.guests.destroy(booted_vm.name, booted_vm.uuid)  # already gone: still succeeds

    with pytest.raises(NotFound):
        hypervisor.guests.state(booted_vm.uuid)
    assert all(d.uuid != booted_vm.uuid for d in hypervisor.guests.list())
    assert all(v.owner != booted_vm.name for v in hypervisor.storage.list_volumes())
    for path in (
        hypervisor.storage.disk_path(booted_vm.name),
        hypervisor.storage.seed_path(booted_vm.name),
        console_log,
    ):
        assert not os.path.exists(path), path
