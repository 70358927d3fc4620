"""Environment networks on one host: one libvirt network per environment.

An environment's segment is an isolated libvirt network (no ``<forward>``
unless the environment's egress setting asks for ``nat`` or ``route``). Its
dnsmasq gives every VM a fixed address by static DHCP host entries (MAC → IP →
hostname, so a VM keeps its address across reboot and restore) and answers
names under ``<env>.<team>.strata`` from DNS host records, never forwarding
them upstream. The networks are described by ``spec.NetworkSpec`` and written
as XML by ``config``. No Django here.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass

import libvirt

from .config import (
    NetworkConfig,
    network_bridge,
    network_installation_id,
    network_structure,
    network_subnet,
    parse_dhcp_hosts,
    parse_dns_hosts,
    record_xml,
)
from .errors import HypervisorError, InvalidState, NotFound, libvirt_errors
from .host import Host
from .spec import NETWORK_NAME_PATTERN, NETWORK_NAME_PREFIX, DhcpHost, DnsHost, NetworkSpec
from .validation import require_ipv4, require_mac, require_match

LIVE_AND_CONFIG = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
# Another writer can change the records between our read and our update.
UPDATE_ATTEMPTS = 3
_ADD = libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST
_DELETE = libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE


@dataclass(frozen=True)
class StrataNetwork:
    name: str
    uuid: str
    bridge: str
    active: bool
    # The installation that made it; None for a network made before the mark.
    installation_id: str | None = None
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    dns_hosts: tuple[DnsHost, ...] = ()


def _describe(network: libvirt.virNetwork) -> StrataNetwork:
    xml_text = network.XMLDesc(0)
    return StrataNetwork(
        name=network.name(),
        uuid=network.UUIDString(),
        bridge=network_bridge(xml_text),
        active=bool(network.isActive()),
        installation_id=network_installation_id(xml_text),
        dhcp_hosts=parse_dhcp_hosts(xml_text),
        dns_hosts=parse_dns_hosts(xml_text),
    )


class NetworkDriver:
    """Strata's libvirt networks on one host connection; every method converges.
    The networks it defines carry ``installation_id``."""

    def __init__(self, host: Host, installation_id: str | None = None) -> None:
        self._host = host
        self._installation_id = installation_id

    def _lookup(self, name: str) -> libvirt.virNetwork | None:
        try:
            return self._host.connection.networkLookupByName(name)
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

    def ensure(self, spec: NetworkSpec) -> StrataNetwork:
        """Define, start and autostart the network, then make its host records match.

        A network of that name that differs in what a live update cannot
        change (UUID, subnet, bridge, egress, domain, range) is refused with
        InvalidState, never silently redefined under running VMs.
        """
        xml_text = NetworkConfig(spec, self._installation_id).to_xml()
        with libvirt_errors():
            network = self._lookup(spec.name)
            defined_here = network is None
            if defined_here:
                network = self._host.connection.networkDefineXML(xml_text)
            else:
                self._check_structure(network, xml_text)
            _start(network, undefine_on_failure=defined_here)
            if not network.autostart():
                network.setAutostart(1)
        self.sync_records(spec.name, spec.dhcp_hosts, spec.dns_hosts)
        return self.get(spec.name)

    def _check_structure(self, network: libvirt.virNetwork, xml_text: str) -> None:
        wanted, found = network_structure(xml_text), network_structure(network.XMLDesc(0))
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
            return _describe(network)

    def list(self) -> list[StrataNetwork]:
        """Strata's networks (by name prefix), active or not, sorted by name."""
        with libvirt_errors():
            networks = self._host.connection.listAllNetworks()
            return sorted(
                (_describe(n) for n in networks if n.name().startswith(NETWORK_NAME_PREFIX)),
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
        require_mac("mac_address", mac_address)
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
        xml_text = network.XMLDesc(0)
        if section == libvirt.VIR_NETWORK_SECTION_DNS_HOST:
            return parse_dns_hosts(xml_text)
        return parse_dhcp_hosts(xml_text)

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
    subnet = network_subnet(network.XMLDesc(0))
    if subnet is None:
        raise InvalidState(f"network {network.name()} has no IPv4 address")
    return subnet


def _update_flags(network: libvirt.virNetwork) -> int:
    # A stopped network has no live state to update.
    return LIVE_AND_CONFIG if network.isActive() else libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG


def _update(network, command: int, section: int, record: DhcpHost | DnsHost, flags: int) -> None:
    network.update(command, section, -1, record_xml(record), flags)
