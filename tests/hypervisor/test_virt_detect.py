"""Issue 13: per-host hardware virtualisation detection and the guest CPU on KVM.

Detection runs against libvirt's test driver and this machine's real
qemu:///system; the /dev/kvm check against device nodes made with mknod in a
temporary directory (the real /dev/kvm is never touched).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import xml.etree.ElementTree as ET

import libvirt
import pytest

from workers.drivers.hypervisor import DomainConfig, Hypervisor, InvalidSpec
from workers.drivers.hypervisor.virt_detect import (
    KVM_USABLE,
    QemuIdentity,
    cpu_virt_flags,
    decide,
    is_local_qemu,
    kvm_device_problem,
    qemu_identity,
    reports_kvm_domain,
)

from .conftest import TEST_DATA_DIR, make_spec

KVM_MAJOR, KVM_MINOR = 10, 232
NO_FLAG = "no vmx/svm flag in the host CPU"


def host_cpu_has_virt_flag() -> bool:
    with open("/proc/cpuinfo", encoding="ascii") as cpuinfo:
        flags = {word for line in cpuinfo if line.startswith("flags") for word in line.split()}
    return bool(flags & {"vmx", "svm"})


def fake_kvm_node(directory, owner: str, group: str, mode: int) -> str:
    """A character device with /dev/kvm's numbers, owner and mode, in ``directory``."""
    path = os.path.join(directory, "kvm")
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(KVM_MAJOR, KVM_MINOR))
    os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
    os.chmod(path, mode)  # mknod's mode is filtered by the umask
    return path


@pytest.fixture
def qemu_user() -> QemuIdentity:
    """The identity libvirt's QEMU runs as on this machine (qemu.conf or Debian's default)."""
    return qemu_identity()


# -- the three witnesses -------------------------------------------------------


def capabilities_with(*features: str) -> str:
    listed = "".join(f"<feature name='{name}'/>" for name in features)
    return f"<capabilities><host><cpu><arch>x86_64</arch>{listed}</cpu></host></capabilities>"


@pytest.mark.parametrize(
    ("xml", "flags"),
    [
        (capabilities_with("vme", "vmx", "ss"), ("vmx",)),
        (capabilities_with("svm"), ("svm",)),
        (capabilities_with("vme", "hypervisor"), ()),
        # A guest's CPU flag elsewhere in the document is not the host's.
        (
            "<capabilities><host><cpu/></host><guest><feature name='vmx'/></guest></capabilities>",
            (),
        ),
        ("<capabilities/>", ()),
        ("not xml at all", ()),
    ],
)
def test_cpu_flags_are_read_from_the_host_cpu_only(xml, flags):
    """Issue 13: vmx/svm counted only under <host><cpu>; no CPU data means no flag."""
    assert cpu_virt_flags(xml) == flags


def test_the_kvm_domain_type_must_be_the_one_reported():
    """Issue 13: libvirt's domain capabilities count only when they name kvm."""
    assert reports_kvm_domain("<domainCapabilities><domain>kvm</domain></domainCapabilities>")
    assert not reports_kvm_domain("<domainCapabilities><domain>qemu</domain></domainCapabilities>")
    assert not reports_kvm_domain("<domainCapabilities/>")
    assert not reports_kvm_domain("<broken")


def test_only_a_qemu_driver_on_this_machine_has_its_device_checked():
    assert is_local_qemu("qemu:///system") and is_local_qemu("qemu+unix:///system")
    assert not is_local_qemu("qemu+ssh://root@10.0.0.2/system")
    assert not is_local_qemu("qemu+tcp://host.example/system")
    assert not is_local_qemu("test:///default")


def test_kvm_only_when_every_witness_says_usable():
    """Issue 13: kvm needs the CPU flag, libvirt's kvm domain type and a usable device;
    each missing one is named in the reason."""
    usable = decide(("vmx",), True, None, True)
    assert (usable.virt_type, usable.reason) == ("kvm", KVM_USABLE)
    assert decide(("svm",), True, None, False).virt_type == "kvm"  # remote host
    assert decide((), True, None, True).reason == NO_FLAG
    no_domain = decide(("vmx",), False, None, True)
    assert (no_domain.virt_type, no_domain.reason) == (
        "qemu",
        "libvirt reports no kvm domain type",
    )
    device = decide(("vmx",), True, "/dev/kvm is root:root 0600: ...", True)
    assert device.virt_type == "qemu" and device.reason.startswith("/dev/kvm is root:root 0600")
    everything = decide((), False, "/dev/kvm does not exist (no KVM module loaded)", True)
    assert everything.virt_type == "qemu"
    assert everything.reason.split("; ") == [
        NO_FLAG,
        "libvirt reports no kvm domain type",
        "/dev/kvm does not exist (no KVM module loaded)",
    ]


# -- /dev/kvm usability, on fake nodes -----------------------------------------


def test_a_root_only_node_cannot_be_opened_by_the_qemu_user(tmp_path, qemu_user):
    """Issue 13: /dev/kvm root:root 0600 is unusable, and the reason says so."""
    device = fake_kvm_node(tmp_path, "root", "root", 0o600)
    assert kvm_device_problem(qemu_user, device) == (
        f"{device} is root:root 0600: libvirt's QEMU user {qemu_user.user} cannot open it"
    )


def test_the_kvm_group_read_write_lets_the_qemu_user_open_it(tmp_path, qemu_user):
    """Issue 13: root:kvm 0660 is usable by a QEMU user in the kvm group; 0640 is not."""
    assert grp.getgrnam("kvm").gr_gid in qemu_user.gids
    device = fake_kvm_node(tmp_path, "root", "kvm", 0o660)
    assert kvm_device_problem(qemu_user, device) is None
    os.chmod(device, 0o640)
    assert "root:kvm 0640" in kvm_device_problem(qemu_user, device)


def test_owner_and_other_bits_are_the_ones_that_apply(tmp_path, qemu_user):
    device = fake_kvm_node(tmp_path, "root", "root", 0o666)
    assert kvm_device_problem(qemu_user, device) is None
    os.chmod(device, 0o600)
    os.chown(device, qemu_user.uid, 0)
    assert kvm_device_problem(qemu_user, device) is None
    # Group bits do not help the owner (the kernel checks the owner's bits only).
    os.chmod(device, 0o060)
    assert kvm_device_problem(qemu_user, device) is not None


def test_a_missing_node_or_a_plain_file_is_not_usable(tmp_path, qemu_user):
    missing = str(tmp_path / "kvm")
    assert kvm_device_problem(qemu_user, missing) == (
        f"{missing} does not exist (no KVM module loaded)"
    )
    plain = tmp_path / "plain"
    plain.write_text("")
    plain.chmod(0o666)
    assert kvm_device_problem(qemu_user, str(plain)) == f"{plain} is not a character device"


def test_the_qemu_user_and_group_come_from_qemu_conf(tmp_path):
    """Issue 13: qemu.conf's user/group (uncommented) decide whose access is checked."""
    conf = tmp_path / "qemu.conf"
    conf.write_text('# user = "root"\nuser = "nobody"  # who runs QEMU\ngroup = "kvm"\n')
    identity = qemu_identity(str(conf))
    assert identity.user == "nobody" and identity.uid == pwd.getpwnam("nobody").pw_uid
    assert grp.getgrnam("kvm").gr_gid in identity.gids
    device = fake_kvm_node(tmp_path, "root", "kvm", 0o660)
    assert kvm_device_problem(identity, device) is None
    os.chown(device, 0, 0)
    assert "libvirt's QEMU user nobody cannot open it" in kvm_device_problem(identity, device)
    conf.write_text('user = "+0"\n')
    assert qemu_identity(str(conf)).uid == 0
    conf.write_text('user = "no-such-user-h10"\n')
    with pytest.raises(KeyError):
        qemu_identity(str(conf))


# -- detection through the driver ----------------------------------------------


@pytest.mark.libvirt
def test_the_test_driver_is_detected_as_tcg():
    """Issue 13: libvirt's test driver has no vmx/svm and no kvm domain capabilities."""
    with Hypervisor("test:///default", TEST_DATA_DIR) as hv:
        support = hv.host.detect_virtualisation()
    assert support.virt_type == "qemu"
    assert support.cpu_flags == () and not support.kvm_domain
    assert not support.kvm_device_checked  # not a QEMU driver: no device to check
    assert support.reason == f"{NO_FLAG}; libvirt reports no kvm domain type"


def test_this_machine_is_detected_from_its_real_libvirt(tmp_path):
    """Issue 13: on this machine's qemu:///system the choice follows the CPU: here
    /dev/kvm exists and libvirt offers kvm domains, but the CPU has no vmx/svm (KVM
    guests hang), so the choice must be qemu, saying why."""
    with Hypervisor("qemu:///system", tmp_path) as hv:
        support = hv.host.detect_virtualisation()
        assert support.kvm_device_checked
        if not host_cpu_has_virt_flag():
            assert support.virt_type == "qemu" and support.cpu_flags == ()
            assert support.reason.startswith(NO_FLAG)
        else:
            assert support.virt_type == ("kvm" if support.reason == KVM_USABLE else "qemu")
        # The same host with an unusable device node names the node as well.
        device = fake_kvm_node(tmp_path, "root", "root", 0o600)
        blocked = hv.host.detect_virtualisation(kvm_device=device)
    assert blocked.virt_type == "qemu"
    assert f"{device} is root:root 0600: libvirt's QEMU user" in blocked.reason


# -- the guest CPU in the domain XML -------------------------------------------


def cpu_element(spec) -> ET.Element | None:
    root = ET.fromstring(DomainConfig(spec).to_xml())  # noqa: S314 - our own output
    return root.find("cpu")


def test_kvm_passes_the_host_cpu_through_by_default():
    cpu = cpu_element(make_spec(virt_type="kvm"))
    assert cpu.get("mode") == "host-passthrough" and len(cpu) == 0


def test_kvm_with_a_named_model_asks_for_exactly_that_model():
    """Issue 13: a named CPU model per host, never silently another one."""
    cpu = cpu_element(make_spec(virt_type="kvm", cpu_mode="Skylake-Client-IBRS"))
    assert cpu.get("mode") == "custom" and cpu.get("match") == "exact"
    assert cpu.findtext("model") == "Skylake-Client-IBRS"
    assert cpu.find("model").get("fallback") == "forbid"


def test_tcg_keeps_its_cpu_element_whatever_the_mode():
    assert cpu_element(make_spec(virt_type="qemu", cpu_mode="Skylake-Client-IBRS")) is None


@pytest.mark.parametrize(
    "model",
    [
        "",
        "host passthrough",
        "Skylake\n",
        "Skylake\x00",
        "a'b",
        "<model>x</model>",
        "-Skylake",
        "x" * 65,
        "Skylake/../x",
        None,
        42,
    ],
)
def test_hostile_cpu_models_are_refused_naming_the_field(model):
    """Issue 13: the CPU model is matched whole before it reaches the XML."""
    with pytest.raises(InvalidSpec) as error:
        DomainConfig(make_spec(virt_type="kvm", cpu_mode=model)).to_xml()
    assert error.value.field == "cpu_mode"


@pytest.mark.parametrize("cpu_mode", ["host-passthrough", "Skylake-Client-IBRS"])
def test_the_real_libvirt_accepts_both_kvm_cpu_elements(cpu_mode):
    """Issue 13: libvirtd (qemu:///system) defines a kvm domain with either CPU
    element; nothing is started, the definition is removed at once."""
    spec = make_spec(name=f"h10-cpu-{cpu_mode.lower()}", virt_type="kvm", cpu_mode=cpu_mode)
    conn = libvirt.open("qemu:///system")
    try:
        domain = conn.defineXML(DomainConfig(spec).to_xml())
        try:
            cpu = ET.fromstring(domain.XMLDesc(0)).find("cpu")  # noqa: S314 - libvirtd's
            if cpu_mode == "host-passthrough":
                assert cpu.get("mode") == "host-passthrough"
            else:
                assert cpu.get("mode") == "custom" and cpu.findtext("model") == cpu_mode
        finally:
            domain.undefine()
    finally:
        conn.close()
