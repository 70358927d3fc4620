"""A team's secrets: environment values for services, encrypted at rest.

Values go in and are never read back out through the API or the portal; only
the worker that starts a container decrypts them, and job logs mask them.
"""

from django.db import IntegrityError, transaction

from cloud.models import Secret
from tenants.models import AuditEvent, Role, slug_name

from .access import require_role
from .errors import NotFound, ValidationError

MAX_VALUE = 64 * 1024


def set_secret(*, user, team, name, value) -> Secret:
    """Create or replace the named secret (developers and admins)."""
    require_role(user, team, Role.DEVELOPER)
    errors = {}
    try:
        slug_name(name if isinstance(name, str) else "")
    except ValidationError as exc:
        errors["name"] = exc.messages
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE or "\0" in value:
        errors["value"] = [f"must be 1 to {MAX_VALUE} characters of text"]
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        try:
            secret, created = Secret.objects.update_or_create(
                team=team, name=name, defaults={"value": value}
            )
        except IntegrityError as exc:  # two writers at once
            raise ValidationError({"name": ["is being written by another request"]}) from exc
        AuditEvent.record("secret.set", team=team, actor=user, target=secret, created=created)
    return secret


def delete_secret(*, user, team, name) -> None:
    require_role(user, team, Role.DEVELOPER)
    secret = Secret.objects.for_team(team).filter(name=name).first()
    if secret is None:
        raise NotFound("no such secret")
    AuditEvent.record("secret.delete", team=team, actor=user, target=secret)
    secret.delete()
