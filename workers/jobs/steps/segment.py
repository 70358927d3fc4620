"""The environment's segment on a VM's host, as steps of the VM's jobs.

Provisioning ensures the network (defined, started, with a static lease and
a DNS name for every VM of the environment on that host) before the domain
that attaches to it is defined; destroying a VM drops its records, and the
last VM of the environment on a host takes the network with it. Everything
is derived from the database, so a re-run converges to the same network.
"""

import logging

from cloud.models import Environment, VirtualMachine, VMState
from workers.drivers.hypervisor import Hypervisor, HypervisorError, NotFound
from workers.jobs.adapters import hypervisor, network_spec
from workers.jobs.engine import StepContext

log = logging.getLogger(__name__)
# VM states in which the VM's domain is defined on its host.
DOMAIN_STATES = (VMState.RUNNING, VMState.STOPPING, VMState.STOPPED)


def _vm(ctx: StepContext) -> VirtualMachine:
    return VirtualMachine.objects.select_related("host", "environment__team").get(pk=ctx.job.vm_id)


def ensure_network(ctx: StepContext) -> None:
    """The environment's network on this host, with this VM's DHCP and DNS records."""
    vm = _vm(ctx)
    env = vm.environment
    if vm.segment_ip is None:
        ctx.log("no segment: the environment was made while STRATA_SUBNET_POOL was unset")
        return
    with hypervisor(vm) as hv:
        network = hv.networks.ensure(network_spec(env, vm.host))
    ctx.log(
        f"network {network.name} (bridge {network.bridge}, {env.subnet}); "
        f"{vm.name} at {vm.segment_ip} by static DHCP for {vm.mac_address}, "
        f"named {vm.name}.{env.name}.{env.team.name}.strata"
    )


def remove_records(ctx: StepContext) -> None:
    """Drop this VM's static lease and DNS name from its environment's network."""
    vm = _vm(ctx)
    if vm.segment_ip is None:
        return
    with hypervisor(vm) as hv:
        ctx.log(_drop_records(hv, vm))


def _drop_records(hv: Hypervisor, vm: VirtualMachine) -> str:
    name = vm.environment.network_name
    try:
        hv.networks.remove_dhcp_host(name, vm.mac_address)
        hv.networks.remove_dns_host(name, vm.segment_ip)
    except NotFound:
        return f"network {name} is gone already"
    return f"{vm.segment_ip} ({vm.mac_address}) removed from DHCP and DNS of {name}"


def _remove_network_if_unused(hv: Hypervisor, vm: VirtualMachine) -> str:
    """Remove the network once no other VM of the environment on this host has
    a record (a deleted VM has none); each destroy checks after its own VM is
    marked deleted, so the last of several concurrent destroys removes it."""
    others = (
        VirtualMachine.objects.filter(environment=vm.environment_id, host=vm.host_id)
        .exclude(state=VMState.DELETED)
        .exclude(pk=vm.pk)
    )
    name = vm.environment.network_name
    if others.exists():
        return f"network {name} kept for {others.count()} other VMs"
    removed = hv.networks.remove(name)
    return f"network {name} removed" if removed else f"network {name} was gone already"


def remove_network(ctx: StepContext) -> None:
    vm = _vm(ctx)
    if vm.segment_ip is None:
        return
    with hypervisor(vm) as hv:
        ctx.log(_remove_network_if_unused(hv, vm))


def undo_segment(ctx: StepContext) -> None:
    """Compensation of a failed provisioning: this VM's records, and the
    network when no other VM of the environment on this host needs it."""
    vm = _vm(ctx)
    if vm.segment_ip is None:
        return
    with hypervisor(vm) as hv:
        ctx.log(_drop_records(hv, vm))
        ctx.log(_remove_network_if_unused(hv, vm))


def repair_records(hv: Hypervisor, host, busy_vm_ids: set[int]) -> int:
    """The reconciler's repair: every segment on ``host`` gets exactly the DHCP and
    DNS records the database wants (a network found missing is made again).

    Only environments with a VM that has a domain here count (a failed
    provisioning's VM has none, and its network was removed on purpose);
    environments a job is changing are left to it. Returns the networks changed."""
    live = VirtualMachine.objects.filter(host=host).exclude(state=VMState.DELETED)
    busy_envs = live.filter(pk__in=busy_vm_ids).values("environment")
    with_domains = live.filter(state__in=DOMAIN_STATES).exclude(segment_ip=None)
    envs = (
        Environment.objects.filter(pk__in=with_domains.values("environment"))
        .exclude(pk__in=busy_envs)
        .select_related("team")
    )
    repaired = 0
    for env in envs:
        spec = network_spec(env, host)
        try:
            try:
                changed = hv.networks.sync_records(spec.name, spec.dhcp_hosts, spec.dns_hosts)
            except NotFound:
                hv.networks.ensure(spec)
                changed = True
        except HypervisorError as error:
            log.warning("segment %s on %s not repaired: %s", spec.name, host, error)
            continue
        if changed:
            log.warning("segment %s on %s had drifted; records repaired", spec.name, host)
            repaired += 1
    return repaired
