"""Lifecycle steps against libvirt's test:///default driver."""

from __future__ import annotations

import uuid

import libvirt
import pytest

from workers.drivers.hypervisor import (
    ConnectionLost,
    DomainState,
    HostUnreachable,
    Hypervisor,
    HypervisorError,
    InvalidSpec,
    InvalidState,
    LibvirtNetwork,
    NotFound,
    StrataMetadata,
)
from workers.drivers.hypervisor.errors import translate

from .conftest import TEST_DATA_DIR, make_spec

pytestmark = pytest.mark.libvirt

VM_UUID = str(uuid.UUID(int=1))


@pytest.fixture
def defined(test_hypervisor):
    spec = make_spec()
    test_hypervisor.guests.define(spec)
    return spec


def test_capacity(test_hypervisor):
    capacity = test_hypervisor.host.capacity()
    assert capacity.cpus > 0
    assert 0 < capacity.free_memory_mib <= capacity.memory_mib


def test_define_start_shutdown(test_hypervisor, defined):
    assert test_hypervisor.guests.state(VM_UUID) is DomainState.SHUTOFF
    test_hypervisor.guests.start(VM_UUID)
    test_hypervisor.guests.start(VM_UUID)  # already running: nothing to do
    assert test_hypervisor.guests.state(VM_UUID) is DomainState.RUNNING
    assert test_hypervisor.guests.shutdown(VM_UUID, timeout=10) is True
    assert test_hypervisor.guests.state(VM_UUID) is DomainState.SHUTOFF
    assert test_hypervisor.guests.shutdown(VM_UUID, timeout=10) is True


def test_define_again_finds_the_same_domain(test_hypervisor, defined):
    test_hypervisor.guests.define(make_spec(vcpus=4))
    domains = test_hypervisor.guests.list()
    assert [(d.name, d.uuid) for d in domains] == [("web-1", VM_UUID)]
    assert test_hypervisor.guests.stats(VM_UUID).vcpus == 4


def test_define_refuses_another_virt_type(test_hypervisor):
    with pytest.raises(InvalidSpec) as error:
        test_hypervisor.guests.define(make_spec(virt_type="kvm"))
    assert error.value.field == "virt_type"


def test_force_off_and_reboot(test_hypervisor, defined):
    with pytest.raises(InvalidState):
        test_hypervisor.guests.reboot(VM_UUID)
    test_hypervisor.guests.start(VM_UUID)
    test_hypervisor.guests.reboot(VM_UUID)
    assert test_hypervisor.guests.state(VM_UUID) is DomainState.RUNNING
    test_hypervisor.guests.force_off(VM_UUID)
    test_hypervisor.guests.force_off(VM_UUID)
    assert test_hypervisor.guests.state(VM_UUID) is DomainState.SHUTOFF


def test_destroy_is_idempotent(test_hypervisor, defined):
    test_hypervisor.guests.start(VM_UUID)
    test_hypervisor.snapshots.create(VM_UUID, "s1")
    test_hypervisor.guests.destroy("web-1", VM_UUID)
    with pytest.raises(NotFound):
        test_hypervisor.guests.state(VM_UUID)
    test_hypervisor.guests.destroy("web-1", VM_UUID)
    assert test_hypervisor.guests.list() == []


def test_unknown_domain_is_not_found(test_hypervisor):
    for call in (
        lambda: test_hypervisor.guests.state(VM_UUID),
        lambda: test_hypervisor.guests.start(VM_UUID),
        lambda: test_hypervisor.guests.stats(VM_UUID),
        lambda: test_hypervisor.guests.metadata(VM_UUID),
    ):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(InvalidSpec):
        test_hypervisor.guests.state("web-1")


def test_snapshots(test_hypervisor, defined):
    test_hypervisor.guests.start(VM_UUID)
    first = test_hypervisor.snapshots.create(VM_UUID, "first")
    assert test_hypervisor.snapshots.create(VM_UUID, "first") == first
    test_hypervisor.snapshots.create(VM_UUID, "second")
    assert [s.name for s in test_hypervisor.snapshots.list(VM_UUID)] == ["first", "second"]
    assert first.state == "running"

    test_hypervisor.guests.force_off(VM_UUID)
    test_hypervisor.snapshots.revert(VM_UUID, "first")
    assert test_hypervisor.guests.state(VM_UUID) is DomainState.RUNNING

    test_hypervisor.snapshots.delete(VM_UUID, "second")
    test_hypervisor.snapshots.delete(VM_UUID, "second")
    assert [s.name for s in test_hypervisor.snapshots.list(VM_UUID)] == ["first"]
    with pytest.raises(NotFound):
        test_hypervisor.snapshots.revert(VM_UUID, "second")
    with pytest.raises(InvalidSpec) as error:
        test_hypervisor.snapshots.create(VM_UUID, "x'/>")
    assert error.value.field == "snapshot"


def test_resize_while_stopped(test_hypervisor, defined):
    test_hypervisor.guests.resize(defined, vcpus=4, memory_mib=2048)
    stats = test_hypervisor.guests.stats(VM_UUID)
    assert (stats.vcpus, stats.max_memory_mib, stats.memory_mib) == (4, 2048, 2048)
    test_hypervisor.guests.resize(defined, vcpus=1, memory_mib=512)
    stats = test_hypervisor.guests.stats(VM_UUID)
    assert (stats.vcpus, stats.max_memory_mib) == (1, 512)
    # The resize keeps Strata's metadata.
    assert test_hypervisor.guests.metadata(VM_UUID) == StrataMetadata("42", "7")

    test_hypervisor.guests.start(VM_UUID)
    with pytest.raises(InvalidState):
        test_hypervisor.guests.resize(defined, vcpus=2, memory_mib=512)
    with pytest.raises(InvalidSpec) as error:
        test_hypervisor.guests.resize(defined, vcpus=0, memory_mib=512)
    assert error.value.field == "vcpus"


def test_domain_stats(test_hypervisor, defined):
    stopped = test_hypervisor.guests.stats(VM_UUID)
    assert stopped.state is DomainState.SHUTOFF and stopped.rss_mib is None
    test_hypervisor.guests.start(VM_UUID)
    running = test_hypervisor.guests.stats(VM_UUID)
    assert running.state is DomainState.RUNNING
    assert (running.vcpus, running.max_memory_mib) == (2, 1024)
    assert running.cpu_time_ns > 0


def test_listing_finds_only_strata_domains(test_hypervisor, defined):
    # The test driver ships a domain named "test" that is not Strata's.
    assert "test" in test_hypervisor.host.connection.listDefinedDomains() + [
        test_hypervisor.host.connection.lookupByID(i).name()
        for i in test_hypervisor.host.connection.listDomainsID()
    ]
    other = make_spec(name="db-1", uuid=str(uuid.UUID(int=2)), vm_id="43", environment_id=None)
    test_hypervisor.guests.define(other)
    test_hypervisor.guests.start(other.uuid)
    domains = test_hypervisor.guests.list()
    assert [(d.name, d.state, d.metadata) for d in domains] == [
        ("db-1", DomainState.RUNNING, StrataMetadata("43", None)),
        ("web-1", DomainState.SHUTOFF, StrataMetadata("42", "7")),
    ]


def test_storage_pools_are_created_once(test_hypervisor):
    test_hypervisor.storage.ensure_pools()
    pools = {pool.name(): pool for pool in test_hypervisor.host.connection.listAllStoragePools()}
    for name in ("strata", "strata-console"):
        assert pools[name].isActive() and pools[name].autostart()


def test_unreachable_host_is_transient():
    with pytest.raises(HostUnreachable) as error:
        Hypervisor("test:///nonexistent/strata-host.xml", TEST_DATA_DIR)
    assert error.value.transient is True


def make_libvirt_error(code: int, domain: int = libvirt.VIR_FROM_QEMU) -> libvirt.libvirtError:
    error = libvirt.libvirtError("synthetic")
    error.err = (code, domain, "synthetic failure", 2, "", "", "", 0, 0)
    return error


@pytest.mark.parametrize(
    "code, domain, expected, transient",
    [
        (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU, NotFound, False),
        (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_FROM_STORAGE, NotFound, False),
        (libvirt.VIR_ERR_RPC, libvirt.VIR_FROM_RPC, ConnectionLost, True),
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, ConnectionLost, True),
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_QEMU, HypervisorError, False),
        (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU, InvalidState, False),
    ],
)
def test_libvirt_errors_map_to_types(code, domain, expected, transient):
    translated = translate(make_libvirt_error(code, domain))
    assert type(translated) is expected
    assert translated.transient is transient
    assert "synthetic failure" in str(translated)


def test_a_domain_on_a_libvirt_network_starts(test_hypervisor):
    spec = make_spec(network=LibvirtNetwork(network="default"))
    test_hypervisor.guests.define(spec)
    test_hypervisor.guests.start(spec.uuid)
    assert test_hypervisor.guests.state(spec.uuid) is DomainState.RUNNING


def test_a_closed_connection_is_opened_again_at_the_next_call():
    """A libvirtd restart leaves the driver's client closed (the e2e restart test
    shows it on the real daemon); its next call opens a new connection."""
    hv = Hypervisor("test:///default", TEST_DATA_DIR)
    before = hv.host.connection
    hv.close()
    assert hv.host.capacity().cpus > 0
    assert hv.host.connection is not before and hv.host.connection.isAlive()
    hv.close()
