"""Who may do what: viewers read, developers act on dev and staging, only team
admins act on prod.  Every service checks here before it changes anything."""

from tenants.models import Membership, Role

from .errors import Forbidden, NotFound

# The least role needed to act on an environment of each kind.
ACT_ROLE = {"dev": Role.DEVELOPER, "staging": Role.DEVELOPER, "prod": Role.ADMIN}


def membership(user, team) -> Membership:
    """The user's membership, or NotFound: a team you are not in does not exist for you."""
    found = Membership.objects.filter(user=user, team=team).first() if user else None
    if found is None:
        raise NotFound("no such team")
    return found


def require_read(user, team) -> Membership:
    return membership(user, team)


def team_row(user, team, rows, pk, what: str):
    """Row ``pk`` of the team's ``rows`` (a team-scoped queryset), for a member;
    NotFound otherwise: another team's rows do not exist for you."""
    require_read(user, team)
    found = rows.for_team(team).filter(pk=pk).first()
    if found is None:
        raise NotFound(f"no such {what}")
    return found


def require_act(user, team, kind: str) -> Membership:
    member = membership(user, team)
    needed = ACT_ROLE[kind]
    if not member.has_role(needed):
        raise Forbidden(
            f"acting on a {kind} environment needs the {needed} role; you are {member.role}"
        )
    return member


def require_role(user, team, role: str) -> Membership:
    member = membership(user, team)
    if not member.has_role(role):
        raise Forbidden(f"this needs the {role} role; you are {member.role}")
    return member
