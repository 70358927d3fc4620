"""Scheduler properties over random host sets."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.services.scheduler import HostState, NoValidHost, Request, Scheduler

host_sets = st.lists(
    st.builds(
        HostState,
        name=st.uuids().map(str),
        cpus=st.integers(1, 64),
        memory_mb=st.integers(512, 256 * 1024),
        cpu_overcommit=st.sampled_from([1.0, 2.0, 4.0, 16.0]),
        ram_overcommit=st.sampled_from([1.0, 1.5]),
        enabled=st.booleans(),
        images=st.sampled_from([None, frozenset({"debian-12"}), frozenset({"other"})]),
    ),
    min_size=1,
    max_size=30,
    unique_by=lambda h: h.name,
)
requests = st.builds(
    Request,
    vcpus=st.integers(1, 8),
    memory_mb=st.integers(128, 16384),
    image=st.just("debian-12"),
    kind=st.sampled_from(["dev", "staging", "prod"]),
    environment=st.integers(1, 3),
)


def usable(host, request):
    return (
        host.enabled
        and (host.images is None or request.image in host.images)
        and host.fits(request.vcpus, request.memory_mb)
    )


@settings(max_examples=300, deadline=None)
@given(hosts=host_sets, batch=st.lists(requests, max_size=60))
def test_never_places_beyond_capacity_or_on_unusable_hosts(hosts, batch):
    scheduler = Scheduler(hosts)
    for request in batch:
        try:
            host = scheduler.place(request)
        except NoValidHost as exc:
            assert "no host can take" in str(exc)
            assert not any(usable(h, request) for h in hosts)  # really nothing had room
            continue
        assert host.enabled
        assert host.images is None or request.image in host.images
    for host in hosts:
        assert host.used_vcpus <= host.cpus * host.cpu_overcommit
        assert host.used_memory_mb <= host.memory_mb * host.ram_overcommit


def identical_hosts(n, cpus=64, memory_mb=65536):
    return [HostState(name=f"h{i}", cpus=cpus, memory_mb=memory_mb) for i in range(n)]


@settings(max_examples=100, deadline=None)
@given(n_hosts=st.integers(2, 12), n_vms=st.integers(1, 40))
def test_prod_spreads_across_hosts(n_hosts, n_vms):
    hosts = identical_hosts(n_hosts)
    batch = [Request(1, 512, "debian-12", "prod", "prod-env")] * n_vms
    placed = Scheduler(hosts).place_all(batch)
    counts = [sum(1 for p in placed if p is h) for h in hosts]
    assert max(counts) - min(counts) <= 1
    assert len({p.name for p in placed}) == min(n_hosts, n_vms)


@settings(max_examples=100, deadline=None)
@given(
    n_hosts=st.integers(2, 12),
    n_vms=st.integers(1, 40),
    kind=st.sampled_from(["dev", "staging"]),
)
def test_dev_and_staging_pack_to_free_whole_hosts(n_hosts, n_vms, kind):
    hosts = identical_hosts(n_hosts, cpus=4, memory_mb=4096)  # room for 4 VMs of 1 vCPU each
    batch = [Request(1, 512, "debian-12", kind, "e")] * min(n_vms, 4 * n_hosts)
    placed = Scheduler(hosts).place_all(batch)
    # Packing fills hosts one at a time: only ceil(vms / 4) hosts are used.
    assert len({p.name for p in placed}) == -(-len(placed) // 4)


def test_prod_prefers_a_host_without_a_sibling_over_an_emptier_one():
    busy = HostState("busy", cpus=16, memory_mb=32768, used_vcpus=12, used_memory_mb=1024)
    empty = HostState("empty", cpus=16, memory_mb=32768)
    scheduler = Scheduler([busy, empty])
    assert scheduler.place(Request(1, 512, "i", "prod", "p")).name == "empty"
    assert scheduler.place(Request(1, 512, "i", "prod", "p")).name == "busy"


def test_overcommit_ratio_is_honoured():
    host = HostState("h", cpus=2, memory_mb=4096, cpu_overcommit=2.0)
    scheduler = Scheduler([host])
    scheduler.place_all([Request(1, 512, "i", "dev", "e")] * 4)
    with pytest.raises(NoValidHost, match="1 without enough CPU or memory"):
        scheduler.place(Request(1, 512, "i", "dev", "e"))


def test_reason_names_each_filter():
    hosts = [
        HostState("off", cpus=8, memory_mb=8192, enabled=False),
        HostState("other-image", cpus=8, memory_mb=8192, images=frozenset({"x"})),
    ]
    with pytest.raises(NoValidHost, match="1 disabled or draining, 1 without image 'debian-12'"):
        Scheduler(hosts).place(Request(1, 512, "debian-12", "dev", "e"))
    with pytest.raises(NoValidHost, match="no hypervisor hosts"):
        Scheduler([]).place(Request(1, 512, "debian-12", "dev", "e"))
