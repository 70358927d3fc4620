"""The real Debian 12 build (about 80 s cold here, instant from the cache),
checked from the outside: the disk, the kernel and initrd, and the files inside
the ext4 filesystem that guests depend on."""

import subprocess

import pytest
from django.conf import settings

from workers.drivers.images import build_debian_image, inspect_image, sha256_file

pytestmark = pytest.mark.e2e

GIB = 1024**3


@pytest.fixture(scope="module")
def built_image():
    # The default data dir, so the cache is shared with the VM tests and `make run`.
    return build_debian_image(settings.STRATA_DATA_DIR)


@pytest.fixture(scope="module")
def root_filesystem(built_image, tmp_path_factory):
    raw = tmp_path_factory.mktemp("rootfs") / "root.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(built_image.disk_path), str(raw)],
        check=True,
    )
    yield raw
    raw.unlink()


def debugfs(raw, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(raw)], check=True, capture_output=True, text=True
    ).stdout


def test_disk_kernel_and_initrd_are_published(built_image):
    info = inspect_image(built_image.disk_path, expected_format="qcow2")
    assert info.virtual_size_bytes == built_image.virtual_size_bytes == 3 * GIB
    assert sha256_file(built_image.disk_path) == built_image.sha256
    assert built_image.size_bytes == built_image.disk_path.stat().st_size
    assert built_image.kernel_path.read_bytes()[0x202:0x206] == b"HdrS"  # x86 boot header
    assert built_image.initrd_path.stat().st_size > 1024**2
    assert built_image.kernel_cmdline == "root=/dev/vda rw console=ttyS0 apparmor=0"
    assert built_image.directory.name == f"debian-12-{built_image.recipe_hash[:16]}"


def test_second_call_returns_the_cache(built_image):
    again = build_debian_image(settings.STRATA_DATA_DIR)
    assert again.from_cache and again.sha256 == built_image.sha256


def test_root_filesystem_is_configured_for_strata(root_filesystem):
    assert "/dev/vda / ext4" in debugfs(root_filesystem, "cat /etc/fstab")
    assert "Name=en*" in debugfs(root_filesystem, "cat /etc/systemd/network/20-wired.network")
    assert "datasource_list: [ NoCloud ]" in debugfs(
        root_filesystem, "cat /etc/cloud/cloud.cfg.d/90-strata.cfg"
    )
    assert debugfs(root_filesystem, "cat /etc/machine-id") == ""
    assert "ssh_host_" not in debugfs(root_filesystem, "ls /etc/ssh")
    assert ".deb" not in debugfs(root_filesystem, "ls /var/cache/apt/archives")
    wanted = debugfs(root_filesystem, "ls /etc/systemd/system/multi-user.target.wants")
    for unit in ("docker.service", "systemd-networkd.service", "strata-ssh-host-keys.service"):
        assert unit in wanted
    programs = ("/usr/sbin/qemu-ga", "/usr/sbin/dockerd", "/usr/sbin/sshd", "/usr/bin/cloud-init")
    for program in programs:
        assert "Inode:" in debugfs(root_filesystem, f"stat {program}")
