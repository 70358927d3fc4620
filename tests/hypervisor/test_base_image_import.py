"""Importing a base image on a fresh host while several VMs need it at once
(finding 9.1), on the real libvirt (qemu:///system; no guest is started)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import libvirt
import pytest

from bench.harness.storage_cleanup import remove_pools
from workers.drivers.hypervisor import Hypervisor, OperationTimeout, VolumeKind
from workers.drivers.hypervisor import storage as storage_module

from .test_qemu_system import TEST_ROOT, make_qcow2, qemu_img_info

pytestmark = [pytest.mark.libvirt, pytest.mark.integration]

URI = "qemu:///system"
CONCURRENT_VMS = 4


@pytest.fixture
def fresh_host():
    """A data dir and pool no base was ever imported into; all removed afterwards."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    work_dir = TEST_ROOT / f"h5-import-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir()
    hypervisor = Hypervisor(URI, work_dir / "data", pool_name=f"strata-test-{work_dir.name}")
    try:
        yield hypervisor, work_dir
    finally:
        remove_pools(hypervisor)
        hypervisor.close()
        shutil.rmtree(work_dir, ignore_errors=True)


def provision_disk(data_dir: str, pool_name: str, vm_name: str, source: str, start_at: float):
    """What a provision job's create-disk step does, in its own worker process."""
    with Hypervisor(URI, data_dir, pool_name=pool_name) as hypervisor:
        time.sleep(max(0.0, start_at - time.time()))
        hypervisor.storage.ensure_pools()
        base = hypervisor.storage.import_base_image("debian-12-fresh", source)
        return base.path, hypervisor.storage.create_disk(vm_name, "debian-12-fresh", size_gib=2)


def test_concurrent_first_use_of_an_image_makes_one_base_and_every_disk(fresh_host):
    """Finding 9.1: several VMs' disks from a never-imported image at once, on a host
    whose pools do not exist yet, all succeed over one complete base volume."""
    hypervisor, work_dir = fresh_host
    # Big enough that the uploads overlap.
    source = make_qcow2(work_dir / "fresh.qcow2", "1G", data_mib=96)
    start_at = time.time() + 3
    names = [f"vm-fresh-{n}" for n in range(CONCURRENT_VMS)]
    with ProcessPoolExecutor(
        CONCURRENT_VMS, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = [
            pool.submit(
                provision_disk,
                hypervisor.storage.data_dir,
                hypervisor.storage.pool_name,
                name,
                str(source),
                start_at,
            )
            for name in names
        ]
        results = [future.result() for future in futures]

    bases = [v for v in hypervisor.storage.list_volumes() if v.kind is VolumeKind.BASE]
    assert [v.name for v in bases] == ["debian-12-fresh.base.qcow2"]
    assert {base_path for base_path, _disk in results} == {bases[0].path}
    assert os.path.getsize(bases[0].path) == os.path.getsize(source)
    compare = subprocess.run(["qemu-img", "compare", "-q", str(source), bases[0].path])
    assert compare.returncode == 0
    for name, (_base, disk) in zip(names, results, strict=True):
        assert disk == hypervisor.storage.disk_path(name)
        assert qemu_img_info(disk)["backing-filename"] == bases[0].path


def test_an_import_waits_for_the_lock_then_gives_up_transiently(fresh_host, monkeypatch):
    """Finding 9.1: an import blocked by another importer's lock fails after a bounded
    wait with a transient error, and creates nothing."""
    hypervisor, work_dir = fresh_host
    hypervisor.storage.ensure_pools()
    source = make_qcow2(work_dir / "held.qcow2", "64M", data_mib=1)
    monkeypatch.setattr(storage_module, "BASE_IMPORT_LOCK_SECONDS", 1.0)
    lock_path = Path(hypervisor.storage.base_import_lock_path("held"))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(OperationTimeout, match="held.base.qcow2") as error:
            hypervisor.storage.import_base_image("held", source)
        assert 1.0 <= time.monotonic() - started < 5
        assert error.value.transient
        assert [v for v in hypervisor.storage.list_volumes() if v.kind is VolumeKind.BASE] == []
    # Released: the next import goes through.
    assert hypervisor.storage.import_base_image("held", source).owner == "held"


class AlwaysBusyPool:
    """A pool whose refresh fails as libvirt's does while a volume is being built;
    a real build is over in milliseconds, too fast to hold one open."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.refreshes = 0

    def name(self) -> str:
        return "busy"

    def refresh(self, _flags: int) -> None:
        self.refreshes += 1
        error = libvirt.libvirtError(self.message)
        error.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, self.message, 2, "", "", "", 0, 0)
        raise error


def test_a_pool_refresh_waits_for_builds_then_gives_up(monkeypatch):
    """Finding 9.1: a refresh refused because another job is building a volume is
    retried for a bounded time (then a transient error); other errors pass at once."""
    monkeypatch.setattr(storage_module, "POOL_REFRESH_SECONDS", 0.5)
    busy = AlwaysBusyPool("internal error: pool 'busy' has asynchronous jobs running.")
    with pytest.raises(OperationTimeout, match="busy") as error:
        storage_module.refresh_pool(busy)
    assert error.value.transient and busy.refreshes >= 2
    broken = AlwaysBusyPool("internal error: cannot read directory")
    with pytest.raises(libvirt.libvirtError):
        storage_module.refresh_pool(broken)
    assert broken.refreshes == 1
