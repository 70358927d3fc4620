"""Every libvirt XML document Strata writes or reads: domains, storage pools,
volumes, snapshots and environment networks.

As in Nova's ``LibvirtConfig*`` classes, each document is a config object
whose ``element()`` builds the element tree and ``to_xml()`` renders it; the
parsers read libvirtd's answers back. Nothing here formats XML text: every
value goes in as an attribute or text node, so ElementTree escapes it, and
every value was validated before (a spec's ``validate()``, run once when its
config object is made).
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .spec import (
    HOST_PASSTHROUGH,
    NETWORK_NAME_PATTERN,
    DhcpHost,
    DnsHost,
    DomainSpec,
    LibvirtNetwork,
    NetworkSpec,
    UserNetwork,
    mac_address_for,
    network_name_for,
)
from .validation import STRATA_ID_PATTERN, require_mac, require_match, require_uuid

QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
STRATA_NAMESPACE = "https://strata.dev/xmlns/libvirt/domain/1.0"
STRATA_PREFIX = "strata"
# libvirt keys metadata by namespace URI and stores it under this prefix.
STRATA_METADATA_ROOT = "instance"
NETWORK_MARK_ROOT = "network"

ET.register_namespace("qemu", QEMU_NAMESPACE)
ET.register_namespace(STRATA_PREFIX, STRATA_NAMESPACE)

# On q35 the slirp NIC needs an explicit slot on the root bus; 0x10 is free
# (libvirt fills slots from 0x01) and gives the guest the stable name enp0s16.
USER_NIC_PCI_ADDRESS = "0x10"
USER_NETDEV_ID = "n0"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def parse_libvirt_xml(xml_text: str) -> ET.Element:
    # Only libvirtd's own output is parsed here, never a user's document.
    return ET.fromstring(xml_text)  # noqa: S314


class LibvirtConfig:
    """An XML document for libvirt; subclasses build its root in ``element()``."""

    def element(self) -> ET.Element:
        raise NotImplementedError

    def to_xml(self) -> str:
        return ET.tostring(self.element(), encoding="unicode")


# --- domains --------------------------------------------------------------------


@dataclass(frozen=True)
class StrataMetadata(LibvirtConfig):
    vm_id: str
    environment_id: str | None
    # The Strata installation that defined the domain (None: defined before
    # domains carried it, or by a driver given none); only it may sweep the domain.
    installation_id: str | None = None

    def element(self) -> ET.Element:
        root = ET.Element(f"{{{STRATA_NAMESPACE}}}{STRATA_METADATA_ROOT}")
        _sub(root, f"{{{STRATA_NAMESPACE}}}vm-id", self.vm_id)
        if self.environment_id is not None:
            _sub(root, f"{{{STRATA_NAMESPACE}}}environment-id", self.environment_id)
        if self.installation_id is not None:
            _sub(root, f"{{{STRATA_NAMESPACE}}}installation-id", self.installation_id)
        return root


def parse_metadata_element(xml_text: str) -> StrataMetadata:
    """Read Strata's metadata as libvirt returns it (namespace kept, prefix may vary)."""
    root = parse_libvirt_xml(xml_text)
    if root.tag.startswith("{") and root.tag != f"{{{STRATA_NAMESPACE}}}{STRATA_METADATA_ROOT}":
        raise ValueError(f"not Strata metadata: {root.tag}")

    # virDomainGetMetadata returns the element without its namespace declaration.
    def child_text(name: str) -> str | None:
        element = root.find(f"{{{STRATA_NAMESPACE}}}{name}")
        if element is None:
            element = root.find(name)
        return element.text if element is not None else None

    vm_id = child_text("vm-id")
    if not vm_id:
        raise ValueError("Strata metadata without vm-id")
    return StrataMetadata(
        vm_id=vm_id,
        environment_id=child_text("environment-id"),
        installation_id=child_text("installation-id"),
    )


def _os(domain: ET.Element, spec: DomainSpec) -> None:
    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="q35")
    if spec.kernel_boot is not None:
        _sub(os_element, "kernel", spec.kernel_boot.kernel_path)
        if spec.kernel_boot.initrd_path is not None:
            _sub(os_element, "initrd", spec.kernel_boot.initrd_path)
        _sub(os_element, "cmdline", spec.kernel_boot.cmdline)
    else:
        _sub(os_element, "boot", dev="hd")


def _features(domain: ET.Element, spec: DomainSpec) -> None:
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.virt_type == "qemu":
        # TCG's default translation cache is 1 GiB; 256 MiB halves qemu's RSS
        # and costs nothing measurable at boot.
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", str(spec.tb_cache_mib), unit="MiB")


def _kvm_cpu(domain: ET.Element, cpu_mode: str) -> None:
    if cpu_mode == HOST_PASSTHROUGH:
        _sub(domain, "cpu", mode=HOST_PASSTHROUGH, check="none")
        return
    # The named model exactly, or no start: a silently different CPU would
    # break the guests (and saved states) that rely on that model.
    cpu = _sub(domain, "cpu", mode="custom", match="exact", check="partial")
    _sub(cpu, "model", cpu_mode, fallback="forbid")


def _disks(devices: ET.Element, spec: DomainSpec) -> None:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    _sub(disk, "source", file=spec.disk_path)
    _sub(disk, "target", dev="vda", bus="virtio")
    if spec.seed_path is None:
        return
    # A read-only virtio disk, not a CD-ROM: the Debian cloud kernel has no
    # AHCI driver, so cloud-init never saw a SATA CD-ROM seed (measured: it
    # fell back to DataSourceNone). Every cloud kernel has virtio_blk.
    seed = _sub(devices, "disk", type="file", device="disk")
    _sub(seed, "driver", name="qemu", type="raw")
    _sub(seed, "source", file=spec.seed_path)
    _sub(seed, "target", dev="vdb", bus="virtio")
    _sub(seed, "readonly")


def interface_element(network: LibvirtNetwork) -> ET.Element:
    """A domain's NIC on a libvirt network or a host bridge."""
    if network.network is not None:
        interface = ET.Element("interface", type="network")
        _sub(interface, "source", network=network.network)
    else:
        interface = ET.Element("interface", type="bridge")
        _sub(interface, "source", bridge=network.bridge)
    if network.mac_address is not None:
        _sub(interface, "mac", address=network.mac_address)
    _sub(interface, "model", type="virtio")
    return interface


def user_netdev_argument(network: UserNetwork) -> str:
    """The -netdev value; only validated integers are interpolated."""
    forwards = "".join(
        f",hostfwd=tcp:127.0.0.1:{int(forward.host_port)}-:{int(forward.guest_port)}"
        for forward in network.all_forwards()
    )
    # restrict=on: the guest reaches nothing; only the forwards reach the guest.
    return f"user,id={USER_NETDEV_ID},restrict=on{forwards}"


def _qemu_commandline(domain: ET.Element, network: UserNetwork) -> None:
    # libvirt's own user-mode interface cannot forward ports without passt,
    # which Debian's libvirt 9.0 lacks; pass the netdev to QEMU directly.
    commandline = _sub(domain, f"{{{QEMU_NAMESPACE}}}commandline")
    for value in (
        "-netdev",
        user_netdev_argument(network),
        "-device",
        f"virtio-net-pci,netdev={USER_NETDEV_ID},bus=pcie.0,addr={USER_NIC_PCI_ADDRESS}",
    ):
        _sub(commandline, f"{{{QEMU_NAMESPACE}}}arg", value=value)


def _devices(domain: ET.Element, spec: DomainSpec) -> None:
    devices = _sub(domain, "devices")
    _disks(devices, spec)
    if isinstance(spec.network, LibvirtNetwork):
        devices.append(interface_element(spec.network))
    if spec.segment is not None:
        devices.append(interface_element(spec.segment))
    # A pty console stays reachable with `virsh console`; virtlogd copies it to the file.
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=spec.console_log_path, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    if spec.guest_agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    # Without an entropy source a TCG guest can stall early boot waiting for randomness.
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="virtio")


@dataclass(frozen=True)
class DomainConfig(LibvirtConfig):
    """The domain ``spec`` describes, marked as defined by ``installation_id``;
    making one raises InvalidSpec for any refused value."""

    spec: DomainSpec
    installation_id: str | None = None

    def __post_init__(self) -> None:
        self.spec.validate()
        if self.installation_id is not None:
            require_match("installation_id", self.installation_id, STRATA_ID_PATTERN, "a Strata id")

    def element(self) -> ET.Element:
        spec = self.spec
        domain = ET.Element("domain", type=spec.virt_type)
        _sub(domain, "name", spec.name)
        _sub(domain, "uuid", require_uuid("uuid", spec.uuid))
        # A VM generation ID device: libvirt gives it a new value on every restore,
        # and the guest kernel (vmgenid) reseeds its RNG when it changes.
        _sub(domain, "genid")
        metadata = StrataMetadata(spec.vm_id, spec.environment_id, self.installation_id)
        _sub(domain, "metadata").append(metadata.element())
        _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
        _sub(domain, "currentMemory", str(spec.memory_mib), unit="MiB")
        _sub(domain, "vcpu", str(spec.vcpus))
        _os(domain, spec)
        _features(domain, spec)
        if spec.virt_type == "kvm":
            _kvm_cpu(domain, spec.cpu_mode)
        _sub(domain, "clock", offset="utc")
        _sub(domain, "on_poweroff", "destroy")
        _sub(domain, "on_reboot", "restart")
        _sub(domain, "on_crash", "destroy")
        _devices(domain, spec)
        if isinstance(spec.network, UserNetwork):
            _qemu_commandline(domain, spec.network)
        return domain


def restored_domain_xml(saved_xml: str, config: DomainConfig) -> str:
    """The XML to restore a template's saved state as the domain of ``config``.

    The devices (and so the machine's ABI) stay the template's as libvirt
    saved them; the identity and the host-side paths become the new VM's:
    name, uuid, Strata metadata, its own disk (an overlay over the template's),
    console log, loopback forwards, and a fresh generation ID.
    """
    saved = parse_libvirt_xml(saved_xml)
    new = config.element()
    saved.attrib.pop("id", None)
    for tag in ("name", "uuid", "metadata", "genid", f"{{{QEMU_NAMESPACE}}}commandline"):
        old_element = saved.find(tag)
        index = list(saved).index(old_element) if old_element is not None else len(saved)
        if old_element is not None:
            saved.remove(old_element)
        new_element = new.find(tag)
        if new_element is not None:
            saved.insert(index, new_element)
    for disk in saved.findall("devices/disk"):
        if disk.find("target").get("dev") != "vda":
            continue
        disk.find("source").set("file", config.spec.disk_path)
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
    for log in saved.findall("devices/serial/log"):
        log.set("file", config.spec.console_log_path)
    for channel in saved.findall("devices/channel"):
        # libvirt names the agent's socket after the domain; let it name the new one.
        for source in channel.findall("source"):
            channel.remove(source)
    return ET.tostring(saved, encoding="unicode")


def disk_targets(domain_xml: str) -> list[tuple[str, bool]]:
    """(target device, read-only) of each disk of a domain."""
    return [
        (disk.find("target").get("dev"), disk.find("readonly") is not None)
        for disk in parse_libvirt_xml(domain_xml).findall("devices/disk")
    ]


# --- storage --------------------------------------------------------------------


@dataclass(frozen=True)
class PoolConfig(LibvirtConfig):
    """A directory storage pool."""

    name: str
    path: str

    def element(self) -> ET.Element:
        root = ET.Element("pool", type="dir")
        _sub(root, "name", self.name)
        _sub(_sub(root, "target"), "path", self.path)
        return root


@dataclass(frozen=True)
class VolumeConfig(LibvirtConfig):
    """A volume of ``volume_format``, empty at first; with ``backing_path`` a qcow2
    overlay on that base."""

    name: str
    capacity_bytes: int
    volume_format: str
    backing_path: str | None = None

    def element(self) -> ET.Element:
        root = ET.Element("volume")
        _sub(root, "name", self.name)
        _sub(root, "capacity", str(self.capacity_bytes), unit="bytes")
        _sub(root, "allocation", "0", unit="bytes")
        _sub(_sub(root, "target"), "format", type=self.volume_format)
        if self.backing_path is not None:
            backing = _sub(root, "backingStore")
            _sub(backing, "path", self.backing_path)
            _sub(backing, "format", type="qcow2")
        return root


def backing_path(volume_xml: str) -> str | None:
    return parse_libvirt_xml(volume_xml).findtext("backingStore/path")


def is_standalone_qcow2(volume_xml: str, size: int) -> bool:
    """A qcow2 volume of exactly ``size`` bytes on disk, with no backing file
    (a base with one would let a guest read another file)."""
    root = parse_libvirt_xml(volume_xml)
    physical = root.findtext("physical")
    return (
        root.find("target/format[@type='qcow2']") is not None
        and root.find("backingStore/path") is None
        and physical is not None
        and int(physical) == size
    )


# --- snapshots ------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotConfig(LibvirtConfig):
    """An internal snapshot of the domain's disks, given as (target, read-only)."""

    name: str
    disks: tuple[tuple[str, bool], ...]

    def element(self) -> ET.Element:
        root = ET.Element("domainsnapshot")
        _sub(root, "name", self.name)
        disks = _sub(root, "disks")
        for target, read_only in self.disks:
            # Internal snapshots live inside qcow2 files; the seed is raw.
            # libvirt 9.0 already skips read-only disks; saying so keeps it explicit.
            _sub(disks, "disk", name=target, snapshot="no" if read_only else "internal")
        return root


def snapshot_time_and_state(snapshot_xml: str) -> tuple[int, str]:
    root = parse_libvirt_xml(snapshot_xml)
    return int(root.findtext("creationTime") or 0), root.findtext("state") or ""


# --- environment networks -------------------------------------------------------


def dhcp_host_element(host: DhcpHost) -> ET.Element:
    return ET.Element("host", mac=host.mac_address, name=host.hostname, ip=host.ip)


def dns_host_element(host: DnsHost) -> ET.Element:
    element = ET.Element("host", ip=host.ip)
    for hostname in host.hostnames:
        _sub(element, "hostname", hostname)
    return element


def record_xml(record: DhcpHost | DnsHost) -> str:
    """One record as virNetworkUpdate takes it."""
    element = dns_host_element(record) if isinstance(record, DnsHost) else dhcp_host_element(record)
    return ET.tostring(element, encoding="unicode")


@dataclass(frozen=True)
class NetworkConfig(LibvirtConfig):
    """The libvirt ``<network>`` of an environment, marked with the installation
    that made it (only that one may sweep it); making one raises InvalidSpec for
    any refused value."""

    spec: NetworkSpec
    installation_id: str | None = None

    def __post_init__(self) -> None:
        self.spec.validate()
        if self.installation_id is not None:
            require_match("installation_id", self.installation_id, STRATA_ID_PATTERN, "a Strata id")

    def element(self) -> ET.Element:
        spec = self.spec
        network = ET.Element("network")
        _sub(network, "name", spec.name)
        _sub(network, "uuid", require_uuid("uuid", spec.uuid))
        if self.installation_id is not None:
            mark = _sub(_sub(network, "metadata"), f"{{{STRATA_NAMESPACE}}}{NETWORK_MARK_ROOT}")
            _sub(mark, f"{{{STRATA_NAMESPACE}}}installation-id", self.installation_id)
        if spec.egress is not None:
            _sub(network, "forward", mode=spec.egress)
        _sub(network, "bridge", name=spec.bridge, stp="on", delay="0")
        if spec.mtu is not None:
            _sub(network, "mtu", size=str(spec.mtu))
        # localOnly: names of the segment are answered here and never asked upstream.
        _sub(network, "domain", name=spec.domain, localOnly="yes")
        dns = _sub(network, "dns")
        for dns_host in spec.dns_hosts:
            dns.append(dns_host_element(dns_host))
        prefix = str(ipaddress.IPv4Network(spec.subnet).prefixlen)
        dhcp = _sub(_sub(network, "ip", address=spec.gateway, prefix=prefix), "dhcp")
        _sub(dhcp, "range", start=spec.dhcp_range[0], end=spec.dhcp_range[1])
        for dhcp_host in spec.dhcp_hosts:
            dhcp.append(dhcp_host_element(dhcp_host))
        return network


@dataclass(frozen=True)
class NetworkInterface(LibvirtConfig):
    """A VM's NIC on its environment's network, with a MAC fixed by the VM id."""

    network: str
    mac_address: str

    @classmethod
    def for_vm(cls, vm_id: str, environment_id: str) -> NetworkInterface:
        return cls(network_name_for(environment_id), mac_address_for(vm_id))

    def validate(self) -> NetworkInterface:
        require_match("network", self.network, NETWORK_NAME_PATTERN, "a Strata network name")
        require_mac("mac_address", self.mac_address)
        return self

    def element(self) -> ET.Element:
        self.validate()
        return interface_element(LibvirtNetwork(network=self.network, mac_address=self.mac_address))


def network_installation_id(network_xml: str) -> str | None:
    """The installation that marked the network; None for an unmarked one."""
    return parse_libvirt_xml(network_xml).findtext(
        f"metadata/{{{STRATA_NAMESPACE}}}{NETWORK_MARK_ROOT}/{{{STRATA_NAMESPACE}}}installation-id"
    )


def parse_dhcp_hosts(network_xml: str) -> tuple[DhcpHost, ...]:
    return tuple(
        DhcpHost(host.get("mac", ""), host.get("ip", ""), host.get("name", ""))
        for host in parse_libvirt_xml(network_xml).iterfind("ip/dhcp/host")
    )


def parse_dns_hosts(network_xml: str) -> tuple[DnsHost, ...]:
    return tuple(
        DnsHost(host.get("ip", ""), tuple(name.text or "" for name in host.iterfind("hostname")))
        for host in parse_libvirt_xml(network_xml).iterfind("dns/host")
    )


def network_bridge(network_xml: str) -> str:
    bridge = parse_libvirt_xml(network_xml).find("bridge")
    return bridge.get("name", "") if bridge is not None else ""


def network_subnet(network_xml: str) -> ipaddress.IPv4Network | None:
    """The network's IPv4 subnet; None when it has no address."""
    ip = parse_libvirt_xml(network_xml).find("ip")
    if ip is None:
        return None
    return ipaddress.IPv4Network(f"{ip.get('address')}/{ip.get('prefix')}", strict=False)


def network_structure(network_xml: str) -> dict[str, object]:
    """What cannot change on a defined network without recreating it."""
    root = parse_libvirt_xml(network_xml)
    forward, bridge, domain, mtu = (
        root.find(tag) for tag in ("forward", "bridge", "domain", "mtu")
    )
    ip = root.find("ip")
    dhcp_range = root.find("ip/dhcp/range")
    return {
        "uuid": root.findtext("uuid"),
        "egress": forward.get("mode") if forward is not None else None,
        "bridge": bridge.get("name") if bridge is not None else None,
        "mtu": mtu.get("size") if mtu is not None else None,
        "domain": domain.get("name") if domain is not None else None,
        "address": (ip.get("address"), ip.get("prefix")) if ip is not None else None,
        "dhcp_range": (dhcp_range.get("start"), dhcp_range.get("end"))
        if dhcp_range is not None
        else None,
    }
