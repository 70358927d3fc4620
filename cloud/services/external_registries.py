"""The external registries a team deploys from (GitHub's, GitLab's, Harbor…),
with the login Strata uses there.

Team admins register one by its ``host[:port]`` (as image references name it)
with a user name and a password or access token; registering the host again
replaces the login.  The password is encrypted at rest and never read back:
only the deploy service and the worker use it, to resolve a tag to a digest
and to pull that digest into the manager's engine; VMs never see it.  A
registry is not removed while a release pins an image from it, since the
manager's engine may have to pull that image again.
"""

from django.conf import settings
from django.db import IntegrityError, transaction

from cloud.models import ExternalRegistry, Release
from tenants.models import AuditEvent, Role
from workers.drivers.guest.references import is_registry_host

from .access import require_read, require_role
from .errors import Conflict, NotFound, ValidationError

MAX_LOGIN = 255
MAX_PASSWORD = 64 * 1024


def _login_text(value, field: str, limit: int) -> list[str]:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        return [f"must be 1 to {limit} characters of text"]
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return ["must hold no control characters"]
    if field == "username" and ":" in value:
        return ["must hold no ':' (Basic auth splits the login there)"]
    return []


def _check(host, username, password) -> str:
    """The host as stored (lowercase), or ValidationError naming each bad field."""
    errors = {}
    if not is_registry_host(host):
        errors["host"] = [
            "must be a registry host[:port] as image references name it, like ghcr.io "
            "or registry.example.com:5000"
        ]
    elif host.lower() == settings.STRATA_REGISTRY_ADDR.lower():
        errors["host"] = ["is Strata's own registry, which needs no registering"]
    for field, value, limit in (
        ("username", username, MAX_LOGIN),
        ("password", password, MAX_PASSWORD),
    ):
        problems = _login_text(value, field, limit)
        if problems:
            errors[field] = problems
    if errors:
        raise ValidationError(errors)
    return host.lower()


def team_registries(user, team):
    require_read(user, team)
    return ExternalRegistry.objects.for_team(team).select_related("added_by")


def register_registry(*, user, team, host, username, password) -> ExternalRegistry:
    """Register ``host`` for the team, or replace its login (team admins)."""
    require_role(user, team, Role.ADMIN)
    host = _check(host, username, password)
    with transaction.atomic():
        try:
            registry, created = ExternalRegistry.objects.update_or_create(
                team=team,
                host=host,
                defaults={"username": username, "password": password, "added_by": user},
            )
        except IntegrityError as exc:  # two writers at once
            raise ValidationError({"host": ["is being registered by another request"]}) from exc
        AuditEvent.record(
            "registry.register", team=team, actor=user, target=registry, created=created, host=host
        )
    return registry


def releases_from(registry: ExternalRegistry) -> list[Release]:
    """The team's releases whose image comes from ``registry``."""
    return list(
        Release.objects.filter(
            service__environment__team=registry.team_id, spec__image__startswith=f"{registry.host}/"
        )
        .select_related("service__environment")
        .order_by("service__environment__name", "service__name", "version")
    )


def remove_registry(*, user, team, registry_id) -> None:
    """Forget one of the team's registries and its login (team admins);
    Conflict naming the releases that pin an image from it."""
    require_role(user, team, Role.ADMIN)
    with transaction.atomic():
        registry = (
            ExternalRegistry.objects.for_team(team)
            .select_for_update()
            .filter(pk=registry_id)
            .first()
        )
        if registry is None:
            raise NotFound("no such registry")
        pinned = releases_from(registry)
        if pinned:
            names = ", ".join(
                f"{r.service.environment.name}/{r.service.name} v{r.version}" for r in pinned
            )
            raise Conflict("host", f"{registry.host} has images pinned by releases {names}")
        AuditEvent.record(
            "registry.remove", team=team, actor=user, target=registry, host=registry.host
        )
        registry.delete()
