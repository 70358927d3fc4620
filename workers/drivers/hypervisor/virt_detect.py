"""What hardware virtualisation a host can do, and the domain type chosen from it.

Three witnesses, each of which must say yes for ``kvm``:

- the host CPU as libvirt reports it (capabilities XML, so remote hosts too)
  has the ``vmx`` (Intel) or ``svm`` (AMD) flag;
- libvirt's domain capabilities for ``virttype='kvm'`` answer with the kvm
  domain type;
- on a local QEMU driver, ``/dev/kvm`` is a character device that the user
  libvirt runs QEMU as can open read-write.

``/dev/kvm`` and libvirt's domain capabilities alone are not enough: on a
nested guest without ``vmx`` both say yes and every KVM guest hangs.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urlsplit

from .config import parse_libvirt_xml

KVM_DEVICE = "/dev/kvm"
QEMU_CONF = "/etc/libvirt/qemu.conf"
# Debian's build defaults (qemu.conf documents them, commented out).
DEFAULT_QEMU_USER = "libvirt-qemu"
DEFAULT_QEMU_GROUP = "libvirt-qemu"
VIRT_FLAGS = ("vmx", "svm")
KVM_USABLE = "KVM usable"
QEMU_CONF_SETTING = re.compile(r'\s*(user|group)\s*=\s*"([^"\n]*)"\s*(?:#.*)?')


@dataclass(frozen=True)
class QemuIdentity:
    """The user, and all groups, a QEMU process started by libvirt runs with."""

    user: str
    uid: int
    gids: frozenset[int]


@dataclass(frozen=True)
class VirtSupport:
    """What one host can do; ``virt_type`` is the choice and ``reason`` says why."""

    cpu_flags: tuple[str, ...]
    kvm_domain: bool
    # Why libvirt's QEMU user cannot open /dev/kvm; None when it can or when
    # the node was not checked (a remote host, or not a QEMU driver).
    kvm_device_problem: str | None
    kvm_device_checked: bool
    virt_type: str
    reason: str


def cpu_virt_flags(capabilities_xml: str) -> tuple[str, ...]:
    """The vmx/svm flags of the host CPU in libvirt's capabilities XML; none
    when the XML says nothing about the CPU."""
    try:
        root = parse_libvirt_xml(capabilities_xml)
    except ET.ParseError:
        return ()
    names = {feature.get("name") for feature in root.findall("./host/cpu/feature")}
    return tuple(flag for flag in VIRT_FLAGS if flag in names)


def reports_kvm_domain(domain_capabilities_xml: str) -> bool:
    try:
        root = parse_libvirt_xml(domain_capabilities_xml)
    except ET.ParseError:
        return False
    return (root.findtext("domain") or "").strip() == "kvm"


def _name_to_id(name: str, lookup, field: str) -> int:
    # libvirt's "+N" means the numeric id N.
    if name.startswith("+") and name[1:].isdigit():
        return int(name[1:])
    return getattr(lookup(name), field)


def qemu_identity(conf_path: str = QEMU_CONF) -> QemuIdentity:
    """The user and groups libvirt's system QEMU driver runs QEMU as, from
    qemu.conf (``user``/``group``), else the build defaults. Like libvirt, the
    process also gets the user's supplementary groups. Raises KeyError for a
    user or group this host does not have."""
    settings = {"user": DEFAULT_QEMU_USER, "group": DEFAULT_QEMU_GROUP}
    try:
        with open(conf_path, encoding="utf-8") as conf:
            for line in conf:
                match = QEMU_CONF_SETTING.fullmatch(line.rstrip("\n"))
                if match:
                    settings[match.group(1)] = match.group(2)
    except FileNotFoundError:
        pass
    uid = _name_to_id(settings["user"], pwd.getpwnam, "pw_uid")
    gid = _name_to_id(settings["group"], grp.getgrnam, "gr_gid")
    gids = {gid}
    try:
        account = pwd.getpwuid(uid)
        gids.update(os.getgrouplist(account.pw_name, account.pw_gid))
    except KeyError:
        pass
    return QemuIdentity(settings["user"], uid, frozenset(gids))


def _owner_names(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def kvm_device_problem(identity: QemuIdentity, device: str = KVM_DEVICE) -> str | None:
    """Why ``identity`` cannot open ``device`` read-write, or None if it can.
    Decided from the node's owner and mode bits (as the kernel does without ACLs)."""
    try:
        st = os.stat(device)
    except FileNotFoundError:
        return f"{device} does not exist (no KVM module loaded)"
    except OSError as error:
        return f"{device} cannot be read: {error.strerror}"
    if not stat.S_ISCHR(st.st_mode):
        return f"{device} is not a character device"
    read_write = stat.S_IRUSR | stat.S_IWUSR
    if identity.uid == 0:
        return None
    if st.st_uid == identity.uid:
        granted = st.st_mode & read_write == read_write
    elif st.st_gid in identity.gids:
        granted = st.st_mode & (read_write >> 3) == read_write >> 3
    else:
        granted = st.st_mode & (read_write >> 6) == read_write >> 6
    if granted:
        return None
    mode = stat.S_IMODE(st.st_mode)
    return (
        f"{device} is {_owner_names(st)} {mode:04o}: "
        f"libvirt's QEMU user {identity.user} cannot open it"
    )


def is_local_qemu(uri: str) -> bool:
    """A QEMU driver on this machine: qemu:///system or qemu+unix:///system."""
    parts = urlsplit(uri)
    return parts.scheme in ("qemu", "qemu+unix") and not parts.hostname


def decide(
    cpu_flags: tuple[str, ...],
    kvm_domain: bool,
    device_problem: str | None,
    device_checked: bool,
) -> VirtSupport:
    """``kvm`` when every witness says usable, else ``qemu`` with every reason why not."""
    problems = []
    if not cpu_flags:
        problems.append("no vmx/svm flag in the host CPU")
    if not kvm_domain:
        problems.append("libvirt reports no kvm domain type")
    if device_problem is not None:
        problems.append(device_problem)
    if problems:
        virt_type, reason = "qemu", "; ".join(problems)
    else:
        virt_type, reason = "kvm", KVM_USABLE
    return VirtSupport(cpu_flags, kvm_domain, device_problem, device_checked, virt_type, reason)
