"""Validated descriptions of what the driver builds: domains, disks, networks.

Every value that ends up in domain XML, a QEMU argument or a file path passes a
check here first; a refused value raises InvalidSpec naming the field, so an
API caller gets a clear 4xx and nothing is changed.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

from .errors import InvalidSpec

# A DNS label: usable as libvirt domain name, guest hostname and file-name stem.
DOMAIN_NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Strata ids (database keys, UUIDs) carried in the domain's metadata.
STRATA_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
LIBVIRT_OBJECT_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAC_PATTERN = re.compile(r"52:54:00(?::[0-9a-f]{2}){3}")
# Printable ASCII only: the command line goes to the guest kernel verbatim.
KERNEL_CMDLINE_PATTERN = re.compile(r"[\x20-\x7e]{1,1024}")

VIRT_TYPES = ("kvm", "qemu")
# On KVM a guest sees the host CPU as it is, or a named libvirt CPU model
# (stable across hosts with different CPUs, e.g. "Skylake-Client-IBRS").
HOST_PASSTHROUGH = "host-passthrough"
CPU_MODEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_VCPUS = 256
MAX_MEMORY_MIB = 4 * 1024 * 1024
MAX_TB_CACHE_MIB = 4096
SSH_GUEST_PORT = 22


def require_int(field_name: str, value: object, minimum: int, maximum: int) -> int:
    # bool is an int subclass; True must not pass as "1 vCPU".
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(field_name, f"must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise InvalidSpec(field_name, f"must be between {minimum} and {maximum}, got {value}")
    return value


def require_port(field_name: str, value: object) -> int:
    return require_int(field_name, value, 1, 65535)


def require_match(field_name: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidSpec(field_name, f"must be {what}, got {value!r}")
    return value


def require_domain_name(field_name: str, value: object) -> str:
    return require_match(
        field_name,
        value,
        DOMAIN_NAME_PATTERN,
        "1-63 lower-case letters, digits or inner hyphens",
    )


def require_uuid(field_name: str, value: object) -> str:
    """The canonical lower-case form of a UUID given as str or uuid.UUID."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            pass
        else:
            if str(parsed) == value.lower():
                return str(parsed)
    raise InvalidSpec(field_name, f"must be a UUID, got {value!r}")


def require_absolute_path(field_name: str, value: object) -> str:
    """An absolute, already-normalised path without control characters."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or os.path.normpath(value) != value
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in value)
        or len(value) > 4096
    ):
        raise InvalidSpec(field_name, f"must be a normalised absolute path, got {value!r}")
    return value


@dataclass(frozen=True)
class ForwardSpec:
    """A TCP port of the guest reachable at 127.0.0.1:host_port on the host."""

    host_port: int
    guest_port: int

    def validate(self, field_name: str) -> None:
        require_port(f"{field_name}.host_port", self.host_port)
        require_port(f"{field_name}.guest_port", self.guest_port)


@dataclass(frozen=True)
class UserNetwork:
    """QEMU user-mode networking: no inbound path except loopback port forwards.

    The guest's SSH port is always forwarded; ``forwards`` adds published
    service ports.
    """

    ssh_host_port: int
    forwards: tuple[ForwardSpec, ...] = ()

    def all_forwards(self) -> tuple[ForwardSpec, ...]:
        return (ForwardSpec(self.ssh_host_port, SSH_GUEST_PORT), *self.forwards)

    def validate(self) -> None:
        require_port("network.ssh_host_port", self.ssh_host_port)
        if not isinstance(self.forwards, tuple):
            raise InvalidSpec("network.forwards", "must be a tuple of ForwardSpec")
        seen: set[int] = set()
        for index, forward in enumerate(self.all_forwards()):
            name = "network.ssh_host_port" if index == 0 else f"network.forwards[{index - 1}]"
            if not isinstance(forward, ForwardSpec):
                raise InvalidSpec(name, "must be a ForwardSpec")
            forward.validate(name)
            if forward.host_port in seen:
                raise InvalidSpec(name, f"host port {forward.host_port} is forwarded twice")
            seen.add(forward.host_port)


@dataclass(frozen=True)
class LibvirtNetwork:
    """A NIC on a libvirt network (``network``) or a host bridge (``bridge``)."""

    network: str | None = None
    bridge: str | None = None
    mac_address: str | None = None

    def validate(self) -> None:
        if (self.network is None) == (self.bridge is None):
            raise InvalidSpec("network", "give exactly one of network or bridge")
        if self.network is not None:
            require_match(
                "network.network", self.network, LIBVIRT_OBJECT_NAME_PATTERN, "a network name"
            )
        if self.bridge is not None:
            require_match("network.bridge", self.bridge, LIBVIRT_OBJECT_NAME_PATTERN, "a bridge")
        if self.mac_address is not None:
            require_match(
                "network.mac_address", self.mac_address, MAC_PATTERN, "a 52:54:00:xx:xx:xx MAC"
            )


def require_cpu_mode(field_name: str, value: object) -> str:
    """HOST_PASSTHROUGH or a CPU model name (letters, digits, _ . -), matched whole."""
    return require_match(
        field_name, value, CPU_MODEL_PATTERN, f"{HOST_PASSTHROUGH!r} or a CPU model name"
    )


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: QEMU loads kernel and initrd from host files."""

    kernel_path: str
    initrd_path: str | None
    cmdline: str

    def validate(self) -> None:
        require_absolute_path("kernel_boot.kernel_path", self.kernel_path)
        if self.initrd_path is not None:
            require_absolute_path("kernel_boot.initrd_path", self.initrd_path)
        require_match(
            "kernel_boot.cmdline", self.cmdline, KERNEL_CMDLINE_PATTERN, "printable ASCII"
        )


@dataclass(frozen=True)
class DomainSpec:
    """Everything the domain XML is built from.

    ``uuid`` is the Strata VM's UUID and becomes the libvirt domain UUID, so a
    re-run job finds the domain an earlier run defined instead of adding one.
    """

    name: str
    uuid: str
    vm_id: str
    vcpus: int
    memory_mib: int
    disk_path: str
    console_log_path: str
    network: UserNetwork | LibvirtNetwork
    environment_id: str | None = None
    seed_path: str | None = None
    virt_type: str = "qemu"
    kernel_boot: KernelBoot | None = None
    tb_cache_mib: int = 256
    guest_agent: bool = True
    # KVM only: HOST_PASSTHROUGH or a CPU model name; TCG emulates its default CPU.
    cpu_mode: str = HOST_PASSTHROUGH

    def validate(self) -> DomainSpec:
        require_domain_name("name", self.name)
        require_uuid("uuid", self.uuid)
        require_match("vm_id", self.vm_id, STRATA_ID_PATTERN, "a Strata id")
        if self.environment_id is not None:
            require_match("environment_id", self.environment_id, STRATA_ID_PATTERN, "a Strata id")
        require_int("vcpus", self.vcpus, 1, MAX_VCPUS)
        require_int("memory_mib", self.memory_mib, 1, MAX_MEMORY_MIB)
        require_absolute_path("disk_path", self.disk_path)
        require_absolute_path("console_log_path", self.console_log_path)
        if self.seed_path is not None:
            require_absolute_path("seed_path", self.seed_path)
        if self.virt_type not in VIRT_TYPES:
            raise InvalidSpec("virt_type", f"must be one of {VIRT_TYPES}, got {self.virt_type!r}")
        require_int("tb_cache_mib", self.tb_cache_mib, 1, MAX_TB_CACHE_MIB)
        require_cpu_mode("cpu_mode", self.cpu_mode)
        if not isinstance(self.network, UserNetwork | LibvirtNetwork):
            raise InvalidSpec("network", "must be a UserNetwork or a LibvirtNetwork")
        self.network.validate()
        if self.kernel_boot is not None:
            if not isinstance(self.kernel_boot, KernelBoot):
                raise InvalidSpec("kernel_boot", "must be a KernelBoot")
            self.kernel_boot.validate()
        return self
