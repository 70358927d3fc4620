"""Environment segments against a real libvirtd in a network namespace of the
suite's own (see netns_libvirtd), run through the real job engine."""

import subprocess

import libvirt
import pytest

from cloud.models import Flavor, Host, Image
from tests.segments.netns_libvirtd import NamespacedLibvirtd

POOL = "10.240.0.0/16"


@pytest.fixture(scope="session")
def namespaced_libvirtd():
    """One libvirtd per session; a daemon that cannot start fails the tests with why."""
    daemon = NamespacedLibvirtd().start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def segment_settings(settings, tmp_path):
    """Segments on, and the suite's own data directory and storage pool."""
    settings.STRATA_SUBNET_POOL = [POOL]
    settings.STRATA_SUBNET_PREFIX = "24"
    settings.STRATA_DATA_DIR = tmp_path / "data"
    settings.STRATA_STORAGE_POOL = "strata-segments"
    return settings


@pytest.fixture
def segment_catalogue(namespaced_libvirtd, segment_settings, tmp_path):
    """A host on the namespaced libvirtd, a flavor, and a small real qcow2 image."""
    image_path = tmp_path / "base.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image_path), "64M"], check=True
    )
    host = Host.objects.create(
        name="netns-hv",
        libvirt_uri=namespaced_libvirtd.uri,
        cpus=8,
        memory_mb=16384,
        detected_virt_type="qemu",
    )
    flavor = Flavor.objects.create(name="small", vcpus=1, memory_mb=256, disk_gb=1)
    image = Image.objects.create(
        name="debian-12",
        sha256="b" * 64,
        path=str(image_path),
        virtual_size_bytes=64 << 20,
        size_bytes=image_path.stat().st_size,
        source="built",
    )
    return host, flavor, image


@pytest.fixture
def libvirt_connection(namespaced_libvirtd):
    connection = libvirt.open(namespaced_libvirtd.uri)
    try:
        yield connection
    finally:
        connection.close()
