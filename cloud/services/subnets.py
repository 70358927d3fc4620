"""Environment subnets from the operator's pools: pure functions, no models.

``allocate_subnet`` returns the lowest free, aligned subnet of the requested
size in the first pool that has one, so the same inputs always give the same
answer. It is not a lock: the caller serialises allocations (a row lock on
the pool setting, or a database exclusion constraint on the subnet column)
and passes every subnet already taken, live or not yet released.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPv4Network = ipaddress.IPv4Network
# An environment needs its gateway, some static leases and a dynamic range.
MIN_PREFIX_LENGTH, MAX_PREFIX_LENGTH = 8, 28


class SubnetError(ValueError):
    """A refused allocation; ``field`` names the setting or argument at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PoolMisconfigured(SubnetError):
    """The pools or the prefix length cannot be used as given (a 400)."""


class PoolExhausted(SubnetError):
    """Every subnet of the pools is taken (a 409)."""


def parse_network(field: str, value: object) -> IPv4Network:
    """An IPv4 network in canonical CIDR text (no host bits, no spaces)."""
    if isinstance(value, IPv4Network):
        return value
    if not isinstance(value, str):
        raise PoolMisconfigured(
            field, f"must be an IPv4 network such as 10.77.0.0/16, got {value!r}"
        )
    try:
        network = IPv4Network(value)
    except ValueError as error:
        raise PoolMisconfigured(field, f"is not an IPv4 network: {error}") from None
    if str(network) != value:
        raise PoolMisconfigured(field, f"must be written {network}, got {value!r}")
    return network


def parse_pools(pools: Sequence[object], prefix_length: object) -> list[IPv4Network]:
    """Validate the operator's pools against each other and the environment size."""
    if isinstance(prefix_length, bool) or not isinstance(prefix_length, int):
        raise PoolMisconfigured("prefix_length", f"must be an integer, got {prefix_length!r}")
    if not MIN_PREFIX_LENGTH <= prefix_length <= MAX_PREFIX_LENGTH:
        raise PoolMisconfigured(
            "prefix_length",
            f"must be between {MIN_PREFIX_LENGTH} and {MAX_PREFIX_LENGTH}, got {prefix_length}",
        )
    if isinstance(pools, str | bytes) or not pools:
        raise PoolMisconfigured("pools", "must be a non-empty list of networks")
    parsed: list[IPv4Network] = []
    for index, value in enumerate(pools):
        field = f"pools[{index}]"
        pool = parse_network(field, value)
        # Public space would hijack real addresses for the environment's VMs.
        if not pool.is_private or pool.is_loopback or pool.is_link_local or pool.is_multicast:
            raise PoolMisconfigured(field, f"{pool} is not a private (RFC 1918) range")
        if pool.prefixlen > prefix_length:
            raise PoolMisconfigured(
                field, f"{pool} is smaller than one /{prefix_length} environment subnet"
            )
        for other_index, other in enumerate(parsed):
            if pool.overlaps(other):
                raise PoolMisconfigured(field, f"{pool} overlaps pools[{other_index}] ({other})")
        parsed.append(pool)
    return parsed


def _taken_intervals(taken: Iterable[object], pool: IPv4Network) -> list[tuple[int, int]]:
    """Integer [first, last] address ranges of taken subnets that touch ``pool``, sorted."""
    intervals = []
    for index, value in enumerate(taken):
        subnet = parse_network(f"taken[{index}]", value)
        if subnet.overlaps(pool):
            intervals.append((int(subnet.network_address), int(subnet.broadcast_address)))
    return sorted(intervals)


def _first_free(
    pool: IPv4Network, prefix_length: int, intervals: list[tuple[int, int]]
) -> int | None:
    size = 1 << (32 - prefix_length)
    candidate = int(pool.network_address)
    pool_end = int(pool.broadcast_address)
    for first, last in intervals:
        if candidate + size - 1 < first:
            break
        if last >= candidate:
            # Round up past the taken range to the next aligned boundary.
            candidate = (last + 1 + size - 1) // size * size
        if candidate > pool_end:
            return None
    return candidate if candidate + size - 1 <= pool_end else None


def allocate_subnet(
    pools: Sequence[object], prefix_length: int, taken: Iterable[object]
) -> IPv4Network:
    """The next free ``/prefix_length`` subnet: lowest address of the first pool with room.

    Raises PoolMisconfigured (field ``pools[i]``, ``prefix_length`` or
    ``taken[i]``) for unusable input and PoolExhausted (field ``pools``) when
    nothing is free. Taken subnets outside every pool are ignored; ones that
    overlap a pool, of any size or alignment, are avoided.
    """
    parsed_pools = parse_pools(pools, prefix_length)
    taken = list(taken)
    for pool in parsed_pools:
        start = _first_free(pool, prefix_length, _taken_intervals(taken, pool))
        if start is not None:
            return IPv4Network((start, prefix_length))
    total = sum(pool.num_addresses >> (32 - prefix_length) for pool in parsed_pools)
    raise PoolExhausted(
        "pools",
        f"all {total} /{prefix_length} subnets of {', '.join(map(str, parsed_pools))} are taken",
    )
