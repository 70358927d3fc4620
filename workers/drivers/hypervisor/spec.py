"""Validated descriptions of what the driver builds: domains and their
networks, and environment networks with their DHCP and DNS records.

Each ``validate()`` passes every value through ``validation``; the XML is made
from these in ``config``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from .errors import InvalidSpec
from .validation import (
    LIBVIRT_OBJECT_NAME_PATTERN,
    STRATA_ID_PATTERN,
    require_absolute_path,
    require_dns_name,
    require_domain_name,
    require_host_in,
    require_int,
    require_mac,
    require_match,
    require_port,
    require_subnet,
    require_uuid,
)

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

NETWORK_NAME_PREFIX = "strata-"
BRIDGE_NAME_PREFIX = "sbr-"
# Linux refuses interface names longer than 15 bytes (IFNAMSIZ - 1).
MAX_BRIDGE_NAME_LENGTH = 15
BRIDGE_HASH_CHARS = MAX_BRIDGE_NAME_LENGTH - len(BRIDGE_NAME_PREFIX)
STRATA_DNS_SUFFIX = "strata"
EGRESS_MODES = ("nat", "route")
MIN_MTU, MAX_MTU = 1280, 9000
NETWORK_NAME_PATTERN = re.compile(rf"{NETWORK_NAME_PREFIX}[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}")


def require_virt_type(field_name: str, value: object) -> str:
    if value not in VIRT_TYPES:
        raise InvalidSpec(field_name, f"must be one of {VIRT_TYPES}, got {value!r}")
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
    """A NIC on a libvirt network (``network``) or a host bridge (``bridge``):
    a domain's only NIC, or its ``segment`` NIC beside a user-mode one."""

    network: str | None = None
    bridge: str | None = None
    mac_address: str | None = None

    def validate(self, field_name: str = "network") -> None:
        if (self.network is None) == (self.bridge is None):
            raise InvalidSpec(field_name, "give exactly one of network or bridge")
        if self.network is not None:
            require_match(
                f"{field_name}.network", self.network, LIBVIRT_OBJECT_NAME_PATTERN, "a network name"
            )
        if self.bridge is not None:
            require_match(
                f"{field_name}.bridge", self.bridge, LIBVIRT_OBJECT_NAME_PATTERN, "a bridge"
            )
        if self.mac_address is not None:
            require_mac(f"{field_name}.mac_address", self.mac_address)


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
    # The environment's segment, as a second NIC: management SSH and published
    # ports stay on ``network`` (user-mode loopback forwards on a trial machine).
    segment: LibvirtNetwork | None = None
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
        require_virt_type("virt_type", self.virt_type)
        require_int("tb_cache_mib", self.tb_cache_mib, 1, MAX_TB_CACHE_MIB)
        require_cpu_mode("cpu_mode", self.cpu_mode)
        if not isinstance(self.network, UserNetwork | LibvirtNetwork):
            raise InvalidSpec("network", "must be a UserNetwork or a LibvirtNetwork")
        self.network.validate()
        if self.segment is not None:
            if not isinstance(self.segment, LibvirtNetwork):
                raise InvalidSpec("segment", "must be a LibvirtNetwork")
            self.segment.validate("segment")
        if self.kernel_boot is not None:
            if not isinstance(self.kernel_boot, KernelBoot):
                raise InvalidSpec("kernel_boot", "must be a KernelBoot")
            self.kernel_boot.validate()
        return self


# --- environment networks ----------------------------------------------------


def _hash_bytes(value: str, size: int) -> bytes:
    return hashlib.blake2b(value.encode(), digest_size=size).digest()


def network_name_for(environment_id: str) -> str:
    """The libvirt network name of an environment: readable, with Strata's prefix."""
    require_match("environment_id", environment_id, STRATA_ID_PATTERN, "a Strata id")
    return NETWORK_NAME_PREFIX + environment_id


def bridge_name_for(environment_id: str) -> str:
    """A 15-character bridge name from the environment id (60 bits of its hash)."""
    require_match("environment_id", environment_id, STRATA_ID_PATTERN, "a Strata id")
    digest = base64.b32encode(_hash_bytes(environment_id, 10)).decode().lower()
    return BRIDGE_NAME_PREFIX + digest[:BRIDGE_HASH_CHARS]


def mac_address_for(vm_id: str) -> str:
    """A fixed MAC under QEMU's 52:54:00 prefix from the VM id (24 bits of its hash).

    Uniqueness inside one segment is checked by NetworkSpec.validate, which
    refuses two hosts with one MAC.
    """
    require_match("vm_id", vm_id, STRATA_ID_PATTERN, "a Strata id")
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in _hash_bytes(vm_id, 3))


@dataclass(frozen=True)
class DhcpHost:
    """A static lease: the VM with ``mac_address`` always gets ``ip`` and ``hostname``."""

    mac_address: str
    ip: str
    hostname: str

    def validate(self, field_name: str, subnet: ipaddress.IPv4Network) -> None:
        require_mac(f"{field_name}.mac_address", self.mac_address)
        require_host_in(f"{field_name}.ip", self.ip, subnet)
        require_domain_name(f"{field_name}.hostname", self.hostname)


@dataclass(frozen=True)
class DnsHost:
    """An address record: each of ``hostnames`` resolves to ``ip`` inside the segment."""

    ip: str
    hostnames: tuple[str, ...]

    def validate(self, field_name: str, subnet: ipaddress.IPv4Network) -> None:
        require_host_in(f"{field_name}.ip", self.ip, subnet)
        if not isinstance(self.hostnames, tuple) or not self.hostnames:
            raise InvalidSpec(f"{field_name}.hostnames", "must be a non-empty tuple of names")
        for index, hostname in enumerate(self.hostnames):
            require_dns_name(f"{field_name}.hostnames[{index}]", hostname)
        if len(set(self.hostnames)) != len(self.hostnames):
            raise InvalidSpec(f"{field_name}.hostnames", "names a host twice")


@dataclass(frozen=True)
class NetworkSpec:
    """One environment's segment.

    ``uuid`` is the environment's network UUID, so a re-run job finds the
    network an earlier run defined. ``dhcp_range`` is for NICs without a
    static entry; static hosts must lie outside it, so a dynamic lease can
    never take the address of a VM that is switched off.
    """

    environment_id: str
    uuid: str
    environment_name: str
    team_name: str
    subnet: str
    dhcp_range: tuple[str, str]
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    dns_hosts: tuple[DnsHost, ...] = ()
    egress: str | None = None
    mtu: int | None = None

    @property
    def name(self) -> str:
        return network_name_for(self.environment_id)

    @property
    def bridge(self) -> str:
        return bridge_name_for(self.environment_id)

    @property
    def gateway(self) -> str:
        """The host's address on the segment: the subnet's first host address."""
        return str(next(require_subnet("subnet", self.subnet).hosts()))

    @property
    def domain(self) -> str:
        return f"{self.environment_name}.{self.team_name}.{STRATA_DNS_SUFFIX}"

    def validate(self) -> NetworkSpec:
        network_name_for(self.environment_id)
        require_uuid("uuid", self.uuid)
        require_domain_name("environment_name", self.environment_name)
        require_domain_name("team_name", self.team_name)
        require_dns_name("domain", self.domain)
        subnet = require_subnet("subnet", self.subnet)
        if self.egress is not None and self.egress not in EGRESS_MODES:
            raise InvalidSpec(
                "egress", f"must be None or one of {EGRESS_MODES}, got {self.egress!r}"
            )
        if self.mtu is not None:
            require_int("mtu", self.mtu, MIN_MTU, MAX_MTU)
        start, end = self._validate_range(subnet)
        self._validate_dhcp_hosts(subnet, start, end)
        self._validate_dns_hosts(subnet)
        return self

    def _validate_range(
        self, subnet: ipaddress.IPv4Network
    ) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        if not isinstance(self.dhcp_range, tuple) or len(self.dhcp_range) != 2:
            raise InvalidSpec("dhcp_range", "must be a (start, end) tuple")
        start = require_host_in("dhcp_range[0]", self.dhcp_range[0], subnet)
        end = require_host_in("dhcp_range[1]", self.dhcp_range[1], subnet)
        if start > end:
            raise InvalidSpec("dhcp_range", f"starts after it ends: {start} > {end}")
        gateway = ipaddress.IPv4Address(self.gateway)
        if start <= gateway <= end:
            raise InvalidSpec("dhcp_range", f"must not contain the gateway {gateway}")
        return start, end

    def _validate_dhcp_hosts(
        self,
        subnet: ipaddress.IPv4Network,
        start: ipaddress.IPv4Address,
        end: ipaddress.IPv4Address,
    ) -> None:
        if not isinstance(self.dhcp_hosts, tuple):
            raise InvalidSpec("dhcp_hosts", "must be a tuple of DhcpHost")
        taken: dict[str, set[str]] = {"mac_address": set(), "ip": {self.gateway}, "hostname": set()}
        for index, host in enumerate(self.dhcp_hosts):
            name = f"dhcp_hosts[{index}]"
            if not isinstance(host, DhcpHost):
                raise InvalidSpec(name, "must be a DhcpHost")
            host.validate(name, subnet)
            if start <= ipaddress.IPv4Address(host.ip) <= end:
                raise InvalidSpec(f"{name}.ip", f"{host.ip} lies in the dynamic range")
            for attribute, seen in taken.items():
                value = getattr(host, attribute)
                if value in seen:
                    raise InvalidSpec(f"{name}.{attribute}", f"{value} is already taken")
                seen.add(value)

    def _validate_dns_hosts(self, subnet: ipaddress.IPv4Network) -> None:
        if not isinstance(self.dns_hosts, tuple):
            raise InvalidSpec("dns_hosts", "must be a tuple of DnsHost")
        ips: set[str] = set()
        hostnames: set[str] = set()
        for index, host in enumerate(self.dns_hosts):
            name = f"dns_hosts[{index}]"
            if not isinstance(host, DnsHost):
                raise InvalidSpec(name, "must be a DnsHost")
            host.validate(name, subnet)
            # libvirt keys a record by its address and by each of its names.
            if host.ip in ips:
                raise InvalidSpec(f"{name}.ip", f"{host.ip} has a record already")
            if hostnames & set(host.hostnames):
                raise InvalidSpec(f"{name}.hostnames", "a name has a record already")
            ips.add(host.ip)
            hostnames.update(host.hostnames)


def default_dhcp_range(subnet: str) -> tuple[str, str]:
    """The upper half of the subnet's hosts: the lower half is for static leases."""
    hosts = list(require_subnet("subnet", subnet).hosts())
    return str(hosts[len(hosts) // 2]), str(hosts[-1])
