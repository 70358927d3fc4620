"""Small helpers for the portal's templates."""

from django import template
from django.utils import timezone

from cloud.services.access import ACT_ROLE
from cloud.services.environments import VM_ACTIONS

register = template.Library()


@register.filter
def can_act_on(membership, kind: str) -> bool:
    """Whether the member's role may change an environment of ``kind`` (to hide
    buttons; the services enforce the same rule)."""
    return membership is not None and membership.has_role(ACT_ROLE[kind])


@register.filter
def allows(vm, action: str) -> bool:
    """Whether ``action`` may start from the VM's current state."""
    return vm.state in VM_ACTIONS.get(action, ())


@register.filter
def duration(start, end) -> str:
    """From ``start`` to ``end`` (or to now, while running) as 1h 02m 03s."""
    if start is None:
        return ""
    seconds = max(int(((end or timezone.now()) - start).total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


POWER_ACTIONS = (("start", "Start"), ("stop", "Stop"), ("reboot", "Reboot"))


@register.simple_tag
def power_actions(vm) -> list[tuple[str, str]]:
    """The start/stop/reboot buttons that apply to the VM in its state."""
    return [(action, label) for action, label in POWER_ACTIONS if allows(vm, action)]
