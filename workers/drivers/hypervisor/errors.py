"""Typed errors of the hypervisor driver.

The job layer decides on retries from the type alone: errors marked
``transient`` (the host or the connection to it went away) are worth
retrying with backoff; everything else needs a changed input or a human.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import libvirt


class HypervisorError(Exception):
    """Any failure of the hypervisor driver."""

    transient = False


class NotFound(HypervisorError):
    """A domain, volume, pool or snapshot that does not exist."""


class InvalidSpec(HypervisorError):
    """A value refused before it reaches libvirt; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidState(HypervisorError):
    """The operation does not fit the object's current state (e.g. resize while running)."""


class HostUnreachable(HypervisorError):
    """The libvirt URI could not be opened."""

    transient = True


class ConnectionLost(HypervisorError):
    """An open connection to libvirtd broke mid-operation."""

    transient = True


class OperationTimeout(HypervisorError):
    """A bounded wait ran out; ``last_error`` is the last failure seen while waiting."""

    transient = True

    def __init__(self, message: str, last_error: BaseException | None = None) -> None:
        detail = f" (last error: {last_error!r})" if last_error is not None else ""
        super().__init__(message + detail)
        self.last_error = last_error


_NOT_FOUND_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
        libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_DOMAIN_METADATA,
    }
)
_CONNECTION_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    }
)
_CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
_STATE_CODES = frozenset({libvirt.VIR_ERR_OPERATION_INVALID})


def translate(error: libvirt.libvirtError) -> HypervisorError:
    """Map a libvirtError onto the typed hierarchy, keeping libvirt's message."""
    code = error.get_error_code()
    message = error.get_error_message() or str(error)
    if code in _NOT_FOUND_CODES:
        return NotFound(message)
    if code in _CONNECTION_CODES or (
        code == libvirt.VIR_ERR_SYSTEM_ERROR and error.get_error_domain() in _CONNECTION_DOMAINS
    ):
        return ConnectionLost(message)
    if code in _STATE_CODES:
        return InvalidState(message)
    if code == libvirt.VIR_ERR_OPERATION_TIMEOUT:
        return OperationTimeout(message)
    return HypervisorError(message)


@contextlib.contextmanager
def libvirt_errors() -> Iterator[None]:
    """Re-raise any libvirtError inside the block as its typed counterpart."""
    try:
        yield
    except libvirt.libvirtError as error:
        raise translate(error) from error
