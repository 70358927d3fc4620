"""Hypervisor hosts: registering a machine and refreshing what it can hold."""

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.models import Host
from workers.hypervisor import Hypervisor, HypervisorError


class HostUnavailable(Exception):
    pass


@transaction.atomic
def register_host(name: str, libvirt_uri: str, virt_type: str | None = None) -> tuple[Host, bool]:
    """Create or refresh the Host row for ``libvirt_uri`` from its real capacity.

    Also makes libvirtd probe QEMU's capabilities for the host's virt type now,
    so the first VM defined there does not wait for that probe.
    """
    effective_virt_type = (
        virt_type
        or Host.objects.filter(name=name).values_list("virt_type", flat=True).first()
        or settings.STRATA_VIRT_TYPE
    )
    try:
        with Hypervisor(
            libvirt_uri, settings.STRATA_DATA_DIR, virt_type=effective_virt_type
        ) as hypervisor:
            capacity = hypervisor.capacity()
            hypervisor.warm_capabilities()
    except HypervisorError as exc:
        raise HostUnavailable(f"{libvirt_uri}: {exc}") from exc
    host, created = Host.objects.select_for_update().get_or_create(
        name=name,
        defaults={
            "libvirt_uri": libvirt_uri,
            "virt_type": virt_type or settings.STRATA_VIRT_TYPE,
            "cpus": capacity.cpus,
            "memory_mb": capacity.memory_mib,
        },
    )
    if not created:
        host.libvirt_uri = libvirt_uri
        host.cpus = capacity.cpus
        host.memory_mb = capacity.memory_mib
        if virt_type:
            host.virt_type = virt_type
    host.last_seen_at = timezone.now()
    host.full_clean()
    host.save()
    return host, created
