"""The connection to one libvirtd, and what the host itself can give: capacity,
capabilities, hardware virtualisation; domains are looked up here for the
guest and snapshot drivers (Nova's ``Host``)."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from .errors import HostUnreachable, NotFound, libvirt_errors
from .spec import require_virt_type
from .validation import require_uuid
from .virt_detect import (
    KVM_DEVICE,
    QEMU_CONF,
    VirtSupport,
    cpu_virt_flags,
    decide,
    is_local_qemu,
    kvm_device_problem,
    qemu_identity,
    reports_kvm_domain,
)

# libvirt prints every error to stderr by default; we raise them instead.
libvirt.registerErrorHandler(lambda _context, _error: None, None)

# The architecture and machine every Strata domain uses.
ARCH, MACHINE = "x86_64", "q35"


@dataclass(frozen=True)
class HostCapacity:
    cpus: int
    memory_mib: int
    free_memory_mib: int


class Host:
    """One libvirtd at ``uri``, running ``virt_type`` domains."""

    def __init__(self, uri: str, virt_type: str = "qemu") -> None:
        self.virt_type = require_virt_type("virt_type", virt_type)
        self.uri = uri
        self._connection = self._open()

    def _open(self) -> libvirt.virConnect:
        try:
            return libvirt.open(self.uri)
        except libvirt.libvirtError as error:
            raise HostUnreachable(f"cannot open {self.uri}: {error.get_error_message()}") from error

    @property
    def connection(self) -> libvirt.virConnect:
        # A restarted libvirtd leaves this client closed (seen at its first call
        # after the restart, which fails as ConnectionLost): open a new one.
        try:
            alive = self._connection.isAlive()
        except libvirt.libvirtError:
            alive = False
        if not alive:
            self._connection = self._open()
        return self._connection

    def close(self) -> None:
        with libvirt_errors():
            self._connection.close()

    def domain(self, uuid: str) -> libvirt.virDomain:
        canonical = require_uuid("uuid", uuid)
        with libvirt_errors():
            return self.connection.lookupByUUIDString(canonical)

    def find_domain(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self.domain(uuid)
        except NotFound:
            return None

    def capacity(self) -> HostCapacity:
        with libvirt_errors():
            _model, memory_mib, cpus, *_rest = self.connection.getInfo()
            free_bytes = self.connection.getFreeMemory()
        return HostCapacity(cpus=cpus, memory_mib=memory_mib, free_memory_mib=free_bytes // 2**20)

    def warm_capabilities(self, virt_type: str | None = None) -> None:
        """Ask libvirtd for the host's capabilities and those of ``virt_type``'s
        (default: this host's) domains, so it probes QEMU now (seconds on a
        fresh host), not in the first job's define. A driver without domain
        capabilities (test) is fine."""
        virt_type = require_virt_type("virt_type", virt_type or self.virt_type)
        with libvirt_errors():
            self.connection.getCapabilities()
            try:
                self.connection.getDomainCapabilities(None, ARCH, MACHINE, virt_type, 0)
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise

    def detect_virtualisation(
        self, kvm_device: str = KVM_DEVICE, qemu_conf: str = QEMU_CONF
    ) -> VirtSupport:
        """What hardware virtualisation this host can do and the domain type to
        use (see ``virt_detect``). ``kvm_device`` and ``qemu_conf`` are checked
        only when the host is this machine's QEMU driver."""
        with libvirt_errors():
            flags = cpu_virt_flags(self.connection.getCapabilities())
            uri = self.connection.getURI()
        try:
            kvm_domain = reports_kvm_domain(
                self.connection.getDomainCapabilities(None, ARCH, MACHINE, "kvm", 0)
            )
        except libvirt.libvirtError:
            # Unsupported by the driver, or no usable KVM: both mean no kvm domains.
            kvm_domain = False
        device_checked = is_local_qemu(uri)
        device_problem = None
        if device_checked:
            try:
                device_problem = kvm_device_problem(qemu_identity(qemu_conf), kvm_device)
            except KeyError as error:
                device_problem = f"libvirt's QEMU user or group does not exist: {error}"
        return decide(flags, kvm_domain, device_problem, device_checked)
