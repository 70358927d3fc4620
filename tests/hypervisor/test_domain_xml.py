"""The domain XML builder: structure, validation of hostile values, metadata."""

from __future__ import annotations

import dataclasses
import uuid
import xml.etree.ElementTree as ET

import pytest

from workers.drivers.hypervisor import (
    DomainConfig,
    ForwardSpec,
    InvalidSpec,
    KernelBoot,
    LibvirtNetwork,
    UserNetwork,
)
from workers.drivers.hypervisor.config import (
    QEMU_NAMESPACE,
    STRATA_NAMESPACE,
    parse_metadata_element,
)

from .conftest import make_spec

Q = f"{{{QEMU_NAMESPACE}}}"
S = f"{{{STRATA_NAMESPACE}}}"


def parse(spec) -> ET.Element:
    return ET.fromstring(DomainConfig(spec).to_xml())  # noqa: S314 - our own output


def test_basic_structure():
    root = parse(make_spec())
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == "web-1"
    assert root.findtext("uuid") == str(uuid.UUID(int=1))
    assert root.find("memory").attrib == {"unit": "MiB"} and root.findtext("memory") == "1024"
    assert root.findtext("vcpu") == "2"
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("features/acpi") is not None


def test_tcg_cache_only_for_qemu():
    tb_cache = parse(make_spec()).find("features/tcg/tb-cache")
    assert tb_cache.text == "256" and tb_cache.get("unit") == "MiB"
    kvm = parse(make_spec(virt_type="kvm"))
    assert kvm.get("type") == "kvm"
    assert kvm.find("features/tcg") is None
    assert kvm.find("cpu").get("mode") == "host-passthrough"


def test_direct_kernel_boot():
    os_element = parse(make_spec()).find("os")
    assert os_element.findtext("kernel") == "/var/lib/strata/images/d/vmlinuz"
    assert os_element.findtext("initrd") == "/var/lib/strata/images/d/initrd.img"
    assert os_element.findtext("cmdline") == "root=/dev/vda rw console=ttyS0 apparmor=0"
    assert os_element.find("boot") is None
    booted_from_disk = parse(make_spec(kernel_boot=None)).find("os")
    assert booted_from_disk.find("kernel") is None
    assert booted_from_disk.find("boot").get("dev") == "hd"


def test_disks_seed_as_readonly_virtio_disk():
    disks = parse(make_spec()).findall("devices/disk")
    assert [(d.get("device"), d.find("target").get("dev")) for d in disks] == [
        ("disk", "vda"),
        ("disk", "vdb"),
    ]
    assert disks[0].find("driver").get("type") == "qcow2"
    assert disks[0].find("target").get("bus") == "virtio"
    assert disks[1].find("driver").get("type") == "raw"
    assert disks[1].find("readonly") is not None
    assert disks[1].find("source").get("file") == "/var/lib/strata/volumes/web-1.seed.iso"
    assert len(parse(make_spec(seed_path=None)).findall("devices/disk")) == 1


def test_serial_console_logs_to_file():
    serial = parse(make_spec()).find("devices/serial")
    assert serial.find("log").get("file") == "/var/lib/strata/console/web-1.log"


def test_user_network_forwards_through_qemu_commandline():
    network = UserNetwork(ssh_host_port=22001, forwards=(ForwardSpec(28080, 80),))
    root = parse(make_spec(network=network))
    assert root.find("devices/interface") is None
    arguments = [arg.get("value") for arg in root.findall(f"{Q}commandline/{Q}arg")]
    assert arguments == [
        "-netdev",
        "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:22001-:22,hostfwd=tcp:127.0.0.1:28080-:80",
        "-device",
        "virtio-net-pci,netdev=n0,bus=pcie.0,addr=0x10",
    ]


@pytest.mark.parametrize(
    "network, source",
    [
        (LibvirtNetwork(network="default"), {"network": "default"}),
        (LibvirtNetwork(bridge="br0", mac_address="52:54:00:12:34:56"), {"bridge": "br0"}),
    ],
)
def test_libvirt_network_interface(network, source):
    root = parse(make_spec(network=network))
    interface = root.find("devices/interface")
    assert interface.find("source").attrib == source
    assert interface.find("model").get("type") == "virtio"
    assert root.find(f"{Q}commandline") is None
    if network.mac_address:
        assert interface.find("mac").get("address") == network.mac_address


def test_metadata_round_trip():
    element = parse(make_spec()).find(f"metadata/{S}instance")
    assert element.findtext(f"{S}vm-id") == "42"
    metadata = parse_metadata_element(ET.tostring(element, encoding="unicode"))
    assert (metadata.vm_id, metadata.environment_id) == ("42", "7")
    # libvirt's virDomainGetMetadata hands the element back without its namespace.
    bare = parse_metadata_element("<instance><vm-id>42</vm-id></instance>")
    assert (bare.vm_id, bare.environment_id) == ("42", None)


HOSTILE_STRINGS = [
    "a'><devices>",
    "../../etc",
    "web\n1",
    "a" * 64,
    "",
    "Web-1",
    "-web",
    "web 1",
    "wéb",
]


@pytest.mark.parametrize("value", HOSTILE_STRINGS)
def test_hostile_names_are_rejected(value):
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(name=value)).to_xml()
    assert error.value.field == "name"


@pytest.mark.parametrize("value", ["a'><x>", "../1", "1\n2", "", "x" * 65, 7])
def test_hostile_ids_are_rejected(value):
    for field in ("vm_id", "environment_id"):
        with pytest.raises(InvalidSpec) as error:
            DomainConfig(make_spec(**{field: value})).to_xml()
        assert error.value.field == field


@pytest.mark.parametrize("value", [0, -1, 10**9, 2.5, "2", True, None])
def test_bad_sizes_are_rejected(value):
    for field in ("vcpus", "memory_mib"):
        with pytest.raises(InvalidSpec) as error:
            DomainConfig(make_spec(**{field: value})).to_xml()
        assert error.value.field == field


@pytest.mark.parametrize("port", [0, -22, 65536, 10**6, "22", 22.0, True])
def test_bad_ports_are_rejected(port):
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(network=UserNetwork(ssh_host_port=port))).to_xml()
    assert error.value.field == "network.ssh_host_port"
    forward = UserNetwork(ssh_host_port=22001, forwards=(ForwardSpec(port, 80),))
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(network=forward)).to_xml()
    assert error.value.field == "network.forwards[0].host_port"


def test_port_forwarded_twice_is_rejected():
    network = UserNetwork(ssh_host_port=22001, forwards=(ForwardSpec(22001, 80),))
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(network=network)).to_xml()
    assert error.value.field == "network.forwards[0]"


@pytest.mark.parametrize(
    "field, value",
    [
        ("uuid", "not-a-uuid"),
        ("uuid", "00000000-0000-0000-0000-000000000001'"),
        ("disk_path", "relative/disk.qcow2"),
        ("disk_path", "/var/lib/strata/../../etc/shadow"),
        ("seed_path", "/var/lib/strata/seed\n.iso"),
        ("console_log_path", "/var/lib//x.log"),
        ("virt_type", "xen"),
        ("tb_cache_mib", 0),
    ],
)
def test_other_hostile_values_are_rejected(field, value):
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(**{field: value})).to_xml()
    assert error.value.field == field


@pytest.mark.parametrize(
    "kernel_boot, field",
    [
        (KernelBoot("vmlinuz", None, "ro"), "kernel_boot.kernel_path"),
        (KernelBoot("/k", "/../i", "ro"), "kernel_boot.initrd_path"),
        (KernelBoot("/k", None, "ro\ninit=/bin/sh"), "kernel_boot.cmdline"),
        (KernelBoot("/k", None, ""), "kernel_boot.cmdline"),
    ],
)
def test_hostile_kernel_boot_is_rejected(kernel_boot, field):
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(kernel_boot=kernel_boot)).to_xml()
    assert error.value.field == field


@pytest.mark.parametrize(
    "network, field",
    [
        (LibvirtNetwork(), "network"),
        (LibvirtNetwork(network="a", bridge="b"), "network"),
        (LibvirtNetwork(network="def'ault"), "network.network"),
        (LibvirtNetwork(bridge="br0\n"), "network.bridge"),
        (LibvirtNetwork(network="default", mac_address="ff:ff:ff:ff:ff:ff"), "network.mac_address"),
    ],
)
def test_hostile_libvirt_network_is_rejected(network, field):
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(network=network)).to_xml()
    assert error.value.field == field


def test_markup_in_values_stays_text():
    # Values that pass validation still reach libvirt only as escaped text.
    spec = make_spec(
        kernel_boot=KernelBoot("/k", None, "console=ttyS0 x=<devices/>&'\""),
    )
    root = parse(spec)
    assert root.findtext("os/cmdline") == "console=ttyS0 x=<devices/>&'\""
    assert root.find("os/cmdline/devices") is None


def test_spec_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_spec().name = "other"  # type: ignore[misc]
