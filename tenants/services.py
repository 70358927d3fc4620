"""Team operations: creating teams with their quota and first admin."""

from django.db import transaction

from tenants.models import AuditEvent, Membership, Quota, Role, Team


@transaction.atomic
def create_team(name: str, admin_user, *, actor=None, display_name: str = "") -> Team:
    team = Team(name=name, display_name=display_name)
    team.full_clean()
    team.save()
    Quota.objects.create(team=team)
    Membership.objects.create(team=team, user=admin_user, role=Role.ADMIN)
    AuditEvent.record("team.create", team=team, actor=actor or admin_user, target=team)
    return team


def ensure_team(name: str, admin_user) -> tuple[Team, bool]:
    """The named team, created with ``admin_user`` as its admin if it is new."""
    team = Team.objects.filter(name=name).first()
    if team is not None:
        Membership.objects.get_or_create(team=team, user=admin_user, defaults={"role": Role.ADMIN})
        return team, False
    return create_team(name, admin_user), True
