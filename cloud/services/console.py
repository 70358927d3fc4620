"""Console sessions: tickets issued to a member's page, redeemed once by its
websocket, and the audit record of each session.

Who may type is the rule of every other action (``ACT_ROLE``): developers on
dev and staging, admins on prod; anyone else in the team watches read-only.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.models import ConsoleTicket, VirtualMachine, VMState
from cloud.services.access import ACT_ROLE, require_read
from cloud.services.environments import get_vm
from cloud.services.errors import NotFound, ValidationError
from tenants.models import AuditEvent, Membership

TICKET_PREFIX = "ct_"
MAX_ORIGIN_LENGTH = 255


class TicketRefused(Exception):
    """The websocket's ticket does not open this console; the message says why."""


@dataclass(frozen=True)
class IssuedTicket:
    key: str
    ticket: ConsoleTicket


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _valid_origin(origin: str) -> str:
    origin = (origin or "").strip()
    if not origin.startswith(("http://", "https://")) or len(origin) > MAX_ORIGIN_LENGTH:
        raise ValidationError({"origin": ["the request must come from a page (Origin header)"]})
    return origin


def can_type(membership: Membership, vm: VirtualMachine) -> bool:
    return membership.has_role(ACT_ROLE[vm.environment.kind])


def issue_ticket(user, team, vm_id, origin: str) -> IssuedTicket:
    """A ticket for the VM's console, for a member of its team; 404 for any other VM."""
    vm = get_vm(user, team, vm_id)
    origin = _valid_origin(origin)
    if vm.state != VMState.RUNNING or vm.host is None:
        raise ValidationError({"vm": [f"the VM is {vm.state}; its console opens when it runs"]})
    key = TICKET_PREFIX + secrets.token_urlsafe(32)
    ticket = ConsoleTicket.objects.create(
        digest=_digest(key),
        user=user,
        vm=vm,
        origin=origin,
        expires_at=timezone.now() + timedelta(seconds=settings.STRATA_CONSOLE_TICKET_SECONDS),
    )
    return IssuedTicket(key, ticket)


def _refusal(key: str, user, vm_id, origin: str) -> TicketRefused | NotFound:
    """Why redeeming failed, checked in the order that tells the least to a stranger."""
    ticket = ConsoleTicket.objects.filter(digest=_digest(key)).select_related("vm").first()
    if ticket is None or ticket.user_id != getattr(user, "pk", None):
        return TicketRefused("unknown console ticket")
    if str(ticket.vm_id) != str(vm_id):
        return NotFound("no such VM")
    if ticket.used_at is not None:
        return TicketRefused("this console ticket was already used; open the console again")
    if ticket.expires_at <= timezone.now():
        return TicketRefused("this console ticket expired; open the console again")
    if ticket.origin != origin:
        return TicketRefused("this console ticket belongs to another page's origin")
    # Everything matched, so another socket redeemed it a moment ago.
    return TicketRefused("this console ticket was already used; open the console again")


@transaction.atomic
def redeem_ticket(key: str, user, vm_id, origin: str) -> ConsoleTicket:
    """Use the ticket once: start the session it opens, with the caller's current role.

    Raises TicketRefused (reused, expired, another user's or origin's) or
    NotFound (another VM, a team the user left).
    """
    now = timezone.now()
    used = ConsoleTicket.objects.filter(
        digest=_digest(key or ""),
        user_id=getattr(user, "pk", None),
        vm_id=vm_id if str(vm_id).isdigit() else None,
        origin=origin or "",
        used_at=None,
        expires_at__gt=now,
    ).update(used_at=now)
    if used != 1:
        raise _refusal(key or "", user, vm_id, origin or "")
    ticket = ConsoleTicket.objects.select_related("vm__environment__team", "vm__host").get(
        digest=_digest(key)
    )
    vm = ticket.vm
    team = vm.environment.team
    member = require_read(user, team)  # a member removed since the ticket was issued
    ticket.can_type = can_type(member, vm)
    ticket.save(update_fields=["can_type"])
    AuditEvent.record(
        "console.start",
        team=team,
        actor=user,
        target=vm,
        ticket=ticket.pk,
        can_type=ticket.can_type,
        started_at=now.isoformat(),
    )
    return ticket


def end_session(ticket: ConsoleTicket, reason: str) -> None:
    """Record the session's end once (a closed tab, a stopped VM, an idle timeout)."""
    now = timezone.now()
    ended = ConsoleTicket.objects.filter(pk=ticket.pk, ended_at=None).update(
        ended_at=now, end_reason=reason[:200]
    )
    if not ended:
        return
    AuditEvent.record(
        "console.end",
        team=ticket.vm.environment.team,
        actor=ticket.user,
        target=ticket.vm,
        ticket=ticket.pk,
        started_at=ticket.used_at.isoformat(),
        ended_at=now.isoformat(),
        reason=reason[:200],
    )
