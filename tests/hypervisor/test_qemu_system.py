"""The driver on qemu:///system: base images as volumes, copy-on-write disks,
seeds, and the forced power-off of a guest that ignores ACPI.

Pools live under /var/lib/strata-test, never under /root or pytest's private
tmp dirs, which QEMU (running as libvirt-qemu) could not traverse.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from bench.harness.storage_cleanup import remove_pools
from workers.drivers.hypervisor import (
    DomainSpec,
    DomainState,
    Hypervisor,
    HypervisorError,
    InvalidSpec,
    InvalidState,
    NotFound,
    StrataVolume,
    UserNetwork,
    VolumeKind,
    find_free_loopback_ports,
)

pytestmark = [pytest.mark.libvirt, pytest.mark.integration]

TEST_ROOT = Path("/var/lib/strata-test")
MIB = 1024**2
GIB = 1024**3


def make_qcow2(path: Path, virtual_size: str, data_mib: int, backing: Path | None = None) -> Path:
    command = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        command += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*command, str(path), virtual_size], check=True)
    if data_mib:
        # Incompressible-looking pattern so the file really holds data_mib of clusters.
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data_mib}M", str(path)],
            check=True,
            capture_output=True,
        )
    return path


@pytest.fixture(scope="module")
def work_dir():
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"storage-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def hypervisor(work_dir):
    hypervisor = Hypervisor(
        "qemu:///system", work_dir / "data", pool_name=f"strata-test-{work_dir.name}"
    )
    try:
        hypervisor.storage.ensure_pools()
        yield hypervisor
    finally:
        remove_pools(hypervisor)
        hypervisor.close()


@pytest.fixture(scope="module")
def images(work_dir, hypervisor) -> dict[str, StrataVolume]:
    small = make_qcow2(work_dir / "small.qcow2", "1G", data_mib=8)
    large = make_qcow2(work_dir / "large.qcow2", "1G", data_mib=512)
    return {
        "small": hypervisor.storage.import_base_image("small", small),
        "large": hypervisor.storage.import_base_image("large", large),
    }


def qemu_img_info(path: str) -> dict:
    output = subprocess.run(
        ["qemu-img", "info", "--force-share", "--output=json", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output)


def test_pools_exist_under_data_dir(hypervisor):
    assert os.path.isdir(hypervisor.storage.volumes_dir)
    assert os.path.isdir(hypervisor.storage.console_dir)
    hypervisor.storage.ensure_pools()  # a second run changes nothing


def test_import_makes_base_volumes(images):
    assert images["large"].kind is VolumeKind.BASE and images["large"].owner == "large"
    assert images["large"].capacity_bytes == GIB
    assert images["large"].allocation_bytes >= 512 * MIB
    assert qemu_img_info(images["large"].path)["format"] == "qcow2"


def test_import_again_reuses_the_volume(hypervisor, images, work_dir):
    before = os.stat(images["small"].path).st_mtime_ns
    again = hypervisor.storage.import_base_image("small", work_dir / "small.qcow2")
    assert again == images["small"]
    assert os.stat(images["small"].path).st_mtime_ns == before


def test_import_replaces_a_volume_cut_short(hypervisor, work_dir):
    source = make_qcow2(work_dir / "cut.qcow2", "64M", data_mib=4)
    volume = hypervisor.storage.import_base_image("cut", source)
    os.truncate(volume.path, os.path.getsize(source) // 2)
    replaced = hypervisor.storage.import_base_image("cut", source)
    assert os.path.getsize(replaced.path) == os.path.getsize(source)
    hypervisor.storage.delete_base_image("cut")
    hypervisor.storage.delete_base_image("cut")
    assert "cut.base.qcow2" not in [v.name for v in hypervisor.storage.list_volumes()]


def test_import_never_replaces_a_base_that_disks_use(hypervisor, work_dir):
    first = make_qcow2(work_dir / "v1.qcow2", "64M", data_mib=4)
    second = make_qcow2(work_dir / "v2.qcow2", "64M", data_mib=8)
    hypervisor.storage.import_base_image("reused-name", first)
    disk = hypervisor.storage.create_disk("vm-on-v1", "reused-name", size_gib=1)
    with pytest.raises(InvalidState):
        hypervisor.storage.import_base_image("reused-name", second)
    with pytest.raises(InvalidState, match="vm-on-v1"):
        hypervisor.storage.delete_base_image("reused-name")
    assert qemu_img_info(disk)["backing-filename"].endswith("reused-name.base.qcow2")
    assert os.path.getsize(hypervisor.storage.import_base_image("reused-name", first).path) == (
        os.path.getsize(first)
    )
    hypervisor.guests.destroy("vm-on-v1", str(uuid.uuid4()))
    # Unused now: the name may take the new content.
    replaced = hypervisor.storage.import_base_image("reused-name", second)
    assert os.path.getsize(replaced.path) == os.path.getsize(second)
    hypervisor.storage.delete_base_image("reused-name")


def test_import_refuses_an_image_with_a_backing_file(hypervisor, work_dir):
    layered = make_qcow2(work_dir / "layered.qcow2", "64M", 0, backing=work_dir / "small.qcow2")
    with pytest.raises(HypervisorError, match="standalone"):
        hypervisor.storage.import_base_image("layered", layered)
    assert "layered.base.qcow2" not in [v.name for v in hypervisor.storage.list_volumes()]


def test_disk_is_an_overlay_not_a_copy(hypervisor, images):
    timings = {}
    for size in ("small", "large"):
        runs = []
        for attempt in range(3):
            started = time.perf_counter()
            path = hypervisor.storage.create_disk(f"vm-{size}-{attempt}", size, size_gib=4)
            runs.append(time.perf_counter() - started)
            info = qemu_img_info(path)
            assert info["format"] == "qcow2"
            assert info["virtual-size"] == 4 * GIB
            assert info["backing-filename"] == images[size].path
            assert info["backing-filename-format"] == "qcow2"
            # Only qcow2 metadata: none of the base's data was copied.
            assert os.stat(path).st_blocks * 512 < MIB
        timings[size] = statistics.median(runs)
    print(f"overlay creation: small base {timings['small']:.3f} s, large {timings['large']:.3f} s")
    # That nothing was copied is asserted on the blocks above; time only bounds
    # a loaded machine's metadata writes.
    assert max(timings.values()) < 10


def test_create_disk_again_keeps_the_disk(hypervisor, images):
    path = hypervisor.storage.create_disk("vm-again", "small", size_gib=2)
    inode = os.stat(path).st_ino
    assert hypervisor.storage.create_disk("vm-again", "small", size_gib=2) == path
    assert os.stat(path).st_ino == inode
    # A re-run asking for more grows it (a crash may have cut the first run short).
    hypervisor.storage.create_disk("vm-again", "small", size_gib=3)
    assert qemu_img_info(path)["virtual-size"] == 3 * GIB


def test_create_disk_refusals(hypervisor, images):
    with pytest.raises(NotFound):
        hypervisor.storage.create_disk("vm-x", "no-such-image", size_gib=4)
    with pytest.raises(InvalidSpec) as error:
        hypervisor.storage.create_disk("../vm", "small", size_gib=4)
    assert error.value.field == "name"
    with pytest.raises(InvalidSpec) as error:
        hypervisor.storage.create_disk("vm-x", "small", size_gib=0)
    assert error.value.field == "size_gib"
    big_base = make_qcow2(Path(hypervisor.storage.data_dir).parent / "big.qcow2", "3G", 0)
    hypervisor.storage.import_base_image("big", big_base)
    with pytest.raises(InvalidSpec) as error:
        hypervisor.storage.create_disk("vm-x", "big", size_gib=2)
    assert error.value.field == "size_gib"


def test_seed_is_rewritten(hypervisor):
    first = hypervisor.storage.write_seed("vm-seed", b"A" * 4096)
    second = hypervisor.storage.write_seed("vm-seed", b"B" * 2048)
    assert first == second == hypervisor.storage.seed_path("vm-seed")
    assert Path(second).read_bytes() == b"B" * 2048


def test_destroy_removes_volumes_without_a_domain(hypervisor, images):
    hypervisor.storage.create_disk("vm-gone", "small", size_gib=1)
    hypervisor.storage.write_seed("vm-gone", b"seed")
    Path(hypervisor.storage.console_log_path("vm-gone")).write_text("console\n")
    owned = [v for v in hypervisor.storage.list_volumes() if v.owner == "vm-gone"]
    assert {v.kind for v in owned} == {VolumeKind.DISK, VolumeKind.SEED}

    hypervisor.guests.destroy("vm-gone", str(uuid.uuid4()))
    assert [v for v in hypervisor.storage.list_volumes() if v.owner == "vm-gone"] == []
    assert not os.path.exists(hypervisor.storage.console_log_path("vm-gone"))
    # The base images stay.
    assert {"small", "large"} <= {
        v.owner for v in hypervisor.storage.list_volumes() if v.kind is VolumeKind.BASE
    }


def test_guest_ignoring_acpi_is_forced_off(hypervisor, images):
    # With no bootable disk SeaBIOS idles and never handles the ACPI power
    # button: the real situation a forced power-off exists for.
    name = "vm-no-os"
    spec = DomainSpec(
        name=name,
        uuid=str(uuid.uuid4()),
        vm_id="no-os",
        vcpus=1,
        memory_mib=64,
        disk_path=hypervisor.storage.create_disk(name, "small", size_gib=1),
        console_log_path=hypervisor.storage.console_log_path(name),
        network=UserNetwork(ssh_host_port=find_free_loopback_ports(1)[0]),
    )
    try:
        hypervisor.guests.define(spec)
        hypervisor.guests.start(spec.uuid)
        started = time.monotonic()
        assert hypervisor.guests.shutdown(spec.uuid, timeout=2) is False
        # Forced only after its timeout; the upper bound is one a loaded machine meets.
        assert 2 <= time.monotonic() - started < 60
        assert hypervisor.guests.state(spec.uuid) is DomainState.SHUTOFF
        stats = hypervisor.guests.stats(spec.uuid)
        assert (stats.vcpus, stats.max_memory_mib) == (1, 64)
    finally:
        hypervisor.guests.destroy(name, spec.uuid)
    assert [d for d in hypervisor.guests.list() if d.uuid == spec.uuid] == []
