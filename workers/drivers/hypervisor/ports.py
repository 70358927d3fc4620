"""Loopback ports for user-mode networking forwards."""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection

from .errors import HypervisorError

LOOPBACK = "127.0.0.1"
# Stay clear of the kernel's ephemeral range (32768-60999 by default) so an
# outgoing connection cannot grab a port between allocation and VM start.
PORT_RANGE = range(20000, 32768)


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def find_free_loopback_ports(
    count: int,
    exclude: Collection[int] = (),
    port_range: range = PORT_RANGE,
) -> list[int]:
    """``count`` ports on 127.0.0.1 that are free now and not in ``exclude``.

    ``exclude`` holds the ports already allocated to VMs (running or not): a
    stopped VM's forwards are not bound, yet they are taken.
    """
    excluded = set(exclude)
    found: list[int] = []
    for port in port_range:
        if port in excluded or not _is_free(port):
            continue
        found.append(port)
        if len(found) == count:
            return found
    raise HypervisorError(f"no {count} free loopback ports in {port_range}")


def claim_loopback_port(
    claim: Callable[[int], bool],
    taken: Callable[[], Collection[int]],
    *,
    rounds: int = 5,
    batch: int = 5,
    port_range: range = PORT_RANGE,
) -> int:
    """The first free port that ``claim`` records for the caller.

    ``claim(port)`` returns False when another allocator recorded that port
    first (a unique constraint refused it); the next candidate is tried, and
    after each batch ``taken()`` is read again.  The one allocator of forwards
    for SSH and for published ports, so concurrent jobs never share a port.
    """
    for _ in range(rounds):
        for port in find_free_loopback_ports(batch, exclude=taken(), port_range=port_range):
            if claim(port):
                return port
    raise HypervisorError(f"every free loopback port tried in {port_range} was taken first")
