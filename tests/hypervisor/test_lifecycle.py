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
    test_hypervisor.define(spec)
    return spec


def test_capacity(test_hypervisor):
    capacity = test_hypervisor.capacity()
    assert capacity.cpus > 0
    assert 0 < capacity.free_memory_mib <= capacity.memory_mib


def test_define_start_shutdown(test_hypervisor, defined):
    assert test_hypervisor.state(VM_UUID) is DomainState.SHUTOFF
    test_hypervisor.start(VM_UUID)
    test_hypervisor.start(VM_UUID)  # already running: nothing to do
    assert test_hypervisor.state(VM_UUID) is DomainState.RUNNING
    assert test_hypervisor.shutdown(VM_UUID, timeout=10) is True
    assert test_hypervisor.state(VM_UUID) is DomainState.SHUTOFF
    assert test_hypervisor.shutdown(VM_UUID, timeout=10) is True


def test_define_again_finds_the_same_domain(test_hypervisor, defined):
    test_hypervisor.define(make_spec(vcpus=4))
    domains = test_hypervisor.list_strata_domains()
    assert [(d.name, d.uuid) for d in domains] == [("web-1", VM_UUID)]
    assert test_hypervisor.domain_stats(VM_UUID).vcpus == 4


def test_define_refuses_another_virt_type(test_hypervisor):
    with pytest.raises(InvalidSpec) as error:
        test_hypervisor.define(make_spec(virt_type="kvm"))
    assert error.value.field == "virt_type"


def test_force_off_and_reboot(test_hypervisor, defined):
    with pytest.raises(InvalidState):
        test_hypervisor.reboot(VM_UUID)
    test_hypervisor.start(VM_UUID)
    test_hypervisor.reboot(VM_UUID)
    assert test_hypervisor.state(VM_UUID) is DomainState.RUNNING
    test_hypervisor.force_off(VM_UUID)
    test_hypervisor.force_off(VM_UUID)
    assert test_hypervisor.state(VM_UUID) is DomainState.SHUTOFF


def test_destroy_is_idempotent(test_hypervisor, defined):
    test_hypervisor.start(VM_UUID)
    test_hypervisor.create_snapshot(VM_UUID, "s1")
    test_hypervisor.destroy("web-1", VM_UUID)
    with pytest.raises(NotFound):
        test_hypervisor.state(VM_UUID)
    test_hypervisor.destroy("web-1", VM_UUID)
    assert test_hypervisor.list_strata_domains() == []


def test_unknown_domain_is_not_found(test_hypervisor):
    for call in (
        lambda: test_hypervisor.state(VM_UUID),
        lambda: test_hypervisor.start(VM_UUID),
        lambda: test_hypervisor.domain_stats(VM_UUID),
        lambda: test_hypervisor.metadata(VM_UUID),
    ):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(InvalidSpec):
        test_hypervisor.state("web-1")


def test_snapshots(test_hypervisor, defined):
    test_hypervisor.start(VM_UUID)
    first = test_hypervisor.create_snapshot(VM_UUID, "first")
    assert test_hypervisor.create_snapshot(VM_UUID, "first") == first
    test_hypervisor.create_snapshot(VM_UUID, "second")
    assert [s.name for s in test_hypervisor.list_snapshots(VM_UUID)] == ["first", "second"]
    assert first.state == "running"

    test_hypervisor.force_off(VM_UUID)
    test_hypervisor.revert_snapshot(VM_UUID, "first")
    assert test_hypervisor.state(VM_UUID) is DomainState.RUNNING

    test_hypervisor.delete_snapshot(VM_UUID, "second")
    test_hypervisor.delete_snapshot(VM_UUID, "second")
    assert [s.name for s in test_hypervisor.list_snapshots(VM_UUID)] == ["first"]
    with pytest.raises(NotFound):
        test_hypervisor.revert_snapshot(VM_UUID, "second")
    with pytest.raises(InvalidSpec) as error:
        test_hypervisor.create_snapshot(VM_UUID, "x'/>")
    assert error.value.field == "snapshot"


def test_resize_while_stopped(test_hypervisor, defined):
    test_hypervisor.resize(VM_UUID, vcpus=4, memory_mib=2048)
    stats = test_hypervisor.domain_stats(VM_UUID)
    assert (stats.vcpus, stats.max_memory_mib, stats.memory_mib) == (4, 2048, 2048)
    test_hypervisor.resize(VM_UUID, vcpus=1, memory_mib=512)
    stats = test_hypervisor.domain_stats(VM_UUID)
    assert (stats.vcpus, stats.max_memory_mib) == (1, 512)
    # The resize keeps Strata's metadata.
    assert test_hypervisor.metadata(VM_UUID) == StrataMetadata("42", "7")

    test_hypervisor.start(VM_UUID)
    with pytest.raises(InvalidState):
        test_hypervisor.resize(VM_UUID, vcpus=2, memory_mib=512)
    with pytest.raises(InvalidSpec) as error:
        test_hypervisor.resize(VM_UUID, vcpus=0, memory_mib=512)
    assert error.value.field == "vcpus"


def test_domain_stats(test_hypervisor, defined):
    stopped = test_hypervisor.domain_stats(VM_UUID)
    assert stopped.state is DomainState.SHUTOFF and stopped.rss_mib is None
    test_hypervisor.start(VM_UUID)
    running = test_hypervisor.domain_stats(VM_UUID)
    assert running.state is DomainState.RUNNING
    assert (running.vcpus, running.max_memory_mib) == (2, 1024)
    assert running.cpu_time_ns > 0


def test_metadata_round_trip_through_libvirt(test_hypervisor, defined):
    assert test_hypervisor.metadata(VM_UUID) == StrataMetadata(vm_id="42", environment_id="7")
    test_hypervisor.set_metadata(VM_UUID, StrataMetadata(vm_id="43", environment_id=None))
    assert test_hypervisor.metadata(VM_UUID) == StrataMetadata(vm_id="43", environment_id=None)


def test_listing_finds_only_strata_domains(test_hypervisor, defined):
    # The test driver ships a domain named "test" that is not Strata's.
    assert "test" in test_hypervisor.connection.listDefinedDomains() + [
        test_hypervisor.connection.lookupByID(i).name()
        for i in test_hypervisor.connection.listDomainsID()
    ]
    other = make_spec(name="db-1", uuid=str(uuid.UUID(int=2)), vm_id="43", environment_id=None)
    test_hypervisor.define(other)
    test_hypervisor.start(other.uuid)
    domains = test_hypervisor.list_strata_domains()
    assert [(d.name, d.state, d.metadata) for d in domains] == [
        ("db-1", DomainState.RUNNING, StrataMetadata("43", None)),
        ("web-1", DomainState.SHUTOFF, StrataMetadata("42", "7")),
    ]


def test_storage_pools_are_created_once(test_hypervisor):
    test_hypervisor.ensure_storage()
    pools = {pool.name(): pool for pool in test_hypervisor.connection.listAllStoragePools()}
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


def test_guest_addresses_in_network_mode(test_hypervisor):
    # Only read from libvirt: the test driver invents a lease; nothing is contacted.
    spec = make_spec(network=LibvirtNetwork(network="default"))
    test_hypervisor.define(spec)
    test_hypervisor.start(spec.uuid)
    for from_agent in (False, True):
        addresses = test_hypervisor.guest_addresses(spec.uuid, from_agent=from_agent)
        assert len(addresses) == 1 and addresses[0].count(".") == 3


def test_user_mode_guest_has_no_libvirt_addresses(test_hypervisor, defined):
    test_hypervisor.start(VM_UUID)
    assert test_hypervisor.guest_addresses(VM_UUID) == []


def test_a_closed_connection_is_opened_again_at_the_next_call():
    """A libvirtd restart leaves the driver's client closed (the e2e restart test
    shows it on the real daemon); its next call opens a new connection."""
    hv = Hypervisor("test:///default", TEST_DATA_DIR)
    before = hv.connection
    hv.close()
    assert hv.capacity().cpus > 0
    assert hv.connection is not before and hv.connection.isAlive()
    hv.close()
