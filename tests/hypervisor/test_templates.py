"""Restoring a template as a new VM: the state file's header rewritten with the
new domain's identity (libvirt's restore refuses a new name or uuid in a dxml),
the machine's devices kept as saved, and a state without memory refused."""

import uuid
import xml.etree.ElementTree as ET

import pytest

from tests.hypervisor.conftest import make_spec
from workers.drivers.hypervisor import DomainConfig, StateFileInvalid
from workers.drivers.hypervisor.config import parse_libvirt_xml, restored_domain_xml
from workers.drivers.hypervisor.templates import SAVE_HEADER, SAVE_MAGIC, SavedHeader

TEMPLATE_UUID = str(uuid.UUID(int=7))


def saved_template_xml() -> str:
    """The template's domain as libvirt saves it: live ids, a backing chain,
    the agent socket's path and a generation id of its own."""
    spec = make_spec(
        name="tmpl-1",
        uuid=TEMPLATE_UUID,
        disk_path="/var/lib/strata/volumes/tmpl-1.template.qcow2",
        console_log_path="/var/lib/strata/console/tmpl-1.log",
    )
    root = DomainConfig(spec).element()
    root.set("id", "12")
    root.find("genid").text = str(uuid.UUID(int=99))
    disk = root.find("devices/disk")
    backing = parse_libvirt_xml("<backingStore type='file'><source file='/base'/></backingStore>")
    disk.append(backing)
    channel = root.find("devices/channel")
    channel.insert(0, parse_libvirt_xml("<source mode='bind' path='/run/tmpl-1.agent'/>"))
    return ET.tostring(root, encoding="unicode")


def state_bytes(xml: str, cookie: bytes = b"<qemu-migration/>", data_len: int = 65536) -> bytes:
    data = (xml.encode() + b"\0" + cookie + b"\0").ljust(data_len, b"\0")
    header = SAVE_HEADER.pack(SAVE_MAGIC, 2, data_len, 1, 0, len(xml) + 1, b"\0" * 56)
    return header + data + b"QEVM-memory"


def test_the_restored_xml_carries_the_new_identity_and_keeps_the_devices():
    new_spec = make_spec(name="strata-new", uuid=str(uuid.UUID(int=8)))
    restored = parse_libvirt_xml(restored_domain_xml(saved_template_xml(), DomainConfig(new_spec)))

    assert restored.get("id") is None
    assert restored.findtext("name") == "strata-new"
    assert restored.findtext("uuid") == new_spec.uuid
    genid = restored.find("genid")
    assert genid is not None and not genid.text  # libvirt makes a new one
    vda = restored.find("devices/disk")
    assert vda.find("source").get("file") == new_spec.disk_path
    assert vda.find("backingStore") is None
    assert restored.find("devices/serial/log").get("file") == new_spec.console_log_path
    assert restored.find("devices/channel/source") is None
    assert "tmpl-1" not in restored_domain_xml(saved_template_xml(), DomainConfig(new_spec))
    # The seed disk (the template's) and every other device stay as saved.
    assert len(restored.findall("devices/disk")) == 2


def test_a_header_rewritten_keeps_its_length_cookie_and_memory():
    raw = state_bytes("<domain><name>tmpl-1</name></domain>")
    header = SavedHeader.parse(raw)
    rewritten = header.with_xml("<domain><name>a-much-longer-vm-name</name></domain>")

    assert len(rewritten) == SAVE_HEADER.size + header.data_len
    again = SavedHeader.parse(rewritten + raw[len(rewritten) :])
    assert again.xml == "<domain><name>a-much-longer-vm-name</name></domain>"
    assert again.cookie == header.cookie and again.was_running == 1


@pytest.mark.parametrize(
    "raw",
    [b"", b"LibvirtQemudPart" + b"\0" * 200, state_bytes("<domain/>")[:500]],
    ids=["empty", "partial save", "cut short"],
)
def test_a_state_file_that_is_not_a_complete_save_is_refused(raw):
    with pytest.raises(StateFileInvalid):
        SavedHeader.parse(raw)


def test_an_xml_too_large_for_the_saved_header_is_refused():
    header = SavedHeader.parse(state_bytes("<domain/>", data_len=64))
    with pytest.raises(StateFileInvalid, match="does not fit"):
        header.with_xml("<domain>" + "x" * 100 + "</domain>")
