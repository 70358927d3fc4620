"""Domains and VM volumes carry the installation that made them (finding 9.14):
in the domain's Strata metadata and in the volume's name."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from bench.harness.storage_cleanup import remove_pools
from workers.drivers.hypervisor import (
    DomainConfig,
    Hypervisor,
    InvalidSpec,
    StrataMetadata,
    VolumeKind,
)

from .conftest import TEST_DATA_DIR, make_spec
from .test_qemu_system import TEST_ROOT, make_qcow2

pytestmark = pytest.mark.libvirt


@pytest.fixture
def marked_test_hypervisor():
    hypervisor = Hypervisor(
        "test:///default", TEST_DATA_DIR, virt_type="qemu", installation_id="inst-a"
    )
    hypervisor.storage.ensure_pools()
    try:
        yield hypervisor
    finally:
        hypervisor.close()


def test_defined_domains_carry_the_installation(marked_test_hypervisor):
    """Finding 9.14: a domain defined by an installation's driver says so in its metadata."""
    hv = marked_test_hypervisor
    spec = make_spec(name="strata-mark", uuid=str(uuid.uuid4()), vm_id="7", environment_id="3")
    hv.guests.define(spec)
    assert hv.guests.metadata(spec.uuid) == StrataMetadata("7", "3", "inst-a")
    listed = [d for d in hv.guests.list() if d.uuid == spec.uuid]
    assert [d.metadata.installation_id for d in listed] == ["inst-a"]


def test_a_driver_without_installation_marks_nothing(test_hypervisor):
    """Finding 9.14: the mark is the driver's to give; none given, none written."""
    spec = make_spec(name="strata-plain", uuid=str(uuid.uuid4()))
    test_hypervisor.guests.define(spec)
    assert test_hypervisor.guests.metadata(spec.uuid).installation_id is None
    assert test_hypervisor.storage.disk_path("strata-plain").endswith("/strata-plain.disk.qcow2")


@pytest.mark.parametrize("bad", ["", "a.b", "../x", "x" * 65, "-lead", "sp ace"])
def test_an_installation_id_must_be_a_strata_id(bad):
    """Finding 9.14: a bad installation id is refused by name before reaching libvirt."""
    with pytest.raises(InvalidSpec) as error:
        Hypervisor("test:///default", TEST_DATA_DIR, installation_id=bad)
    assert error.value.field == "installation_id"
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(), installation_id=bad).to_xml()
    assert error.value.field == "installation_id"


@pytest.fixture
def marked_qemu_hypervisor():
    """An installation's driver on the real libvirt, with pools of its own."""
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    work_dir = TEST_ROOT / f"h5-marks-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir()
    pool_name = f"strata-test-{work_dir.name}"
    hypervisor = Hypervisor(
        "qemu:///system", work_dir / "data", pool_name=pool_name, installation_id="inst-a"
    )
    unmarked = Hypervisor("qemu:///system", work_dir / "data", pool_name=pool_name)
    try:
        hypervisor.storage.ensure_pools()
        make_qcow2(work_dir / "base.qcow2", "64M", data_mib=1)
        hypervisor.storage.import_base_image("base", work_dir / "base.qcow2")
        yield hypervisor, unmarked
    finally:
        unmarked.close()
        remove_pools(hypervisor)
        hypervisor.close()
        shutil.rmtree(work_dir, ignore_errors=True)


def test_vm_volumes_carry_the_installation_in_their_names(marked_qemu_hypervisor):
    """Finding 9.14: an installation's disks and seeds are named with its id and listed
    with it; bases stay shared (named by content)."""
    hv, _unmarked = marked_qemu_hypervisor
    disk = hv.storage.create_disk("strata-vol", "base", size_gib=1)
    seed = hv.storage.write_seed("strata-vol", b"seed")
    assert disk == hv.storage.disk_path("strata-vol")
    assert os.path.basename(disk) == "strata-vol.inst-a.disk.qcow2"
    assert os.path.basename(seed) == "strata-vol.inst-a.seed.iso"
    volumes = {v.name: v for v in hv.storage.list_volumes()}
    assert (volumes["strata-vol.inst-a.disk.qcow2"].kind, volumes[os.path.basename(seed)].kind) == (
        VolumeKind.DISK,
        VolumeKind.SEED,
    )
    assert {v.owner for v in volumes.values() if v.installation_id == "inst-a"} == {"strata-vol"}
    assert volumes["base.base.qcow2"].installation_id is None
    hv.guests.destroy("strata-vol", str(uuid.uuid4()))
    assert [v.name for v in hv.storage.list_volumes()] == ["base.base.qcow2"]


def test_a_vm_made_before_the_marks_keeps_its_volumes(marked_qemu_hypervisor):
    """Finding 9.14: after an upgrade a VM's unmarked disk and seed stay in use (a
    redefinition must not point it at a new, empty disk), and destroy removes them."""
    hv, unmarked = marked_qemu_hypervisor
    old_disk = unmarked.storage.create_disk("strata-old", "base", size_gib=1)
    old_seed = unmarked.storage.write_seed("strata-old", b"old seed")
    assert os.path.basename(old_disk) == "strata-old.disk.qcow2"

    assert hv.storage.disk_path("strata-old") == old_disk
    assert hv.storage.create_disk("strata-old", "base", size_gib=2) == old_disk
    assert hv.storage.write_seed("strata-old", b"new seed") == old_seed
    assert [v.name for v in hv.storage.list_volumes() if v.owner == "strata-old"] == [
        "strata-old.disk.qcow2",
        "strata-old.seed.iso",
    ]
    hv.guests.destroy("strata-old", str(uuid.uuid4()))
    assert [v.name for v in hv.storage.list_volumes()] == ["base.base.qcow2"]


def test_qemu_keeps_the_mark_of_a_domain_on_its_marked_volumes(marked_qemu_hypervisor):
    """Finding 9.14: the real QEMU driver stores the installation in the domain's
    metadata, and the domain uses the installation's marked disk and seed
    (defined only, never started)."""
    hv, unmarked = marked_qemu_hypervisor
    spec = make_spec(
        name="strata-real",
        uuid=str(uuid.uuid4()),
        disk_path=hv.storage.create_disk("strata-real", "base", size_gib=1),
        seed_path=hv.storage.write_seed("strata-real", b"seed"),
        console_log_path=hv.storage.console_log_path("strata-real"),
        kernel_boot=None,
    )
    hv.guests.define(spec)
    try:
        listed = {d.uuid: d for d in unmarked.guests.list()}
        assert listed[spec.uuid].metadata.installation_id == "inst-a"
        xml = hv.host.connection.lookupByUUIDString(spec.uuid).XMLDesc(0)
        assert "strata-real.inst-a.disk.qcow2" in xml and "strata-real.inst-a.seed.iso" in xml
    finally:
        hv.guests.destroy("strata-real", spec.uuid)
    assert spec.uuid not in {d.uuid for d in unmarked.guests.list()}
    assert [v.name for v in hv.storage.list_volumes()] == ["base.base.qcow2"]
