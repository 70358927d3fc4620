"""Environment networks: XML, validation of hostile values, and the driver on
libvirt's test driver (which supports define, start, update and undefine of
networks but builds no bridge and starts no dnsmasq, so nothing touches the
machine's own network namespace).

The XML is also checked against libvirt's own RelaxNG schemas with
virt-xml-validate (libvirt-clients), as the test driver parses leniently.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import uuid
import xml.etree.ElementTree as ET

import libvirt
import pytest

from workers.drivers.hypervisor import (
    DomainConfig,
    Host,
    HostUnreachable,
    HypervisorError,
    InvalidSpec,
    InvalidState,
    LibvirtNetwork,
    NetworkConfig,
    NetworkDriver,
    NetworkSpec,
    NotFound,
)
from workers.drivers.hypervisor.config import NetworkInterface
from workers.drivers.hypervisor.spec import (
    NETWORK_NAME_PREFIX,
    DhcpHost,
    DnsHost,
    bridge_name_for,
    default_dhcp_range,
    mac_address_for,
)

from .conftest import make_spec

SUBNET = "10.77.1.0/24"
WEB = DhcpHost(mac_address_for("101"), "10.77.1.10", "web-1")
API = DhcpHost(mac_address_for("102"), "10.77.1.11", "api-1")


def make_network(**overrides) -> NetworkSpec:
    values = dict(
        environment_id="7",
        uuid=str(uuid.UUID(int=7)),
        environment_name="dev",
        team_name="acme",
        subnet=SUBNET,
        dhcp_range=default_dhcp_range(SUBNET),
        dhcp_hosts=(WEB, API),
        dns_hosts=(DnsHost("10.77.1.11", ("api",)),),
    )
    values.update(overrides)
    return NetworkSpec(**values)


def parse(network_spec: NetworkSpec) -> ET.Element:
    return ET.fromstring(NetworkConfig(network_spec).to_xml())  # noqa: S314 - our own output


@pytest.fixture
def driver():
    """A NetworkDriver on the test driver; its state is shared by every
    connection of this process, so Strata's networks are removed afterwards."""
    host = Host("test:///default")
    network_driver = NetworkDriver(host)
    try:
        yield network_driver
    finally:
        for network in network_driver.list():
            network_driver.remove(network.name)
        host.close()


# --- XML -------------------------------------------------------------------


def test_isolated_network_structure():
    root = parse(make_network())
    assert root.findtext("name") == "strata-7"
    assert root.findtext("uuid") == str(uuid.UUID(int=7))
    assert root.find("forward") is None, "isolated by default: no <forward>"
    bridge = root.find("bridge").get("name")
    assert bridge == bridge_name_for("7") and len(bridge) <= 15
    assert root.find("domain").attrib == {"name": "dev.acme.strata", "localOnly": "yes"}
    assert root.find("ip").attrib == {"address": "10.77.1.1", "prefix": "24"}
    assert root.find("ip/dhcp/range").attrib == {"start": "10.77.1.128", "end": "10.77.1.254"}
    hosts = [host.attrib for host in root.iterfind("ip/dhcp/host")]
    assert hosts == [
        {"mac": WEB.mac_address, "name": "web-1", "ip": "10.77.1.10"},
        {"mac": API.mac_address, "name": "api-1", "ip": "10.77.1.11"},
    ]
    (record,) = root.iterfind("dns/host")
    assert record.get("ip") == "10.77.1.11"
    assert [name.text for name in record.iterfind("hostname")] == ["api"]
    assert root.find("mtu") is None


@pytest.mark.parametrize("mode", ["nat", "route"])
def test_egress_modes_render_a_forward(mode):
    root = parse(make_network(egress=mode, mtu=1450))
    assert root.find("forward").attrib == {"mode": mode}
    assert root.find("mtu").attrib == {"size": "1450"}


def test_gateway_is_the_first_host_and_range_the_upper_half():
    network_spec = make_network(
        subnet="10.77.8.0/28", dhcp_range=default_dhcp_range("10.77.8.0/28")
    )
    assert network_spec.gateway == "10.77.8.1"
    assert network_spec.dhcp_range == ("10.77.8.8", "10.77.8.14")


def test_names_derived_from_ids_are_stable_short_and_distinct():
    assert bridge_name_for("7") == bridge_name_for("7")
    bridges = {bridge_name_for(str(n)) for n in range(20000)}
    assert len(bridges) == 20000
    assert all(len(name) == 15 and name.startswith("sbr-") for name in bridges)
    long_id = "f" * 64
    assert len(bridge_name_for(long_id)) == 15
    assert mac_address_for("101") == mac_address_for("101") != mac_address_for("102")
    assert mac_address_for("101").startswith("52:54:00:")


def virt_xml_validate(tmp_path, xml_text: str, schema: str) -> None:
    if shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None:
        pytest.skip("virt-xml-validate needs libvirt-clients and libxml2-utils")
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml_text)
    result = subprocess.run(
        ["virt-xml-validate", str(path), schema], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("egress", [None, "nat", "route"])
@pytest.mark.parametrize("installation_id", [None, "ab12cd34"])
def test_network_xml_passes_libvirts_schema(tmp_path, egress, installation_id):
    config = NetworkConfig(make_network(egress=egress, mtu=1450), installation_id)
    virt_xml_validate(tmp_path, config.to_xml(), "network")


def test_a_network_carries_the_installation_that_made_it(driver):
    marked = NetworkDriver(driver._host, "ab12cd34")
    assert marked.ensure(make_network()).installation_id == "ab12cd34"
    assert (
        driver.ensure(
            make_network(
                environment_id="8",
                uuid=str(uuid.UUID(int=8)),
                subnet="10.77.2.0/24",
                dhcp_range=default_dhcp_range("10.77.2.0/24"),
                dhcp_hosts=(),
                dns_hosts=(),
            )
        ).installation_id
        is None
    )
    with pytest.raises(InvalidSpec) as refused:
        NetworkConfig(make_network(), "bad id; <x/>")
    assert refused.value.field == "installation_id"


def test_interface_element_fits_a_domain(tmp_path):
    interface = NetworkInterface.for_vm("101", "7")
    element = interface.element()
    assert element.get("type") == "network"
    assert element.find("source").attrib == {"network": "strata-7"}
    assert element.find("mac").attrib == {"address": WEB.mac_address}
    assert element.find("model").attrib == {"type": "virtio"}
    # The existing domain builder accepts the same network and MAC.
    spec = make_spec(network=LibvirtNetwork(network="strata-7", mac_address=WEB.mac_address))
    domain = ET.fromstring(DomainConfig(spec).to_xml())  # noqa: S314 - our own output
    built = domain.find("devices/interface")
    assert ET.tostring(built) == ET.tostring(element)
    virt_xml_validate(tmp_path, ET.tostring(domain, encoding="unicode"), "domain")


def web_with(**changes) -> dict:
    return {"dhcp_hosts": (dataclasses.replace(WEB, **changes),)}


def api_with(**changes) -> dict:
    return {"dhcp_hosts": (WEB, dataclasses.replace(API, **changes))}


def dns(*records: tuple[str, tuple[str, ...]]) -> dict:
    return {"dns_hosts": tuple(DnsHost(ip, names) for ip, names in records)}


HOSTILE = [
    ("environment_id", {"environment_id": "../7"}),
    ("uuid", {"uuid": "not-a-uuid"}),
    ("environment_name", {"environment_name": "Dev"}),
    ("environment_name", {"environment_name": "dev.prod"}),
    ("environment_name", {"environment_name": "dev'/><forward mode='nat"}),
    ("team_name", {"team_name": "-acme"}),
    ("team_name", {"team_name": "a" * 64}),
    ("subnet", {"subnet": "10.77.1.5/24"}),
    ("subnet", {"subnet": "8.8.8.0/24"}),
    ("subnet", {"subnet": "127.0.0.0/24"}),
    ("subnet", {"subnet": "169.254.0.0/24"}),
    ("subnet", {"subnet": "fd00::/64"}),
    ("subnet", {"subnet": " 10.77.1.0/24"}),
    ("subnet prefix", {"subnet": "10.77.1.0/30"}),
    ("dhcp_range", {"dhcp_range": ("10.77.1.254", "10.77.1.128")}),
    ("dhcp_range", {"dhcp_range": ("10.77.1.1", "10.77.1.20")}),
    ("dhcp_range", {"dhcp_range": ("10.77.1.128",)}),
    ("dhcp_range[1]", {"dhcp_range": ("10.77.1.128", "10.77.2.5")}),
    ("dhcp_range[1]", {"dhcp_range": ("10.77.1.128", "10.77.1.255")}),
    ("dhcp_range[0]", {"dhcp_range": ("10.77.1.0128", "10.77.1.254")}),
    ("egress", {"egress": "bridge"}),
    ("mtu", {"mtu": 100}),
    ("mtu", {"mtu": True}),
    ("dhcp_hosts", {"dhcp_hosts": [WEB]}),
    ("dhcp_hosts[0]", {"dhcp_hosts": ("web",)}),
    ("dhcp_hosts[0].ip", web_with(ip="10.77.1.200")),
    ("dhcp_hosts[0].ip", web_with(ip="10.77.1.1")),
    ("dhcp_hosts[0].ip", web_with(ip="10.77.9.10")),
    ("dhcp_hosts[0].mac_address", web_with(mac_address="52:54:00:AA:bb:cc")),
    ("dhcp_hosts[0].mac_address", web_with(mac_address="00:16:3e:aa:bb:cc")),
    ("dhcp_hosts[0].hostname", web_with(hostname="web<1>")),
    ("dhcp_hosts[1].mac_address", api_with(mac_address=WEB.mac_address)),
    ("dhcp_hosts[1].ip", api_with(ip=WEB.ip)),
    ("dhcp_hosts[1].hostname", api_with(hostname="web-1")),
    ("dns_hosts[0].ip", dns(("10.77.2.1", ("api",)))),
    ("dns_hosts[0].hostnames", dns(("10.77.1.11", ()))),
    ("dns_hosts[0].hostnames", dns(("10.77.1.11", ("api", "api")))),
    ("dns_hosts[0].hostnames[0]", dns(("10.77.1.11", ("api..x",)))),
    ("dns_hosts[0].hostnames[0]", dns(("10.77.1.11", ("api\n",)))),
    ("dns_hosts[0].hostnames[1]", dns(("10.77.1.11", ("api", "a" * 254)))),
    ("dns_hosts[1].ip", dns(("10.77.1.11", ("a",)), ("10.77.1.11", ("b",)))),
    ("dns_hosts[1].hostnames", dns(("10.77.1.11", ("a",)), ("10.77.1.12", ("a",)))),
]


@pytest.mark.parametrize(("field", "overrides"), HOSTILE)
def test_hostile_values_are_refused_naming_the_field(field, overrides):
    with pytest.raises(InvalidSpec) as refused:
        NetworkConfig(make_network(**overrides)).to_xml()
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("field", "interface"),
    [
        ("network", NetworkInterface("default", WEB.mac_address)),
        ("network", NetworkInterface("strata-7'/><x", WEB.mac_address)),
        ("mac_address", NetworkInterface("strata-7", "52:54:00:aa:bb")),
    ],
)
def test_hostile_interface_values_are_refused(field, interface):
    with pytest.raises(InvalidSpec) as refused:
        interface.element()
    assert refused.value.field == field


# --- driver on test:///default ---------------------------------------------


def test_ensure_defines_starts_and_converges(driver):
    network_spec = make_network()
    first = driver.ensure(network_spec)
    assert first.active and first.name == "strata-7" and first.bridge == network_spec.bridge
    assert first.dhcp_hosts == (WEB, API) and first.dns_hosts == network_spec.dns_hosts
    assert driver.ensure(network_spec) == first, "a second ensure changes nothing"
    assert [network.name for network in driver.list()] == ["strata-7"]
    assert driver._host.connection.networkLookupByName("strata-7").autostart() == 1


def test_ensure_restarts_a_stopped_network(driver):
    driver.ensure(make_network())
    driver._host.connection.networkLookupByName("strata-7").destroy()
    assert driver.get("strata-7").active is False
    assert driver.ensure(make_network()).active is True


def test_ensure_refuses_a_network_with_another_subnet_and_changes_nothing(driver):
    driver.ensure(make_network())
    other = make_network(subnet="10.77.2.0/24", dhcp_range=default_dhcp_range("10.77.2.0/24"))
    with pytest.raises(InvalidState, match="address"):
        driver.ensure(dataclasses.replace(other, dhcp_hosts=(), dns_hosts=()))
    assert driver.get("strata-7").dhcp_hosts == (WEB, API)
    with pytest.raises(InvalidState, match="uuid"):
        driver.ensure(make_network(uuid=str(uuid.UUID(int=8))))


def test_list_shows_only_strata_networks(driver):
    driver.ensure(make_network())
    driver.ensure(
        make_network(
            environment_id="8",
            uuid=str(uuid.UUID(int=8)),
            environment_name="prod",
            subnet="10.77.2.0/24",
            dhcp_range=default_dhcp_range("10.77.2.0/24"),
            dhcp_hosts=(),
            dns_hosts=(),
        )
    )
    names = [network.name for network in driver.list()]
    assert names == ["strata-7", "strata-8"]
    assert "default" in driver._host.connection.listNetworks(), (
        "the test driver's own network is there"
    )
    assert all(name.startswith(NETWORK_NAME_PREFIX) for name in names)


def test_remove_is_idempotent_and_leaves_nothing(driver):
    driver.ensure(make_network())
    assert driver.remove("strata-7") is True
    assert driver.remove("strata-7") is False
    assert driver.list() == []
    with pytest.raises(NotFound):
        driver.get("strata-7")
    with pytest.raises(InvalidSpec) as refused:
        driver.remove("default")
    assert refused.value.field == "name"


def test_dns_records_are_added_and_removed_live_idempotently(driver):
    driver.ensure(make_network(dns_hosts=()))
    record = DnsHost("10.77.1.11", ("api", "api.dev.acme.strata"))
    assert driver.put_dns_host("strata-7", record) is True
    assert driver.put_dns_host("strata-7", record) is False, "adding it again is no error"
    assert driver.get("strata-7").dns_hosts == (record,)
    assert driver.remove_dns_host("strata-7", "10.77.1.11") is True
    assert driver.remove_dns_host("strata-7", "10.77.1.11") is False, "missing is no error"
    assert driver.get("strata-7").dns_hosts == ()


def test_a_name_moving_to_another_address_replaces_its_record(driver):
    driver.ensure(make_network())
    moved = DnsHost("10.77.1.12", ("api",))
    assert driver.put_dns_host("strata-7", moved) is True
    assert driver.get("strata-7").dns_hosts == (moved,)


def test_dhcp_hosts_are_reserved_and_released_live_idempotently(driver):
    driver.ensure(make_network(dhcp_hosts=(WEB,)))
    assert driver.put_dhcp_host("strata-7", API) is True
    assert driver.put_dhcp_host("strata-7", API) is False
    assert driver.get("strata-7").dhcp_hosts == (WEB, API)
    readdressed = dataclasses.replace(API, ip="10.77.1.20")
    assert driver.put_dhcp_host("strata-7", readdressed) is True
    assert driver.get("strata-7").dhcp_hosts == (WEB, readdressed)
    assert driver.remove_dhcp_host("strata-7", API.mac_address) is True
    assert driver.remove_dhcp_host("strata-7", API.mac_address) is False
    assert driver.get("strata-7").dhcp_hosts == (WEB,)


def test_records_of_a_stopped_network_go_to_its_config(driver):
    driver.ensure(make_network(dns_hosts=()))
    driver._host.connection.networkLookupByName("strata-7").destroy()
    assert driver.put_dns_host("strata-7", DnsHost("10.77.1.11", ("api",))) is True
    network = driver.ensure(make_network())
    assert network.active and network.dns_hosts == (DnsHost("10.77.1.11", ("api",)),)


def test_hostile_records_are_refused_before_libvirt(driver):
    driver.ensure(make_network())
    with pytest.raises(InvalidSpec) as refused:
        driver.put_dns_host("strata-7", DnsHost("10.77.9.1", ("api",)))
    assert refused.value.field == "record.ip"
    with pytest.raises(InvalidSpec) as refused:
        driver.put_dhcp_host("strata-7", dataclasses.replace(API, hostname="api;reboot"))
    assert refused.value.field == "record.hostname"
    with pytest.raises(InvalidSpec) as refused:
        driver.remove_dns_host("strata-7", "10.77.1.11/32")
    assert refused.value.field == "ip"
    with pytest.raises(NotFound):
        driver.put_dns_host("strata-9", DnsHost("10.77.1.11", ("api",)))
    assert driver.get("strata-7").dns_hosts == (DnsHost("10.77.1.11", ("api",)),)


def test_sync_records_repairs_drift(driver):
    network_spec = make_network()
    driver.ensure(network_spec)
    network = driver._host.connection.networkLookupByName("strata-7")
    flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    stray = "<host ip='10.77.1.50'><hostname>stray</hostname></host>"
    network.update(
        libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
        libvirt.VIR_NETWORK_SECTION_DNS_HOST,
        -1,
        stray,
        flags,
    )
    driver.remove_dhcp_host("strata-7", WEB.mac_address)
    assert driver.sync_records("strata-7", network_spec.dhcp_hosts, network_spec.dns_hosts) is True
    repaired = driver.get("strata-7")
    assert set(repaired.dhcp_hosts) == {WEB, API} and repaired.dns_hosts == network_spec.dns_hosts
    assert driver.sync_records("strata-7", network_spec.dhcp_hosts, network_spec.dns_hosts) is False


def test_two_writers_at_once_both_land(driver):
    """Two workers adding records to one network at the same moment (each on
    its own connection) must both succeed, and re-adding must stay quiet."""
    driver.ensure(make_network(dns_hosts=()))
    records = [DnsHost(f"10.77.1.{20 + n}", (f"svc-{n}",)) for n in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(mine: list[DnsHost]) -> None:
        host = Host("test:///default")
        try:
            start.wait()
            for record in mine:
                NetworkDriver(host).put_dns_host("strata-7", record)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
        finally:
            host.close()

    threads = [threading.Thread(target=writer, args=(records[n::2],)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(driver.get("strata-7").dns_hosts, key=lambda r: r.ip) == records


def test_a_writer_racing_between_read_and_update_is_retried(driver, monkeypatch):
    """The race the threads above rarely hit, forced: another worker adds the
    same record after our read, so libvirt refuses our add; the driver reads
    again, finds the record and reports no change instead of failing."""
    from workers.drivers.hypervisor import network as network_module

    driver.ensure(make_network(dns_hosts=()))
    record = DnsHost("10.77.1.11", ("api",))
    real_update = network_module._update
    raced = []

    def update_after_a_rival(network, command, section, wanted, flags):
        if not raced:
            raced.append(True)
            real_update(network, command, section, wanted, flags)
        real_update(network, command, section, wanted, flags)

    monkeypatch.setattr(network_module, "_update", update_after_a_rival)
    assert driver.put_dns_host("strata-7", record) is False
    assert raced and driver.get("strata-7").dns_hosts == (record,)


def test_two_ensures_at_once_make_one_running_network(driver):
    """Two jobs of one environment (a retry racing its original) both succeed."""
    results: list[object] = []
    start = threading.Barrier(2)

    def ensure() -> None:
        host = Host("test:///default")
        try:
            start.wait()
            results.append(NetworkDriver(host).ensure(make_network()))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            results.append(error)
        finally:
            host.close()

    threads = [threading.Thread(target=ensure) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [type(result).__name__ for result in results] == ["StrataNetwork"] * 2
    assert results[0] == results[1] and results[0].active
    assert [network.name for network in driver.list()] == ["strata-7"]


def test_two_removes_at_once_leave_nothing_and_raise_nothing(driver):
    driver.ensure(make_network())
    outcomes: list[object] = []
    start = threading.Barrier(2)

    def remove() -> None:
        host = Host("test:///default")
        try:
            start.wait()
            outcomes.append(NetworkDriver(host).remove("strata-7"))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            outcomes.append(error)
        finally:
            host.close()

    threads = [threading.Thread(target=remove) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(isinstance(outcome, bool) for outcome in outcomes) and True in outcomes
    assert driver.list() == []


def refuse_to_start(_network) -> None:
    raise libvirt.libvirtError("internal error: Network is already in use by interface eth9")


def test_a_network_that_cannot_start_is_not_left_defined(driver, monkeypatch):
    """On a real host create() fails when the subnet clashes with a host route
    or the bridge exists; the test driver never fails it, so the fault is injected."""
    monkeypatch.setattr(libvirt.virNetwork, "create", refuse_to_start)
    with pytest.raises(HypervisorError, match="already in use"):
        driver.ensure(make_network())
    assert driver.list() == []


def test_an_existing_network_that_cannot_start_stays_defined(driver, monkeypatch):
    driver.ensure(make_network())
    driver._host.connection.networkLookupByName("strata-7").destroy()
    monkeypatch.setattr(libvirt.virNetwork, "create", refuse_to_start)
    with pytest.raises(HypervisorError, match="already in use"):
        driver.ensure(make_network())
    assert [network.name for network in driver.list()] == ["strata-7"]


@pytest.mark.integration
def test_records_on_the_real_network_driver(tmp_path):
    """libvirtd's own network driver (not the test driver) on a network that is
    defined but never started: no bridge, no dnsmasq, no address appears on
    this machine, and updates go to the config only."""
    try:
        host = Host("qemu:///system")
    except HostUnreachable as error:
        pytest.skip(f"no libvirtd: {error}")
    conn = host.connection
    network_spec = make_network(
        environment_id=f"h8test-{uuid.uuid4().hex[:8]}", uuid=str(uuid.uuid4())
    )
    network = conn.networkDefineXML(NetworkConfig(network_spec).to_xml())
    try:
        real = NetworkDriver(host)
        assert real.get(network_spec.name).active is False and network.autostart() == 0
        record = DnsHost("10.77.1.12", ("db", "db.dev.acme.strata"))
        assert real.put_dns_host(network_spec.name, record) is True
        assert real.put_dns_host(network_spec.name, record) is False
        moved = dataclasses.replace(API, ip="10.77.1.13")
        assert real.put_dhcp_host(network_spec.name, moved) is True
        assert real.get(network_spec.name).dhcp_hosts == (WEB, moved)
        assert real.remove_dns_host(network_spec.name, "10.77.1.12") is True
        assert real.remove_dns_host(network_spec.name, "10.77.1.12") is False
        assert (
            real.sync_records(network_spec.name, network_spec.dhcp_hosts, network_spec.dns_hosts)
            is True
        )
        synced = real.get(network_spec.name)
        assert set(synced.dhcp_hosts) == set(network_spec.dhcp_hosts)
        assert synced.dns_hosts == network_spec.dns_hosts
        virt_xml_validate(tmp_path, network.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE), "network")
    finally:
        network.undefine()
        host.close()
