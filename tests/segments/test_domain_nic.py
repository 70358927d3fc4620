"""The domain's second NIC on its environment's network, beside the user-mode
NIC that carries management SSH and published ports."""

import xml.etree.ElementTree as ET

import pytest

from tests.hypervisor.conftest import make_spec
from tests.hypervisor.test_network import virt_xml_validate
from workers.drivers.hypervisor import DomainConfig, InvalidSpec, LibvirtNetwork, UserNetwork
from workers.drivers.hypervisor.config import QEMU_NAMESPACE
from workers.drivers.hypervisor.spec import mac_address_for, network_name_for

SEGMENT = LibvirtNetwork(network=network_name_for("ab12"), mac_address=mac_address_for("42"))


def test_the_segment_nic_sits_beside_the_user_mode_nic(tmp_path):
    xml_text = DomainConfig(make_spec(segment=SEGMENT)).to_xml()
    root = ET.fromstring(xml_text)  # noqa: S314 - our own output
    (nic,) = root.iterfind("devices/interface")
    assert nic.get("type") == "network"
    assert nic.find("source").get("network") == "strata-ab12"
    assert nic.find("mac").get("address") == mac_address_for("42")
    assert nic.find("model").get("type") == "virtio"
    arguments = [arg.get("value") for arg in root.iter(f"{{{QEMU_NAMESPACE}}}arg")]
    assert any(value.startswith("user,id=n0,restrict=on,hostfwd=") for value in arguments)
    virt_xml_validate(tmp_path, xml_text, "domain")


def test_without_a_segment_the_domain_has_only_the_user_mode_nic():
    root = ET.fromstring(DomainConfig(make_spec()).to_xml())  # noqa: S314
    assert root.find("devices/interface") is None


@pytest.mark.parametrize(
    "segment, field",
    [
        (UserNetwork(ssh_host_port=22002), "segment"),
        (LibvirtNetwork(), "segment"),
        (LibvirtNetwork(network="x'/><evil"), "segment.network"),
        (LibvirtNetwork(network="strata-ab12", mac_address="02:00:00:00:00:01"),
         "segment.mac_address"),
    ],
)
def test_a_bad_segment_nic_is_refused_naming_the_field(segment, field):
    with pytest.raises(InvalidSpec) as refused:
        DomainConfig(make_spec(segment=segment))
    assert refused.value.field == field
