"""A team's secrets: environment values for services, encrypted at rest.

Each secret belongs to a scope: an environment kind (dev, staging, prod) or one
environment of that kind.  Only who may act on a kind may write, replace or
delete its secrets, and a deploy uses only the secrets of its environment's
scope, resolved by name (the environment's own secret wins over its kind's),
so a release referencing ``db-password`` gets the prod value in prod.

Values go in and are never read back out through the API or the portal; only
the worker that starts a container decrypts them, and job logs, container logs
and health-probe output are masked with them.
"""

from collections.abc import Callable

from django.db import IntegrityError, transaction

from cloud.models import Environment, EnvironmentKind, Secret
from tenants.models import AuditEvent, slug_name
from workers.jobs.masking import mask

from .access import require_act, require_read
from .errors import NotFound, ValidationError

MAX_VALUE = 64 * 1024
# Shorter values would be masked wherever those letters appear, wrecking logs.
MIN_VALUE = 4
SCOPES = EnvironmentKind.values


def _where(team, scope, environment) -> tuple[str, Environment | None]:
    """The (kind, environment or None) a request names, or ValidationError naming the field."""
    if environment not in (None, ""):
        env = None
        if isinstance(environment, str):
            env = Environment.objects.for_team(team).filter(name=environment).first()
        if env is None:
            raise ValidationError({"environment": ["the team has no environment named so"]})
        if scope not in (None, "", env.kind):
            raise ValidationError({"scope": [f"{env.name} is a {env.kind} environment"]})
        return env.kind, env
    if scope not in SCOPES:
        raise ValidationError(
            {"scope": [f"must be one of {', '.join(SCOPES)} (or name an environment)"]}
        )
    return scope, None


def _check_value(name, value) -> None:
    errors = {}
    try:
        slug_name(name if isinstance(name, str) else "")
    except ValidationError as exc:
        errors["name"] = exc.messages
    if not isinstance(value, str) or not MIN_VALUE <= len(value) <= MAX_VALUE or "\0" in value:
        errors["value"] = [f"must be {MIN_VALUE} to {MAX_VALUE} characters of text"]
    if errors:
        raise ValidationError(errors)


def set_secret(*, user, team, name, value, scope=None, environment=None) -> Secret:
    """Create or replace the named secret of a scope (who may act on that kind)."""
    require_read(user, team)
    kind, env = _where(team, scope, environment)
    require_act(user, team, kind)
    _check_value(name, value)
    with transaction.atomic():
        try:
            secret, created = Secret.objects.update_or_create(
                team=team, scope=kind, environment=env, name=name, defaults={"value": value}
            )
        except IntegrityError as exc:  # two writers at once
            raise ValidationError({"name": ["is being written by another request"]}) from exc
        AuditEvent.record(
            "secret.set", team=team, actor=user, target=secret, created=created, scope=str(secret)
        )
    return secret


def delete_secret(*, user, team, name, scope=None, environment=None) -> None:
    require_read(user, team)
    kind, env = _where(team, scope, environment)
    require_act(user, team, kind)
    secret = Secret.objects.for_team(team).filter(scope=kind, environment=env, name=name).first()
    if secret is None:
        raise NotFound("no such secret")
    AuditEvent.record("secret.delete", team=team, actor=user, target=secret, scope=str(secret))
    secret.delete()


def require_resolvable(environment: Environment, secret_env: dict[str, str]) -> None:
    """ValidationError naming ``secret_env`` unless every name resolves in the scope."""
    missing = sorted(
        set(secret_env.values()) - set(Secret.objects.resolve(environment, secret_env.values()))
    )
    if missing:
        raise ValidationError(
            {
                "secret_env": [
                    f"no secret named {name!r} in the scope of {environment.name} "
                    f"({environment.kind}); set one with --scope {environment.kind}"
                    for name in missing
                ]
            }
        )


def masker(environment: Environment) -> Callable[[str], str]:
    """A function hiding every secret value usable in ``environment`` (read once)."""
    values = frozenset(Secret.objects.usable_in(environment).values_list("value", flat=True))
    return lambda text: mask(text, values)


def mask_for(environment: Environment, text: str) -> str:
    """``text`` with every secret value usable in ``environment`` hidden."""
    return masker(environment)(text)
