"""The one place that turns models into driver objects: a host's hypervisor,
a VM's SSH endpoint and connection, its port forwards, its domain spec and
its environment's network spec.

Steps, the reconciler, the Celery entry points and the host services reach
libvirt and guests only through these, so the settings a driver is built
with (data directory, storage pool, installation mark) are read here once.
"""

import contextlib
from collections.abc import Iterator
from functools import cache

from django.conf import settings
from django.db import IntegrityError, transaction

from cloud.models import Environment, Host, Image, PortForward, VirtualMachine, VMState
from workers.drivers.guest import ConnectionPool, Endpoint, SSHConnection, load_private_key
from workers.drivers.guest.guest_proxy import GuestProxy
from workers.drivers.hypervisor import (
    DhcpHost,
    DnsHost,
    DomainSpec,
    ForwardSpec,
    Hypervisor,
    HypervisorError,
    KernelBoot,
    LibvirtNetwork,
    NetworkSpec,
    UserNetwork,
)
from workers.drivers.hypervisor.ports import claim_loopback_port
from workers.drivers.hypervisor.spec import SSH_GUEST_PORT, default_dhcp_range
from workers.jobs.engine import UserError
from workers.jobs.keys import manager_keypair

# --- hypervisors ----------------------------------------------------------------


@contextlib.contextmanager
def hypervisor_at(libvirt_uri: str, virt_type: str = "qemu") -> Iterator[Hypervisor]:
    """The driver for the libvirtd at ``libvirt_uri``, closed on leaving."""
    with Hypervisor(
        libvirt_uri,
        settings.STRATA_DATA_DIR,
        pool_name=settings.STRATA_STORAGE_POOL,
        virt_type=virt_type,
        installation_id=settings.STRATA_INSTALLATION_ID,
    ) as hv:
        yield hv


def host_hypervisor(host: Host):
    return hypervisor_at(host.libvirt_uri, host.virt_type)


def hypervisor(vm: VirtualMachine):
    """The driver for the host ``vm`` lives on."""
    return host_hypervisor(vm.host)


# --- SSH to guests --------------------------------------------------------------


@cache
def ssh_pool() -> ConnectionPool:
    """One pool per worker process, so a job's steps share one SSH connection per VM."""
    return ConnectionPool(load_private_key(manager_keypair().private_openssh))


def endpoint(vm: VirtualMachine) -> Endpoint:
    """The VM's sshd on its loopback forward, with the host key pinned at provisioning."""
    return Endpoint("127.0.0.1", vm.ssh_port or ssh_port(vm), "root", vm.host_key_public)


def connect(vm: VirtualMachine) -> SSHConnection:
    return ssh_pool().get(endpoint(vm))


def guest_proxy() -> GuestProxy:
    """Where every guest's HAProxy lives; a bad setting raises naming it."""
    overrides = {
        "directory": settings.STRATA_GUEST_PROXY_DIR,
        "publish_address": settings.STRATA_GUEST_PUBLISH_ADDRESS,
    }
    return GuestProxy(**{field: value for field, value in overrides.items() if value})


# --- port forwards --------------------------------------------------------------


def ssh_port(vm: VirtualMachine) -> int | None:
    forward = PortForward.objects.filter(vm=vm, guest_port=SSH_GUEST_PORT).first()
    return forward.host_port if forward else None


def forward_port(vm: VirtualMachine, guest_port: int) -> PortForward:
    """The VM's forward to ``guest_port``, given a free host port once; safe
    when jobs on the same host allocate at the same time.  The one allocator
    of host ports, for SSH and for published ports."""
    existing = PortForward.objects.filter(vm=vm, guest_port=guest_port).first()
    if existing is not None:
        return existing

    def claim(port: int) -> bool:
        try:
            with transaction.atomic():
                PortForward.objects.create(
                    host=vm.host, host_port=port, vm=vm, guest_port=guest_port
                )
        except IntegrityError:
            # Another job took the port, or another run of this job made the forward.
            return PortForward.objects.filter(vm=vm, guest_port=guest_port).exists()
        return True

    def taken() -> set[int]:
        return set(PortForward.objects.filter(host=vm.host).values_list("host_port", flat=True))

    try:
        claim_loopback_port(claim, taken)
    except HypervisorError as exc:
        raise UserError(f"no free loopback port on {vm.host} for {vm.name}:{guest_port}") from exc
    return PortForward.objects.get(vm=vm, guest_port=guest_port)


# --- domains --------------------------------------------------------------------


def domain_spec(vm: VirtualMachine, hv: Hypervisor) -> DomainSpec:
    """The domain of ``vm``; the driver validates it, once, when it builds the XML."""
    published = PortForward.objects.filter(vm=vm).exclude(guest_port=SSH_GUEST_PORT).order_by("pk")
    network = UserNetwork(
        ssh_host_port=ssh_port(vm),
        forwards=tuple(ForwardSpec(f.host_port, f.guest_port) for f in published),
    )
    # A VM restored from a template keeps the template's seed: the same
    # instance-id, so cloud-init never runs again on a reboot of it.
    if vm.template_id is not None:
        seed_path = hv.storage.template_seed_path(vm.template.name)
    else:
        seed_path = hv.storage.seed_path(vm.domain_name)
    return DomainSpec(
        name=vm.domain_name,
        uuid=str(vm.uuid),
        vm_id=str(vm.pk),
        environment_id=str(vm.environment_id),
        vcpus=vm.flavor.vcpus,
        memory_mib=vm.flavor.memory_mb,
        disk_path=hv.storage.disk_path(vm.domain_name),
        console_log_path=hv.storage.console_log_path(vm.domain_name),
        network=network,
        segment=segment_nic(vm),
        seed_path=seed_path,
        virt_type=vm.host.virt_type,
        cpu_mode=vm.host.cpu_mode,
        kernel_boot=kernel_boot(vm.image),
    )


def kernel_boot(image: Image) -> KernelBoot | None:
    """Direct kernel boot for an image that ships its kernel; None boots its disk."""
    if not image.kernel_path:
        return None
    return KernelBoot(image.kernel_path, image.initrd_path or None, image.kernel_cmdline)


# --- environment segments -------------------------------------------------------


def segment_nic(vm: VirtualMachine) -> LibvirtNetwork | None:
    """The VM's NIC on its environment's network; None for a VM without an address."""
    if vm.segment_ip is None:
        return None
    return LibvirtNetwork(network=vm.environment.network_name, mac_address=vm.mac_address)


def segment_vms(env: Environment, host: Host):
    """The environment's VMs on ``host`` that hold an address: the network serves these."""
    return (
        VirtualMachine.objects.filter(environment=env, host=host)
        .exclude(state=VMState.DELETED)
        .exclude(segment_ip=None)
        .order_by("pk")
    )


def network_spec(env: Environment, host: Host) -> NetworkSpec:
    """The environment's network on ``host``, with a static lease and a name for
    each of its VMs there; the driver validates it."""
    vms = list(segment_vms(env, host))
    return NetworkSpec(
        environment_id=env.network_uuid.hex,
        uuid=str(env.network_uuid),
        environment_name=env.name,
        team_name=env.team.name,
        subnet=env.subnet,
        dhcp_range=default_dhcp_range(env.subnet),
        dhcp_hosts=tuple(DhcpHost(vm.mac_address, vm.segment_ip, vm.name) for vm in vms),
        dns_hosts=tuple(DnsHost(vm.segment_ip, (vm.name,)) for vm in vms),
        egress=None if env.egress == Environment.Egress.ISOLATED else env.egress,
    )
