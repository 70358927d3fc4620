"""Environment networks: one libvirt network per environment, as element trees.

An environment's segment is an isolated libvirt network (no ``<forward>``
unless the environment's egress setting asks for ``nat`` or ``route``). Its
dnsmasq gives every VM a fixed address by static DHCP host entries (MAC → IP →
hostname, so a VM keeps its address across reboot and restore) and answers
names under ``<env>.<team>.strata`` from DNS host records, never forwarding
them upstream.

Nothing here formats XML text, and every value is validated first; a refused
value raises InvalidSpec naming the field. No Django here.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from .domain_xml import parse_libvirt_xml
from .errors import HypervisorError, InvalidSpec, InvalidState, NotFound, libvirt_errors
from .spec import (
    DOMAIN_NAME_PATTERN,
    MAC_PATTERN,
    STRATA_ID_PATTERN,
    require_domain_name,
    require_int,
    require_match,
    require_uuid,
)

NETWORK_NAME_PREFIX = "strata-"
BRIDGE_NAME_PREFIX = "sbr-"
# Linux refuses interface names longer than 15 bytes (IFNAMSIZ - 1).
MAX_BRIDGE_NAME_LENGTH = 15
BRIDGE_HASH_CHARS = MAX_BRIDGE_NAME_LENGTH - len(BRIDGE_NAME_PREFIX)
STRATA_DNS_SUFFIX = "strata"
EGRESS_MODES = ("nat", "route")
# A /29 still leaves the gateway, a static host and a small dynamic range.
MIN_PREFIX_LENGTH, MAX_PREFIX_LENGTH = 8, 29
MIN_MTU, MAX_MTU = 1280, 9000
MAX_DNS_NAME_LENGTH = 253
BRIDGE_NAME_PATTERN = re.compile(rf"{BRIDGE_NAME_PREFIX}[a-z2-7]{{{BRIDGE_HASH_CHARS}}}")
NETWORK_NAME_PATTERN = re.compile(rf"{NETWORK_NAME_PREFIX}[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}")

LIVE_AND_CONFIG = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
# Another writer can change the records between our read and our update.
UPDATE_ATTEMPTS = 3
_ADD = libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST
_DELETE = libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE


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

    Uniqueness inside one segment is checked by NetworkConfig.validate, which
    refuses two hosts with one MAC.
    """
    require_match("vm_id", vm_id, STRATA_ID_PATTERN, "a Strata id")
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in _hash_bytes(vm_id, 3))


def require_dns_name(field_name: str, value: object) -> str:
    """One DNS label or dotted labels (lower case), at most 253 characters."""
    if (
        not isinstance(value, str)
        or len(value) > MAX_DNS_NAME_LENGTH
        or not all(DOMAIN_NAME_PATTERN.fullmatch(label) for label in value.split("."))
    ):
        raise InvalidSpec(
            field_name, f"must be lower-case DNS labels joined by dots, got {value!r}"
        )
    return value


def require_ipv4(field_name: str, value: object) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise InvalidSpec(field_name, f"must be an IPv4 address, got {value!r}")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidSpec(field_name, f"must be an IPv4 address, got {value!r}") from None
    # Only the canonical dotted form: the text goes into XML and is compared later.
    if not isinstance(address, ipaddress.IPv4Address) or str(address) != value:
        raise InvalidSpec(field_name, f"must be an IPv4 address in dotted form, got {value!r}")
    return address


def require_subnet(field_name: str, value: object) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(value) if isinstance(value, str) else None
    except ValueError as error:
        raise InvalidSpec(
            field_name, f"must be an IPv4 network such as 10.77.1.0/24: {error}"
        ) from None
    if subnet is None or str(subnet) != value:
        raise InvalidSpec(
            field_name, f"must be an IPv4 network such as 10.77.1.0/24, got {value!r}"
        )
    require_int(f"{field_name} prefix", subnet.prefixlen, MIN_PREFIX_LENGTH, MAX_PREFIX_LENGTH)
    if not subnet.is_private or subnet.is_loopback or subnet.is_link_local:
        raise InvalidSpec(field_name, f"must be a private range (RFC 1918), got {value!r}")
    return subnet


def _require_host_in(
    field_name: str, value: object, subnet: ipaddress.IPv4Network
) -> ipaddress.IPv4Address:
    address = require_ipv4(field_name, value)
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise InvalidSpec(field_name, f"must be a host address of {subnet}, got {value!r}")
    return address


@dataclass(frozen=True)
class DhcpHost:
    """A static lease: the VM with ``mac_address`` always gets ``ip`` and ``hostname``."""

    mac_address: str
    ip: str
    hostname: str

    def validate(self, field_name: str, subnet: ipaddress.IPv4Network) -> None:
        require_match(
            f"{field_name}.mac_address", self.mac_address, MAC_PATTERN, "a 52:54:00:xx:xx:xx MAC"
        )
        _require_host_in(f"{field_name}.ip", self.ip, subnet)
        require_domain_name(f"{field_name}.hostname", self.hostname)

    def element(self) -> ET.Element:
        return ET.Element("host", mac=self.mac_address, name=self.hostname, ip=self.ip)


@dataclass(frozen=True)
class DnsHost:
    """An address record: each of ``hostnames`` resolves to ``ip`` inside the segment."""

    ip: str
    hostnames: tuple[str, ...]

    def validate(self, field_name: str, subnet: ipaddress.IPv4Network) -> None:
        _require_host_in(f"{field_name}.ip", self.ip, subnet)
        if not isinstance(self.hostnames, tuple) or not self.hostnames:
            raise InvalidSpec(f"{field_name}.hostnames", "must be a non-empty tuple of names")
        for index, hostname in enumerate(self.hostnames):
            require_dns_name(f"{field_name}.hostnames[{index}]", hostname)
        if len(set(self.hostnames)) != len(self.hostnames):
            raise InvalidSpec(f"{field_name}.hostnames", "names a host twice")

    def element(self) -> ET.Element:
        host = ET.Element("host", ip=self.ip)
        for hostname in self.hostnames:
            ET.SubElement(host, "hostname").text = hostname
        return host


@dataclass(frozen=True)
class NetworkConfig:
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

    def validate(self) -> NetworkConfig:
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
        start = _require_host_in("dhcp_range[0]", self.dhcp_range[0], subnet)
        end = _require_host_in("dhcp_range[1]", self.dhcp_range[1], subnet)
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


def build_network_xml(config: NetworkConfig) -> str:
    """The libvirt ``<network>`` XML; raises InvalidSpec for any refused value."""
    config.validate()
    subnet = ipaddress.IPv4Network(config.subnet)
    network = ET.Element("network")
    ET.SubElement(network, "name").text = config.name
    ET.SubElement(network, "uuid").text = require_uuid("uuid", config.uuid)
    if config.egress is not None:
        ET.SubElement(network, "forward", mode=config.egress)
    ET.SubElement(network, "bridge", name=config.bridge, stp="on", delay="0")
    if config.mtu is not None:
        ET.SubElement(network, "mtu", size=str(config.mtu))
    # localOnly: names of the segment are answered here and never asked upstream.
    ET.SubElement(network, "domain", name=config.domain, localOnly="yes")
    dns = ET.SubElement(network, "dns")
    for dns_host in config.dns_hosts:
        dns.append(dns_host.element())
    ip = ET.SubElement(network, "ip", address=config.gateway, prefix=str(subnet.prefixlen))
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(dhcp, "range", start=config.dhcp_range[0], end=config.dhcp_range[1])
    for dhcp_host in config.dhcp_hosts:
        dhcp.append(dhcp_host.element())
    return ET.tostring(network, encoding="unicode")


@dataclass(frozen=True)
class NetworkInterface:
    """A VM's NIC on its environment's network, with a MAC fixed by the VM id."""

    network: str
    mac_address: str

    @classmethod
    def for_vm(cls, vm_id: str, environment_id: str) -> NetworkInterface:
        return cls(network_name_for(environment_id), mac_address_for(vm_id))

    def validate(self) -> NetworkInterface:
        require_match("network", self.network, NETWORK_NAME_PATTERN, "a Strata network name")
        require_match("mac_address", self.mac_address, MAC_PATTERN, "a 52:54:00:xx:xx:xx MAC")
        return self

    def element(self) -> ET.Element:
        self.validate()
        interface = ET.Element("interface", type="network")
        ET.SubElement(interface, "source", network=self.network)
        ET.SubElement(interface, "mac", address=self.mac_address)
        ET.SubElement(interface, "model", type="virtio")
        return interface


@dataclass(frozen=True)
class StrataNetwork:
    name: str
    uuid: str
    bridge: str
    active: bool
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    dns_hosts: tuple[DnsHost, ...] = ()


def _parse_dhcp_hosts(root: ET.Element) -> tuple[DhcpHost, ...]:
    return tuple(
        DhcpHost(host.get("mac", ""), host.get("ip", ""), host.get("name", ""))
        for host in root.iterfind("ip/dhcp/host")
    )


def _parse_dns_hosts(root: ET.Element) -> tuple[DnsHost, ...]:
    return tuple(
        DnsHost(host.get("ip", ""), tuple(name.text or "" for name in host.iterfind("hostname")))
        for host in root.iterfind("dns/host")
    )


def _parse_network(network: libvirt.virNetwork) -> StrataNetwork:
    root = parse_libvirt_xml(network.XMLDesc(0))
    bridge = root.find("bridge")
    return StrataNetwork(
        name=network.name(),
        uuid=network.UUIDString(),
        bridge=bridge.get("name", "") if bridge is not None else "",
        active=bool(network.isActive()),
        dhcp_hosts=_parse_dhcp_hosts(root),
        dns_hosts=_parse_dns_hosts(root),
    )


def _structure(xml_text: str) -> dict[str, object]:
    """What cannot change on a defined network without recreating it."""
    root = parse_libvirt_xml(xml_text)
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


class NetworkDriver:
    """Strata's libvirt networks on one host connection; every method converges."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self._conn = conn

    def _lookup(self, name: str) -> libvirt.virNetwork | None:
        try:
            return self._conn.networkLookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return None
            raise

    def _require(self, name: str) -> libvirt.virNetwork:
        require_match("name", name, NETWORK_NAME_PATTERN, "a Strata network name")
        with libvirt_errors():
            network = self._lookup(name)
        if network is None:
            raise NotFound(f"network {name} does not exist")
        return network

    def ensure(self, config: NetworkConfig) -> StrataNetwork:
        """Define, start and autostart the network, then make its host records match.

        A network of that name that differs in what a live update cannot
        change (UUID, subnet, bridge, egress, domain, range) is refused with
        InvalidState, never silently redefined under running VMs.
        """
        xml_text = build_network_xml(config)
        with libvirt_errors():
            network = self._lookup(config.name)
            defined_here = network is None
            if defined_here:
                network = self._conn.networkDefineXML(xml_text)
            else:
                self._check_structure(network, xml_text)
            _start(network, undefine_on_failure=defined_here)
            if not network.autostart():
                network.setAutostart(1)
        self.sync_records(config.name, config.dhcp_hosts, config.dns_hosts)
        return self.get(config.name)

    def _check_structure(self, network: libvirt.virNetwork, xml_text: str) -> None:
        wanted, found = _structure(xml_text), _structure(network.XMLDesc(0))
        differing = sorted(key for key in wanted if wanted[key] != found[key])
        if differing:
            raise InvalidState(
                f"network {network.name()} exists with another {', '.join(differing)}; "
                "remove it first"
            )

    def remove(self, name: str) -> bool:
        """Stop and undefine the network; False if there was none.

        Another worker removing it at the same time is no error.
        """
        require_match("name", name, NETWORK_NAME_PATTERN, "a Strata network name")
        with libvirt_errors():
            network = self._lookup(name)
            if network is None:
                return False
            try:
                if network.isActive():
                    network.destroy()
                if network.isPersistent():
                    network.undefine()
            except libvirt.libvirtError:
                if self._lookup(name) is not None:
                    raise
        return True

    def get(self, name: str) -> StrataNetwork:
        network = self._require(name)
        with libvirt_errors():
            return _parse_network(network)

    def list(self) -> list[StrataNetwork]:
        """Strata's networks (by name prefix), active or not, sorted by name."""
        with libvirt_errors():
            networks = self._conn.listAllNetworks()
            return sorted(
                (_parse_network(n) for n in networks if n.name().startswith(NETWORK_NAME_PREFIX)),
                key=lambda network: network.name,
            )

    def put_dns_host(self, name: str, record: DnsHost) -> bool:
        """Make ``record`` resolve live; replaces records that share its address or
        a name. False if it was there already."""
        return self._put(name, record, libvirt.VIR_NETWORK_SECTION_DNS_HOST)

    def remove_dns_host(self, name: str, ip: str) -> bool:
        """Drop the record for ``ip``; False if there was none."""
        require_ipv4("ip", ip)
        return self._remove(name, libvirt.VIR_NETWORK_SECTION_DNS_HOST, lambda r: r.ip == ip)

    def put_dhcp_host(self, name: str, host: DhcpHost) -> bool:
        """Reserve ``host.ip`` for ``host.mac_address`` live; replaces entries sharing
        its MAC, address or name. False if it was there already."""
        return self._put(name, host, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST)

    def remove_dhcp_host(self, name: str, mac_address: str) -> bool:
        """Drop the static lease of ``mac_address``; False if there was none."""
        require_match("mac_address", mac_address, MAC_PATTERN, "a 52:54:00:xx:xx:xx MAC")
        return self._remove(
            name, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, lambda r: r.mac_address == mac_address
        )

    def sync_records(
        self, name: str, dhcp_hosts: tuple[DhcpHost, ...], dns_hosts: tuple[DnsHost, ...]
    ) -> bool:
        """Make the live records exactly these (the reconciler's repair); True if any changed."""
        changed = False
        for section, wanted in (
            (libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, dhcp_hosts),
            (libvirt.VIR_NETWORK_SECTION_DNS_HOST, dns_hosts),
        ):
            for record in wanted:
                changed |= self._put(name, record, section)
            changed |= self._remove(name, section, lambda r, keep=wanted: r not in keep)
        return changed

    def _records(self, network: libvirt.virNetwork, section: int) -> tuple:
        root = parse_libvirt_xml(network.XMLDesc(0))
        if section == libvirt.VIR_NETWORK_SECTION_DNS_HOST:
            return _parse_dns_hosts(root)
        return _parse_dhcp_hosts(root)

    def _put(self, name: str, record: DhcpHost | DnsHost, section: int) -> bool:
        network = self._require(name)
        with libvirt_errors():
            subnet = _network_subnet(network)
        record.validate("record", subnet)
        return self._converge(
            network,
            section,
            done=lambda records: record in records,
            stale=lambda existing: _conflicts(existing, record),
            record=record,
        )

    def _remove(self, name: str, section: int, unwanted) -> bool:
        network = self._require(name)
        return self._converge(
            network,
            section,
            done=lambda records: not any(map(unwanted, records)),
            stale=unwanted,
            record=None,
        )

    def _converge(self, network, section, done, stale, record) -> bool:
        """Delete ``stale`` records and add ``record`` until ``done`` holds; True if
        this call changed anything.

        A concurrent writer can make one of our updates fail (it just added or
        deleted that record); the records are read again and the step retried.
        """
        changed = False
        last_error: HypervisorError | None = None
        for _attempt in range(UPDATE_ATTEMPTS):
            with libvirt_errors():
                records = self._records(network, section)
            if done(records):
                return changed
            try:
                with libvirt_errors():
                    flags = _update_flags(network)
                    for old in filter(stale, records):
                        _update(network, _DELETE, section, old, flags)
                        changed = True
                    if record is not None:
                        _update(network, _ADD, section, record, flags)
                return True
            except InvalidState as error:
                last_error = error
        raise InvalidState(f"network {network.name()}: records kept changing: {last_error}")


def _start(network: libvirt.virNetwork, undefine_on_failure: bool) -> None:
    """Start the network unless it runs; a network this call defined and could
    not start is undefined again, so a failure leaves nothing half-made."""
    if network.isActive():
        return
    try:
        network.create()
    except libvirt.libvirtError:
        # Another worker may have started it between our check and create().
        if network.isActive():
            return
        if undefine_on_failure:
            with contextlib.suppress(libvirt.libvirtError):
                network.undefine()
        raise


def _conflicts(existing: DhcpHost | DnsHost, wanted: DhcpHost | DnsHost) -> bool:
    """libvirt matches a record on any of its keys, so these must go before ``wanted``."""
    if existing == wanted:
        return False
    if isinstance(wanted, DnsHost):
        return existing.ip == wanted.ip or bool(set(existing.hostnames) & set(wanted.hostnames))
    return (
        existing.mac_address == wanted.mac_address
        or existing.ip == wanted.ip
        or existing.hostname == wanted.hostname
    )


def _network_subnet(network: libvirt.virNetwork) -> ipaddress.IPv4Network:
    ip = parse_libvirt_xml(network.XMLDesc(0)).find("ip")
    if ip is None:
        raise InvalidState(f"network {network.name()} has no IPv4 address")
    return ipaddress.IPv4Network(f"{ip.get('address')}/{ip.get('prefix')}", strict=False)


def _update_flags(network: libvirt.virNetwork) -> int:
    # A stopped network has no live state to update.
    return LIVE_AND_CONFIG if network.isActive() else libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG


def _update(network, command: int, section: int, record: DhcpHost | DnsHost, flags: int) -> None:
    network.update(command, section, -1, ET.tostring(record.element(), encoding="unicode"), flags)
