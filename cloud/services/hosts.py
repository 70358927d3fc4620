"""Hypervisor hosts: registering a machine and refreshing what it can hold."""

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.models import Host
from workers.drivers.hypervisor import Hypervisor, HypervisorError
from workers.drivers.hypervisor.virt_detect import VirtSupport


class HostUnavailable(Exception):
    pass


def record_virt_support(host: Host, support: VirtSupport) -> bool:
    """Store what ``host`` was found able to do; True when the detected type or
    its reason differs from what was stored (the caller saves and audits)."""
    changed = (host.detected_virt_type, host.virt_type_reason) != (
        support.virt_type,
        support.reason,
    )
    host.detected_virt_type = support.virt_type
    host.virt_type_reason = support.reason
    host.virt_checked_at = timezone.now()
    return changed


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
        with Hypervisor(libvirt_uri, settings.STRATA_DATA_DIR) as hypervisor:
            capacity = hypervisor.capacity()
            support = hypervisor.detect_virtualisation()
            hypervisor.warm_capabilities(override or support.virt_type)
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
