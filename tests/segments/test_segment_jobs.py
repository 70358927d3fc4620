"""Environment segments made and removed by the real job engine on a real
libvirtd (in a network namespace of the suite's own): create, define with the
segment NIC, destroy, two environments side by side, compensation, and the
reconciler's repair. No guest boots: the steps that start it are skipped."""

import ipaddress
import subprocess
import xml.etree.ElementTree as ET

import pytest
import redis
from django.conf import settings

from cloud.models import Environment, Job, JobStep, VirtualMachine
from cloud.services import environments
from workers.drivers.hypervisor import DnsHost, NetworkDriver
from workers.drivers.hypervisor.host import Host as LibvirtHost
from workers.jobs import engine
from workers.jobs.reconcile import reconcile_host

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BOOT_STEPS = ("start", "re-identity", "wait for ssh", "check docker")


@pytest.fixture
def world(segment_catalogue, make_team):
    host, _flavor, _image = segment_catalogue
    team, user = make_team("acme")
    yield host, team, user
    # The jobs were also sent to the host's queue, which no worker serves here.
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(host.queue)


@pytest.fixture
def networks(namespaced_libvirtd):
    driver_host = LibvirtHost(namespaced_libvirtd.uri)
    try:
        yield NetworkDriver(driver_host)
    finally:
        driver_host.close()


def run_children(parent: Job) -> None:
    """Run each child job's steps in this process, as a worker would."""
    for child in parent.children.order_by("pk"):
        child.steps.filter(name__in=BOOT_STEPS).update(state=JobStep.State.SKIPPED)
        engine.run(child.pk)
        child.refresh_from_db()
        assert child.state in ("succeeded", "failed"), child.state


def create_env(team, user, name: str, vm_count: int = 2, egress=None) -> Environment:
    parent = environments.create_environment(
        user=user, team=team, name=name, kind="dev", vm_count=vm_count, egress=egress
    )
    run_children(parent)
    parent.refresh_from_db()
    assert parent.state == "succeeded", [c.error for c in parent.children.all()]
    return Environment.objects.get(pk=parent.environment_id)


def destroy_env(team, user, env: Environment) -> None:
    parent = environments.destroy_environment(user=user, team=team, env_id=env.pk)
    run_children(parent)
    parent.refresh_from_db()
    assert parent.state == "succeeded", [c.error for c in parent.children.all()]


def bridge_address(daemon, bridge: str) -> str:
    return daemon.run_in_namespace("ip", "-4", "-o", "addr", "show", "dev", bridge).split()[3]


def in_main_namespace(bridge: str) -> bool:
    shown = subprocess.run(["ip", "link", "show", bridge], capture_output=True, check=False)
    return shown.returncode == 0


def network_forward(libvirt_connection, env: Environment) -> str | None:
    """The network's egress as libvirtd holds it (no <forward>: isolated)."""
    xml_text = libvirt_connection.networkLookupByName(env.network_name).XMLDesc(0)
    forward = ET.fromstring(xml_text).find("forward")  # noqa: S314 - libvirtd's own output
    return None if forward is None else forward.get("mode")


def segment_nics(libvirt_connection, vm: VirtualMachine) -> list[tuple[str, str]]:
    domain = libvirt_connection.lookupByUUIDString(str(vm.uuid))
    root = ET.fromstring(domain.XMLDesc(0))  # noqa: S314 - libvirtd's own output
    return [
        (nic.find("source").get("network"), nic.find("mac").get("address"))
        for nic in root.iterfind("devices/interface[@type='network']")
    ]


def test_create_makes_the_segment_and_destroy_removes_it(
    world, networks, namespaced_libvirtd, libvirt_connection
):
    host, team, user = world
    env = create_env(team, user, "web")
    vms = list(env.vms.order_by("name"))
    network = networks.get(env.network_name)
    assert network.active
    assert bridge_address(namespaced_libvirtd, network.bridge) == "10.240.0.1/24"
    assert not in_main_namespace(network.bridge)
    assert {(h.mac_address, h.ip, h.hostname) for h in network.dhcp_hosts} == {
        (vm.mac_address, vm.segment_ip, vm.name) for vm in vms
    }
    assert set(network.dns_hosts) == {DnsHost(vm.segment_ip, (vm.name,)) for vm in vms}
    for vm in vms:
        assert segment_nics(libvirt_connection, vm) == [(env.network_name, vm.mac_address)]
    # dnsmasq of the segment runs in the namespace, serving the static leases.
    hosts_file = f"{namespaced_libvirtd.root}/lib/dnsmasq/{env.network_name}.hostsfile"
    with open(hosts_file) as leases:
        assert {line.strip() for line in leases} == {
            f"{vm.mac_address},{vm.segment_ip},{vm.name}" for vm in vms
        }

    destroy_env(team, user, env)
    assert not Environment.objects.exists()
    assert networks.list() == []
    assert network.bridge not in namespaced_libvirtd.run_in_namespace("ip", "-o", "link")
    assert libvirt_connection.listAllDomains() == []


def test_two_environments_get_distinct_subnets_and_bridges(
    world, networks, namespaced_libvirtd, libvirt_connection
):
    host, team, user = world
    web, api = create_env(team, user, "web", 1), create_env(team, user, "api", 1, egress="nat")
    first, second = networks.get(web.network_name), networks.get(api.network_name)
    assert network_forward(libvirt_connection, web) is None
    assert network_forward(libvirt_connection, api) == "nat"
    assert first.bridge != second.bridge
    assert not ipaddress.ip_network(web.subnet).overlaps(ipaddress.ip_network(api.subnet))
    assert bridge_address(namespaced_libvirtd, second.bridge) == "10.240.1.1/24"
    destroy_env(team, user, web)
    assert [n.name for n in networks.list()] == [api.network_name]
    destroy_env(team, user, api)
    assert networks.list() == []


def test_a_failed_provisioning_removes_the_network_it_made(world, networks, libvirt_connection):
    host, team, user = world
    parent = environments.create_environment(
        user=user, team=team, name="web", kind="dev", vm_count=1, flavor="small"
    )
    # A kernel path the domain spec refuses: define fails after the network was made.
    vm = VirtualMachine.objects.get(environment=parent.environment_id)
    vm.image.kernel_path = "relative/vmlinuz"
    vm.image.save()
    run_children(parent)
    child = parent.children.get()
    assert child.state == "failed" and "kernel_boot.kernel_path" in child.error
    assert child.steps.get(name="ensure network").state == "done"
    compensation = child.steps.get(name="compensate")
    assert compensation.state == "done" and "removed" in compensation.log
    assert networks.list() == []
    assert libvirt_connection.listAllDomains() == []
    # The VM is kept (in error, without a domain); the reconciler makes no network for it.
    assert reconcile_host(host.pk)["segments_repaired"] == 0
    assert networks.list() == []


def test_the_reconciler_puts_back_a_missing_dns_record(world, networks):
    host, team, user = world
    env = create_env(team, user, "web", 1)
    # Stopped (not running, which the reconciler would boot): its domain is defined.
    env.vms.update(state="stopped")
    vm = env.vms.get()
    networks.remove_dns_host(env.network_name, vm.segment_ip)
    networks.remove_dhcp_host(env.network_name, vm.mac_address)
    assert networks.get(env.network_name).dns_hosts == ()
    counts = reconcile_host(host.pk)
    assert counts["segments_repaired"] == 1
    network = networks.get(env.network_name)
    assert network.dns_hosts == (DnsHost(vm.segment_ip, (vm.name,)),)
    assert [h.ip for h in network.dhcp_hosts] == [vm.segment_ip]
    assert reconcile_host(host.pk)["segments_repaired"] == 0
    destroy_env(team, user, env)


FOREIGN_NETWORK = """<network><name>foreign-net</name><bridge name='foreign0'/>
<ip address='10.240.0.1' prefix='24'/></network>"""


def test_a_subnet_another_network_holds_fails_provisioning_and_leaves_nothing(
    world, networks, libvirt_connection
):
    """Another installation on the same libvirtd with an overlapping pool: libvirt
    refuses to start the segment, the network this run defined is undefined again."""
    host, team, user = world
    foreign = libvirt_connection.networkDefineXML(FOREIGN_NETWORK)
    try:
        foreign.create()
        parent = environments.create_environment(
            user=user, team=team, name="web", kind="dev", vm_count=1
        )
        run_children(parent)
        child = parent.children.get()
        assert child.state == "failed"
        assert child.error.startswith("ensure network:") and "in use" in child.error
        assert child.steps.get(name="define").state == "pending"
        assert networks.list() == []
        assert libvirt_connection.listAllDomains() == []
    finally:
        foreign.destroy()
        foreign.undefine()


def test_destroy_converges_when_the_network_is_gone_already(world, networks):
    host, team, user = world
    env = create_env(team, user, "web", 1)
    networks.remove(env.network_name)
    parent = environments.destroy_environment(user=user, team=team, env_id=env.pk)
    run_children(parent)
    child = parent.children.get()
    assert child.state == "succeeded", child.error
    assert "is gone already" in child.steps.get(name="remove records").log
    assert "was gone already" in child.steps.get(name="remove network").log
    assert not Environment.objects.exists()


def test_the_last_vm_of_an_environment_takes_the_network_with_it(world, networks):
    host, team, user = world
    env = create_env(team, user, "web", 2)
    first, second = env.vms.order_by("name")
    job = engine.create_job(team=team, kind="destroy_vm", environment=env, vm=first)
    engine.run(job.pk)
    job.refresh_from_db()
    assert job.state == "succeeded", job.error
    assert "kept for 1 other VMs" in job.steps.get(name="remove network").log
    network = networks.get(env.network_name)
    assert [h.ip for h in network.dhcp_hosts] == [second.segment_ip]
    assert network.dns_hosts == (DnsHost(second.segment_ip, (second.name,)),)
    destroy_env(team, user, env)
    assert networks.list() == []


def test_the_reconciler_leaves_a_segment_a_job_is_changing_alone(world, networks):
    host, team, user = world
    env = create_env(team, user, "web", 1)
    env.vms.update(state="stopped")
    vm = env.vms.get()
    networks.remove_dns_host(env.network_name, vm.segment_ip)
    holder = engine.create_job(team=team, kind="vm_start", environment=env, vm=vm)
    Environment.objects.filter(pk=env.pk).update(lock_job=holder)
    assert reconcile_host(host.pk)["segments_repaired"] == 0
    assert networks.get(env.network_name).dns_hosts == ()
    engine.finish(holder, "cancelled", "test over")
    assert reconcile_host(host.pk)["segments_repaired"] == 1
    destroy_env(team, user, env)
