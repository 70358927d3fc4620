"""The subnet allocator: examples, refused input naming the field, and
properties checked with hypothesis against a brute-force search."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.services.subnets import PoolExhausted, PoolMisconfigured, allocate_subnet

POOL = "10.77.0.0/16"


def test_first_allocation_is_the_start_of_the_pool():
    assert str(allocate_subnet([POOL], 24, [])) == "10.77.0.0/24"


def test_allocations_skip_what_is_taken_and_reuse_gaps():
    taken = ["10.77.0.0/24", "10.77.1.0/24", "10.77.3.0/24"]
    assert str(allocate_subnet([POOL], 24, taken)) == "10.77.2.0/24"
    assert str(allocate_subnet([POOL], 23, taken)) == "10.77.4.0/23"


def test_unaligned_and_odd_sized_taken_subnets_are_avoided():
    taken = ["10.77.0.128/25", "10.77.1.0/28", "10.77.2.0/23"]
    assert str(allocate_subnet([POOL], 24, taken)) == "10.77.4.0/24"


def test_taken_subnets_outside_the_pools_are_ignored():
    assert str(allocate_subnet([POOL], 24, ["192.168.122.0/24", "10.78.0.0/24"])) == "10.77.0.0/24"


def test_a_taken_supernet_exhausts_the_pool():
    with pytest.raises(PoolExhausted) as exhausted:
        allocate_subnet([POOL], 24, ["10.0.0.0/8"])
    assert exhausted.value.field == "pools" and "256 /24 subnets" in str(exhausted.value)


def test_the_next_pool_is_used_when_the_first_is_full():
    pools = ["10.77.0.0/23", "172.20.0.0/16"]
    assert str(allocate_subnet(pools, 24, ["10.77.0.0/24", "10.77.1.0/24"])) == "172.20.0.0/24"


def test_exhausted_pool_is_a_clear_error():
    taken = [f"10.77.0.{n * 16}/28" for n in range(16)]
    with pytest.raises(PoolExhausted) as exhausted:
        allocate_subnet(["10.77.0.0/24"], 28, taken)
    assert exhausted.value.field == "pools"
    assert "all 16 /28 subnets of 10.77.0.0/24 are taken" in str(exhausted.value)


@pytest.mark.parametrize(
    ("field", "pools", "prefix_length", "taken"),
    [
        ("pools", [], 24, []),
        ("pools", "10.77.0.0/16", 24, []),
        ("pools[0]", ["10.77.0.1/16"], 24, []),
        ("pools[0]", ["10.77.0.0/33"], 24, []),
        ("pools[0]", [" 10.77.0.0/16"], 24, []),
        ("pools[0]", ["fd00::/48"], 24, []),
        ("pools[0]", [None], 24, []),
        ("pools[0]", ["8.8.0.0/16"], 24, []),
        ("pools[0]", ["127.0.0.0/16"], 24, []),
        ("pools[0]", ["169.254.0.0/16"], 24, []),
        ("pools[0]", ["10.77.0.0/25"], 24, []),
        ("pools[1]", [POOL, "10.77.128.0/17"], 24, []),
        ("pools[2]", [POOL, "172.20.0.0/16", "10.0.0.0/8"], 24, []),
        ("prefix_length", [POOL], 7, []),
        ("prefix_length", [POOL], 29, []),
        ("prefix_length", [POOL], "24", []),
        ("prefix_length", [POOL], True, []),
        ("taken[1]", [POOL], 24, ["10.77.0.0/24", "10.77.1.7/24"]),
        ("taken[0]", [POOL], 24, ["bogus"]),
    ],
)
def test_misconfiguration_is_refused_naming_the_field(field, pools, prefix_length, taken):
    with pytest.raises(PoolMisconfigured) as refused:
        allocate_subnet(pools, prefix_length, taken)
    assert refused.value.field == field


# --- properties -------------------------------------------------------------

# Small pools keep the brute-force oracle cheap while covering every shape.
pool_prefixes = st.integers(min_value=20, max_value=26)


@st.composite
def scenarios(draw):
    pool_prefix = draw(pool_prefixes)
    pool = ipaddress.IPv4Network((0x0A4D0000, 16)).subnets(new_prefix=pool_prefix)
    pool = next(pool)
    prefix_length = draw(st.integers(min_value=pool_prefix, max_value=28))
    taken = draw(
        st.lists(
            st.builds(
                lambda offset, size: ipaddress.IPv4Network(
                    (
                        int(pool.network_address)
                        + offset // (1 << (32 - size)) * (1 << (32 - size)),
                        size,
                    )
                ),
                st.integers(min_value=0, max_value=pool.num_addresses - 1),
                st.integers(min_value=pool_prefix, max_value=30),
            ),
            max_size=12,
        )
    )
    return pool, prefix_length, [str(subnet) for subnet in taken]


def brute_force(pool, prefix_length, taken):
    taken_networks = [ipaddress.IPv4Network(t) for t in taken]
    for candidate in pool.subnets(new_prefix=prefix_length):
        if not any(candidate.overlaps(t) for t in taken_networks):
            return candidate
    return None


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_allocation_is_the_lowest_free_subnet(scenario):
    pool, prefix_length, taken = scenario
    expected = brute_force(pool, prefix_length, taken)
    if expected is None:
        with pytest.raises(PoolExhausted):
            allocate_subnet([str(pool)], prefix_length, taken)
        return
    allocated = allocate_subnet([str(pool)], prefix_length, taken)
    assert allocated == expected
    assert allocated.subnet_of(pool) and allocated.prefixlen == prefix_length
    assert not any(allocated.overlaps(ipaddress.IPv4Network(t)) for t in taken)
    # Deterministic: the same inputs in any order give the same answer.
    assert allocate_subnet([str(pool)], prefix_length, list(reversed(taken))) == allocated


@settings(max_examples=60, deadline=None)
@given(pool_prefixes, st.integers(min_value=26, max_value=28), st.randoms(use_true_random=False))
def test_repeated_allocations_never_overlap_until_exhausted(pool_prefix, prefix_length, random):
    """Allocate, release some at random, allocate again: no two live subnets overlap
    and the pool is full only when every subnet is live."""
    pool = f"10.77.0.0/{pool_prefix}"
    capacity = 1 << (prefix_length - pool_prefix)
    live: list[ipaddress.IPv4Network] = []
    for _step in range(min(capacity + 4, 80)):
        if live and random.random() < 0.2:
            live.remove(random.choice(live))
        try:
            subnet = allocate_subnet([pool], prefix_length, live)
        except PoolExhausted:
            assert len(live) == capacity
            continue
        assert all(not subnet.overlaps(other) for other in live)
        live.append(subnet)
