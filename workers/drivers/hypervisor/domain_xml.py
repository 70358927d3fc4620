"""Domain XML as an element tree, from a validated DomainSpec.

Nothing here formats XML text: every value goes in as an attribute or text
node, so ElementTree escapes it, and every value was validated before.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .spec import (
    HOST_PASSTHROUGH,
    STRATA_ID_PATTERN,
    DomainSpec,
    LibvirtNetwork,
    UserNetwork,
    require_match,
    require_uuid,
)

QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
STRATA_NAMESPACE = "https://strata.dev/xmlns/libvirt/domain/1.0"
STRATA_PREFIX = "strata"
# libvirt keys metadata by namespace URI and stores it under this prefix.
STRATA_METADATA_ROOT = "instance"

ET.register_namespace("qemu", QEMU_NAMESPACE)
ET.register_namespace(STRATA_PREFIX, STRATA_NAMESPACE)

# On q35 the slirp NIC needs an explicit slot on the root bus; 0x10 is free
# (libvirt fills slots from 0x01) and gives the guest the stable name enp0s16.
USER_NIC_PCI_ADDRESS = "0x10"
USER_NETDEV_ID = "n0"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class StrataMetadata:
    vm_id: str
    environment_id: str | None
    # The Strata installation that defined the domain (None: defined before
    # domains carried it, or by a driver given none); only it may sweep the domain.
    installation_id: str | None = None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def build_metadata_element(metadata: StrataMetadata) -> ET.Element:
    root = ET.Element(f"{{{STRATA_NAMESPACE}}}{STRATA_METADATA_ROOT}")
    _sub(root, f"{{{STRATA_NAMESPACE}}}vm-id", metadata.vm_id)
    if metadata.environment_id is not None:
        _sub(root, f"{{{STRATA_NAMESPACE}}}environment-id", metadata.environment_id)
    if metadata.installation_id is not None:
        _sub(root, f"{{{STRATA_NAMESPACE}}}installation-id", metadata.installation_id)
    return root


def parse_libvirt_xml(xml_text: str) -> ET.Element:
    # Only libvirtd's own output is parsed here, never a user's document.
    return ET.fromstring(xml_text)  # noqa: S314


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


def _libvirt_interface(devices: ET.Element, network: LibvirtNetwork) -> None:
    if network.network is not None:
        interface = _sub(devices, "interface", type="network")
        _sub(interface, "source", network=network.network)
    else:
        interface = _sub(devices, "interface", type="bridge")
        _sub(interface, "source", bridge=network.bridge)
    if network.mac_address is not None:
        _sub(interface, "mac", address=network.mac_address)
    _sub(interface, "model", type="virtio")


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
        _libvirt_interface(devices, spec.network)
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


def build_domain_xml(spec: DomainSpec, installation_id: str | None = None) -> str:
    """The domain XML for ``spec``, marked as defined by ``installation_id``;
    raises InvalidSpec for any refused value."""
    spec.validate()
    if installation_id is not None:
        require_match("installation_id", installation_id, STRATA_ID_PATTERN, "a Strata id")
    domain = ET.Element("domain", type=spec.virt_type)
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", require_uuid("uuid", spec.uuid))
    metadata = _sub(domain, "metadata")
    metadata.append(
        build_metadata_element(StrataMetadata(spec.vm_id, spec.environment_id, installation_id))
    )
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
    return ET.tostring(domain, encoding="unicode")
