"""What a host was found able to do, written onto its row: host registration
(a service) and the reconciler both detect it and record it the same way."""

from django.utils import timezone

from cloud.models import Host
from workers.drivers.hypervisor.virt_detect import VirtSupport


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
