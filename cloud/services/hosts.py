"""Hypervisor hosts: registering a machine and refreshing what it can hold."""

from django.db import transaction
from django.utils import timezone

from cloud.models import Host
from workers.drivers.hypervisor import HypervisorError
from workers.jobs.adapters import hypervisor_at
from workers.jobs.host_support import record_virt_support


class HostUnavailable(Exception):
    pass


@transaction.atomic
def register_host(name: str, libvirt_uri: str, virt_type: str | None = None) -> tuple[Host, bool]:
    """Create or refresh the Host row for ``libvirt_uri`` from its real capacity
    and the hardware virtualisation it can do. ``virt_type`` overrides the
    detected type (kept from an earlier registration when not given).

    Also makes libvirtd probe QEMU's capabilities for the host's virt type now,
    so the first VM defined there does not wait for that probe.
    """
    override = (
        virt_type
        or Host.objects.filter(name=name).values_list("virt_type_override", flat=True).first()
    )
    try:
        with hypervisor_at(libvirt_uri) as hypervisor:
            capacity = hypervisor.host.capacity()
            support = hypervisor.host.detect_virtualisation()
            hypervisor.host.warm_capabilities(override or support.virt_type)
    except HypervisorError as exc:
        raise HostUnavailable(f"{libvirt_uri}: {exc}") from exc
    host, created = Host.objects.select_for_update().get_or_create(
        name=name,
        defaults={
            "libvirt_uri": libvirt_uri,
            "virt_type_override": virt_type or "",
            "cpus": capacity.cpus,
            "memory_mb": capacity.memory_mib,
        },
    )
    if not created:
        host.libvirt_uri = libvirt_uri
        host.cpus = capacity.cpus
        host.memory_mb = capacity.memory_mib
        if virt_type:
            host.virt_type_override = virt_type
    record_virt_support(host, support)
    host.last_seen_at = timezone.now()
    host.full_clean()
    host.save()
    return host, created
