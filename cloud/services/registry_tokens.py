"""Bearer tokens for the team image registry (the registry token-auth protocol).

A client (``docker login``/``push``/``pull``) sends a Strata API token as the
Basic-auth password and asks for scopes like ``repository:alpha/web:pull,push``.
Each scope is granted as the intersection of what was asked and what the
caller's role in the repository's team allows; a repository outside the
caller's teams, or of a team that does not exist, gets no actions, so the
registry answers alike for both and another team's images cannot be probed.
Asking for more than one may have is not an error (the protocol says so):
the token simply carries less.
"""

import secrets

from django.conf import settings
from django.utils import timezone

from cloud.keyfiles import read_or_create
from tenants.models import ApiToken, Membership, Role
from workers.drivers.guest.errors import InvalidSpec
from workers.drivers.guest.references import parse_reference
from workers.drivers.registry import RegistryConfig
from workers.jobs.registry import ISSUER, signed_token, signing_key

from .errors import ValidationError

# What each role may do in its team's namespace; delete removes manifests.
ROLE_ACTIONS = {
    Role.VIEWER: ("pull",),
    Role.DEVELOPER: ("pull", "push"),
    Role.ADMIN: ("pull", "push", "delete"),
}
# A push asks for its repository and each repository it may mount blobs from.
MAX_SCOPES = 16
MAX_SCOPE_LENGTH = 300
# Kept in STRATA_REGISTRY_AUTH_DIR beside the token signing key, made once on first use.
NOTIFY_SECRET_FILE = "notification-secret"  # noqa: S105 - a file name, not a secret


class InvalidCredentials(Exception):
    """No API token, or one that is unknown, revoked, or of an inactive user."""


def registry_config() -> RegistryConfig:
    """The registry's configuration from the settings, trusting this installation's key."""
    return RegistryConfig(
        addr=settings.STRATA_REGISTRY_ADDR,
        storage_dir=settings.STRATA_REGISTRY_DIR,
        realm=settings.STRATA_REGISTRY_REALM,
        service=settings.STRATA_REGISTRY_SERVICE,
        issuer=ISSUER,
        certificate_path=signing_key().certificate_path,
        notify_url=settings.STRATA_REGISTRY_NOTIFY_URL,
        notify_secret=notification_secret(),
    )


def notification_secret() -> str:
    """The shared secret the registry sends with its event notifications (0600)."""
    path = settings.STRATA_REGISTRY_AUTH_DIR / NOTIFY_SECRET_FILE
    secret = read_or_create(path, lambda: secrets.token_urlsafe(32) + "\n", dir_mode=0o700)
    if not secret.strip():
        raise ValueError(f"{path} is empty: remove it to make a new secret")
    return secret.strip()


def _parse_scope(scope: object) -> tuple[str, str, list[str]]:
    """(type, name, actions) of ``type:name:action[,action]``; names may hold colons."""
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LENGTH or scope.count(":") < 2:
        raise ValidationError({"scope": ["must be type:name:action[,action...]"]})
    kind, rest = scope.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    if not kind or not name or not actions:
        raise ValidationError({"scope": ["must be type:name:action[,action...]"]})
    return kind, name, list(dict.fromkeys(actions.split(",")))


def _granted(user, kind: str, name: str, asked: list[str]) -> list[str]:
    """What of ``asked`` the user may do on the resource: only repositories of its teams."""
    if kind != "repository":
        return []  # the catalog would list every team's repositories
    try:
        reference = parse_reference(name)
    except InvalidSpec:
        raise ValidationError({"scope": [f"{name!r} is not a repository name"]}) from None
    if reference.host or reference.path != name:
        raise ValidationError({"scope": [f"{name!r} is not a repository name"]})
    team_name, _, rest = name.partition("/")
    if not rest:
        return []  # a team's images live under <team>/...
    member = Membership.objects.filter(user=user, team__name=team_name).first()
    if member is None:
        return []
    allowed = ROLE_ACTIONS[member.role]
    return [action for action in asked if action in allowed]


def authenticate(api_key: str | None) -> ApiToken:
    token = ApiToken.authenticate(api_key) if api_key else None
    if token is None:
        raise InvalidCredentials("a valid Strata API token is needed as the password")
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token


def issue_registry_token(api_key: str | None, service: object, scopes: list) -> dict:
    """The token-endpoint answer for the caller of ``api_key`` asking ``scopes``.

    InvalidCredentials for a bad key; ValidationError naming ``service`` or
    ``scope`` for a malformed request."""
    token = authenticate(api_key)
    if service != settings.STRATA_REGISTRY_SERVICE:
        raise ValidationError(
            {"service": [f"this token service serves {settings.STRATA_REGISTRY_SERVICE!r}"]}
        )
    if len(scopes) > MAX_SCOPES:
        raise ValidationError({"scope": [f"at most {MAX_SCOPES} scopes per request"]})
    access = []
    for scope in scopes:
        kind, name, asked = _parse_scope(scope)
        access.append(
            {"type": kind, "name": name, "actions": _granted(token.user, kind, name, asked)}
        )
    return signed_token(token.user.get_username(), access)
