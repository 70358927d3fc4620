"""The lifecycle of Strata's domains on one host (Nova's ``Guest``): define,
start, shut down, force off, reboot, resize, destroy, and what a domain
reports (state, stats, Strata's metadata).

Every step converges: re-running it after it succeeded, or after a crash
halfway, is safe.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import libvirt
import libvirt_qemu

from .config import (
    STRATA_NAMESPACE,
    USER_NETDEV_ID,
    DomainConfig,
    StrataMetadata,
    parse_metadata_element,
)
from .errors import HypervisorError, InvalidSpec, InvalidState, NotFound, libvirt_errors
from .host import Host
from .spec import DomainSpec
from .storage import Storage
from .validation import require_domain_name, require_port

SHUTDOWN_POLL_SECONDS = 0.5
# A guest still booting may miss the first ACPI event; ask again this often.
SHUTDOWN_REPEAT_SECONDS = 10.0
# Only metadata needs removing: internal snapshots and saved state go with the disk.
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)


class DomainState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
}


@dataclass(frozen=True)
class DomainStats:
    state: DomainState
    vcpus: int
    cpu_time_ns: int
    memory_mib: int
    max_memory_mib: int
    # Host memory actually used by QEMU; None when the domain is not running.
    rss_mib: int | None


@dataclass(frozen=True)
class StrataDomain:
    name: str
    uuid: str
    state: DomainState
    metadata: StrataMetadata


def _host_forwards(usernet_table: str) -> set[tuple[int, int]]:
    """(host port, guest port) pairs from QEMU's ``info usernet`` table, whose
    forward rows read ``TCP[HOST_FORWARD] [FD] 127.0.0.1 PORT 10.0.2.15 PORT ...``."""
    forwards = set()
    for line in usernet_table.splitlines():
        fields = line.split()
        if not fields or fields[0] != "TCP[HOST_FORWARD]" or "127.0.0.1" not in fields:
            continue
        at = fields.index("127.0.0.1")
        try:
            forwards.add((int(fields[at + 1]), int(fields[at + 3])))
        except (IndexError, ValueError):
            continue
    return forwards


def _force_off(domain: libvirt.virDomain) -> None:
    try:
        domain.destroy()
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
            raise


def _strata_metadata(domain: libvirt.virDomain) -> str:
    return domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, STRATA_NAMESPACE, 0)


class Guests:
    """Strata's domains on ``host``; ``destroy`` also removes their volumes from
    ``storage``. Domains are marked with ``installation_id``."""

    def __init__(self, host: Host, storage: Storage, installation_id: str | None) -> None:
        self._host = host
        self._storage = storage
        self._installation_id = installation_id

    def _config(self, spec: DomainSpec) -> DomainConfig:
        if spec.virt_type != self._host.virt_type:
            raise InvalidSpec("virt_type", f"this host runs {self._host.virt_type!r} domains")
        return DomainConfig(spec, self._installation_id)

    def _define(self, config: DomainConfig) -> None:
        with libvirt_errors():
            self._host.connection.defineXML(config.to_xml())

    def define(self, spec: DomainSpec) -> None:
        """Define (or redefine, same UUID and name) the domain described by ``spec``."""
        self._define(self._config(spec))

    def resize(self, spec: DomainSpec, *, vcpus: int, memory_mib: int) -> None:
        """Give the stopped domain of ``spec`` new vCPUs and memory: one
        redefinition from the spec with them, never an edit of its live XML."""
        config = self._config(replace(spec, vcpus=vcpus, memory_mib=memory_mib))
        domain = self._host.domain(spec.uuid)
        with libvirt_errors():
            if domain.isActive():
                raise InvalidState("resize needs the domain shut off")
        self._define(config)

    def state(self, uuid: str) -> DomainState:
        with libvirt_errors():
            return _STATES.get(self._host.domain(uuid).state(0)[0], DomainState.OTHER)

    def start(self, uuid: str) -> None:
        domain = self._host.domain(uuid)
        with libvirt_errors():
            if domain.isActive():
                if domain.state(0)[0] == libvirt.VIR_DOMAIN_PAUSED:
                    domain.resume()
                return
            domain.create()

    def shutdown(self, uuid: str, timeout: float = 60.0) -> bool:
        """Ask the guest to power off; force it off after ``timeout`` seconds.

        Returns True when the guest stopped by itself (or was not there at
        all), False when it had to be forced.
        """
        domain = self._host.find_domain(uuid)
        if domain is None:
            return True
        deadline = time.monotonic() + timeout
        next_request = 0.0
        with libvirt_errors():
            while domain.isActive():
                now = time.monotonic()
                if now >= deadline:
                    _force_off(domain)
                    return False
                if now >= next_request:
                    try:
                        domain.shutdown()
                    except libvirt.libvirtError as error:
                        # It may have stopped between the check and the request.
                        if error.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                            raise
                    next_request = now + SHUTDOWN_REPEAT_SECONDS
                time.sleep(SHUTDOWN_POLL_SECONDS)
        return True

    def force_off(self, uuid: str) -> None:
        domain = self._host.find_domain(uuid)
        if domain is not None:
            with libvirt_errors():
                _force_off(domain)

    def reboot(self, uuid: str) -> None:
        domain = self._host.domain(uuid)
        with libvirt_errors():
            if not domain.isActive():
                raise InvalidState("cannot reboot a domain that is not running")
            domain.reboot(0)

    def destroy(self, vm_name: str, uuid: str) -> None:
        """Remove the VM and everything it owns; whatever is already gone is skipped.

        Order matters for resuming: the domain goes first, so a crash leaves
        only unreferenced volumes, which a re-run (or the orphan scan) removes.
        """
        require_domain_name("name", vm_name)
        domain = self._host.find_domain(uuid)
        if domain is not None:
            with libvirt_errors():
                _force_off(domain)
                try:
                    domain.undefineFlags(UNDEFINE_FLAGS)
                except libvirt.libvirtError as error:
                    if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
        self._storage.delete_vm_volumes(vm_name)

    def add_live_port_forward(self, uuid: str, host_port: int, guest_port: int) -> None:
        """Forward 127.0.0.1:``host_port`` to the running guest's ``guest_port`` now.

        For ``user`` networking; QEMU keeps forwards only until it exits, so the
        caller also redefines the domain with the forward for later starts.
        Adding a forward that exists already is a no-op.
        """
        require_port("host_port", host_port)
        require_port("guest_port", guest_port)
        domain = self._host.domain(uuid)
        hmp = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        with libvirt_errors():
            if not domain.isActive():
                return
            table = libvirt_qemu.qemuMonitorCommand(domain, "info usernet", hmp)
            if (host_port, guest_port) in _host_forwards(table):
                return
            # Only validated integers reach the monitor command.
            answer = libvirt_qemu.qemuMonitorCommand(
                domain,
                f"hostfwd_add {USER_NETDEV_ID} tcp:127.0.0.1:{int(host_port)}-:{int(guest_port)}",
                hmp,
            )
        if answer.strip():
            raise HypervisorError(f"QEMU refused the forward {host_port}->{guest_port}: {answer}")

    def stats(self, uuid: str) -> DomainStats:
        domain = self._host.domain(uuid)
        with libvirt_errors():
            state, max_memory_kib, memory_kib, vcpus, cpu_time_ns = domain.info()
            rss_mib = None
            if domain.isActive():
                rss_kib = domain.memoryStats().get("rss")
                rss_mib = rss_kib // 1024 if rss_kib is not None else None
        return DomainStats(
            state=_STATES.get(state, DomainState.OTHER),
            vcpus=vcpus,
            cpu_time_ns=cpu_time_ns,
            memory_mib=memory_kib // 1024,
            max_memory_mib=max_memory_kib // 1024,
            rss_mib=rss_mib,
        )

    def metadata(self, uuid: str) -> StrataMetadata:
        domain = self._host.domain(uuid)
        with libvirt_errors():
            xml = _strata_metadata(domain)
        return parse_metadata_element(xml)

    def _strata_domains(self) -> Iterator[StrataDomain]:
        with libvirt_errors():
            domains = self._host.connection.listAllDomains(0)
        for domain in domains:
            try:
                with libvirt_errors():
                    xml = _strata_metadata(domain)
                    name, uuid, state = domain.name(), domain.UUIDString(), domain.state(0)[0]
            except NotFound:
                # Not Strata's, or undefined while we were listing.
                continue
            yield StrataDomain(
                name=name,
                uuid=uuid,
                state=_STATES.get(state, DomainState.OTHER),
                metadata=parse_metadata_element(xml),
            )

    def list(self) -> list[StrataDomain]:
        """Domains carrying Strata's metadata, running or not (for drift and orphans)."""
        return sorted(self._strata_domains(), key=lambda domain: domain.name)
