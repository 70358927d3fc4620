"""A fresh machine without udev: /dev/kvm made usable for libvirt's QEMU user by
scripts/services.sh, and QEMU's capabilities probed at host registration
(finding 9.2)."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from cloud.models import Host
from cloud.services.hosts import HostUnavailable, register_host

SERVICES_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
# The real /dev/kvm's numbers would alias the real device; the null device's are harmless.
NULL_DEVICE = os.makedev(1, 3)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod and chgrp need root")


def run_services(tmp_path: Path, device: Path, *names: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STRATA_KVM_DEVICE": str(device), "STRATA_LOG_DIR": str(tmp_path / "log")}
    return subprocess.run(
        ["bash", str(SERVICES_SCRIPT), *names], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def fake_kvm_node(tmp_path) -> Path:
    """A character device as a machine without udev leaves /dev/kvm: root:root 0600."""
    node = tmp_path / "kvm"
    os.mknod(node, 0o600 | stat.S_IFCHR, NULL_DEVICE)
    os.chown(node, 0, 0)
    os.chmod(node, 0o600)
    return node


def mode_and_group(node: Path) -> tuple[int, str]:
    info = node.stat()
    return stat.S_IMODE(info.st_mode), grp.getgrgid(info.st_gid).gr_name


@needs_root
def test_services_gives_kvm_to_the_kvm_group_where_no_udev_runs(tmp_path, fake_kvm_node):
    """Finding 9.2: without udev, services.sh sets the KVM node root:kvm 0660 as udev would."""
    if subprocess.run(["pgrep", "-x", "systemd-udevd"], capture_output=True).returncode == 0:
        pytest.skip("udev runs on this machine")
    result = run_services(tmp_path, fake_kvm_node, "kvm")
    assert result.returncode == 0, result.stderr
    assert mode_and_group(fake_kvm_node) == (0o660, "kvm")
    # Again: nothing left to change, still fine.
    assert run_services(tmp_path, fake_kvm_node, "kvm").returncode == 0
    assert mode_and_group(fake_kvm_node) == (0o660, "kvm")


@needs_root
def test_services_leaves_kvm_to_udev_where_udev_runs(tmp_path, fake_kvm_node):
    """Finding 9.2: where udev runs, its rules own the node; services.sh changes nothing."""
    # A process named like udev's daemon is all the script looks for.
    fake_udevd = tmp_path / "systemd-udevd"
    shutil.copy("/bin/sleep", fake_udevd)
    daemon = subprocess.Popen([str(fake_udevd), "30"])
    try:
        deadline = time.monotonic() + 5
        while subprocess.run(["pgrep", "-x", "systemd-udevd"], capture_output=True).returncode:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        result = run_services(tmp_path, fake_kvm_node, "kvm")
    finally:
        daemon.kill()
        daemon.wait()
    assert result.returncode == 0, result.stderr
    assert mode_and_group(fake_kvm_node) == (0o600, "root")


def test_services_skips_a_machine_without_kvm(tmp_path):
    """Finding 9.2: no KVM device at all is not an error."""
    missing = tmp_path / "no-kvm"
    result = run_services(tmp_path, missing, "kvm")
    assert result.returncode == 0, result.stderr
    assert not missing.exists()


@pytest.fixture
def capability_lookups(monkeypatch) -> list:
    """Every capability lookup of any libvirt connection, still answered by libvirt."""
    calls = []
    real_host, real_domain = (
        libvirt.virConnect.getCapabilities,
        libvirt.virConnect.getDomainCapabilities,
    )

    def host_capabilities(conn):
        calls.append(("host", conn.getURI()))
        return real_host(conn)

    def domain_capabilities(conn, emulatorbin, arch, machine, virttype, flags=0):
        calls.append(("domain", conn.getURI(), arch, machine, virttype))
        return real_domain(conn, emulatorbin, arch, machine, virttype, flags)

    monkeypatch.setattr(libvirt.virConnect, "getCapabilities", host_capabilities)
    monkeypatch.setattr(libvirt.virConnect, "getDomainCapabilities", domain_capabilities)
    return calls


@pytest.mark.django_db
@pytest.mark.libvirt
def test_registration_warms_the_capabilities_on_the_test_driver(capability_lookups, settings):
    """Finding 9.2: registering a host asks libvirt for its capabilities and its virt
    type's domain capabilities; a driver without the latter still registers."""
    settings.STRATA_VIRT_TYPE = "qemu"
    host, created = register_host("h5-warm", "test:///default", virt_type="kvm")
    assert created and host.virt_type == "kvm"
    assert ("host", "test:///default") in capability_lookups
    assert ("domain", "test:///default", "x86_64", "q35", "kvm") in capability_lookups

    capability_lookups.clear()
    register_host("h5-warm", "test:///default")  # refreshing keeps the host's own type
    assert ("domain", "test:///default", "x86_64", "q35", "kvm") in capability_lookups


@pytest.mark.django_db
@pytest.mark.libvirt
@pytest.mark.integration
def test_registration_warms_the_capabilities_on_qemu(capability_lookups, settings):
    """Finding 9.2: on the real QEMU driver the probe happens at registration, and a
    define right after it does not wait for one."""
    settings.STRATA_VIRT_TYPE = "qemu"
    host, _ = register_host("h5-warm-qemu", "qemu:///system")
    assert ("domain", "qemu:///system", "x86_64", "q35", "qemu") in capability_lookups
    conn = libvirt.open("qemu:///system")
    try:
        started = time.monotonic()
        conn.getDomainCapabilities(None, "x86_64", "q35", "qemu", 0)
        assert time.monotonic() - started < 2
    finally:
        conn.close()
    assert host.cpus > 0


@pytest.mark.django_db
@pytest.mark.libvirt
def test_registration_fails_whole_when_the_probe_fails(capability_lookups, monkeypatch):
    """Finding 9.2: a capability probe that fails (not merely unsupported) refuses the
    registration and writes no host."""

    def broken(conn, *args):
        error = libvirt.libvirtError("internal error: QEMU probe failed")
        error.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, "QEMU probe failed", 2, "", "", "", 0, 0)
        raise error

    monkeypatch.setattr(libvirt.virConnect, "getDomainCapabilities", broken)
    with pytest.raises(HostUnavailable, match="QEMU probe failed"):
        register_host("h5-broken", "test:///default")
    assert not Host.objects.filter(name="h5-broken").exists()
