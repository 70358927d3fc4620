"""Console tickets: one use, bound to user, VM and origin, short-lived; the
role decides who types; another team's VM does not exist; sessions audited."""

from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.models import ConsoleTicket
from cloud.services.console import TicketRefused, end_session, issue_ticket, redeem_ticket
from cloud.services.errors import NotFound, ValidationError
from tenants.models import AuditEvent, Membership

from .conftest import ORIGIN

pytestmark = pytest.mark.django_db


def redeem(world, user, vm, origin=ORIGIN, key=None):
    key = key or issue_ticket(user, world["team"], vm.pk, ORIGIN).key
    return redeem_ticket(key, user, vm.pk, origin)


@pytest.mark.parametrize(
    ("role", "vm", "types"),
    [
        ("developer", "dev_vm", True),
        ("developer", "prod_vm", False),
        ("admin", "prod_vm", True),
        ("viewer", "dev_vm", False),
        ("viewer", "prod_vm", False),
    ],
)
def test_the_role_decides_who_types(console_world, role, vm, types):
    ticket = redeem(console_world, console_world[role], console_world[vm])
    assert ticket.can_type is types


def test_a_ticket_opens_one_session_only(console_world):
    user, vm = console_world["developer"], console_world["dev_vm"]
    key = issue_ticket(user, console_world["team"], vm.pk, ORIGIN).key
    redeem_ticket(key, user, vm.pk, ORIGIN)
    with pytest.raises(TicketRefused, match="already used"):
        redeem_ticket(key, user, vm.pk, ORIGIN)


def test_an_unused_ticket_expires_within_a_minute(console_world, settings):
    assert settings.STRATA_CONSOLE_TICKET_SECONDS <= 60
    user, vm = console_world["developer"], console_world["dev_vm"]
    issued = issue_ticket(user, console_world["team"], vm.pk, ORIGIN)
    assert issued.ticket.expires_at <= timezone.now() + timedelta(seconds=60)
    ConsoleTicket.objects.filter(pk=issued.ticket.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(TicketRefused, match="expired"):
        redeem_ticket(issued.key, user, vm.pk, ORIGIN)


def test_a_ticket_is_bound_to_its_origin_and_user(console_world):
    user, vm = console_world["developer"], console_world["dev_vm"]
    issued = issue_ticket(user, console_world["team"], vm.pk, ORIGIN)
    with pytest.raises(TicketRefused, match="origin"):
        redeem_ticket(issued.key, user, vm.pk, "http://evil.example")
    with pytest.raises(TicketRefused, match="unknown"):
        redeem_ticket(issued.key, console_world["admin"], vm.pk, ORIGIN)
    with pytest.raises(TicketRefused, match="unknown"):
        redeem_ticket("ct_guessed", user, vm.pk, ORIGIN)
    # None of the refusals used it up.
    assert redeem_ticket(issued.key, user, vm.pk, ORIGIN).used_at is not None


def test_another_teams_vm_is_not_found(console_world):
    outsider_vm = console_world["other_vm"]
    with pytest.raises(NotFound):
        issue_ticket(console_world["developer"], console_world["team"], outsider_vm.pk, ORIGIN)
    with pytest.raises(NotFound):
        issue_ticket(
            console_world["developer"], console_world["other_team"], outsider_vm.pk, ORIGIN
        )
    # A ticket of one VM shown on another VM's socket.
    user = console_world["developer"]
    key = issue_ticket(user, console_world["team"], console_world["dev_vm"].pk, ORIGIN).key
    with pytest.raises(NotFound):
        redeem_ticket(key, user, outsider_vm.pk, ORIGIN)


def test_a_member_removed_after_the_ticket_cannot_use_it(console_world):
    user, vm = console_world["developer"], console_world["dev_vm"]
    key = issue_ticket(user, console_world["team"], vm.pk, ORIGIN).key
    Membership.objects.filter(user=user).delete()
    with pytest.raises(NotFound):
        redeem_ticket(key, user, vm.pk, ORIGIN)


def test_bad_input_names_the_field(console_world):
    user, vm = console_world["developer"], console_world["dev_vm"]
    with pytest.raises(ValidationError) as refused:
        issue_ticket(user, console_world["team"], vm.pk, "")
    assert "origin" in refused.value.message_dict
    vm.state = "stopped"
    vm.save()
    with pytest.raises(ValidationError) as refused:
        issue_ticket(user, console_world["team"], vm.pk, ORIGIN)
    assert "vm" in refused.value.message_dict
    assert not ConsoleTicket.objects.exists()


def test_each_session_is_audited_with_its_start_and_end(console_world):
    user, vm = console_world["developer"], console_world["dev_vm"]
    ticket = redeem(console_world, user, vm)
    end_session(ticket, "the tab was closed")
    end_session(ticket, "a second end is not recorded")
    start, end = AuditEvent.objects.filter(action__startswith="console.").order_by("id")
    assert (start.action, start.actor, start.target_id) == ("console.start", user, str(vm.pk))
    assert start.details["can_type"] is True
    assert end.action == "console.end"
    assert end.details["started_at"] == start.details["started_at"]
    assert end.details["reason"] == "the tab was closed"
    assert end.details["ended_at"] >= end.details["started_at"]


class TestPortalTicket:
    def url(self, world, vm):
        return f"/t/{world['team'].name}/vms/{vm.pk}/console/ticket/"

    def test_the_page_gets_a_ticket_for_its_origin(self, console_world, client):
        client.force_login(console_world["viewer"])
        vm = console_world["dev_vm"]
        answer = client.post(self.url(console_world, vm), headers={"Origin": ORIGIN})
        assert answer.status_code == 200
        body = answer.json()
        assert body["websocket_path"] == f"/ws/vms/{vm.pk}/console/"
        assert body["ticket"].startswith("ct_")
        # Only the digest is stored.
        assert not ConsoleTicket.objects.filter(digest=body["ticket"]).exists()
        assert ConsoleTicket.objects.get().origin == ORIGIN

    def test_refusals(self, console_world, client):
        client.force_login(console_world["developer"])
        vm = console_world["dev_vm"]
        url = self.url(console_world, vm)
        assert client.get(url).status_code == 405
        no_origin = client.post(url)
        assert no_origin.status_code == 400
        assert "origin" in no_origin.json()["errors"]
        other = self.url(console_world, console_world["other_vm"])
        assert client.post(other, headers={"Origin": ORIGIN}).status_code == 404
        client.logout()
        assert client.post(url, headers={"Origin": ORIGIN}).status_code == 302
        assert not ConsoleTicket.objects.exists()
