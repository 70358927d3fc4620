"""Teams, who belongs to them with which role, what they may use, and what they did."""

import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

slug_name = RegexValidator(
    r"\A[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?\Z",
    "Use 1-40 lowercase letters, digits and inner hyphens.",
)


class TeamScopedQuerySet(models.QuerySet):
    """A queryset that knows the path from its model to the owning team.

    Views get team-owned rows only through ``for_team``, so a query cannot
    forget the scope.
    """

    team_path = "team"

    def for_team(self, team):
        return self.filter(**{self.team_path: team})


def scoped_queryset(path: str) -> type[TeamScopedQuerySet]:
    return type(f"ScopedBy_{path.replace('__', '_')}", (TeamScopedQuerySet,), {"team_path": path})


class Team(models.Model):
    name = models.CharField(max_length=40, unique=True, validators=[slug_name])
    display_name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.display_name or self.name


class Role(models.TextChoices):
    VIEWER = "viewer"
    DEVELOPER = "developer"
    ADMIN = "admin"


ROLE_RANK = {Role.VIEWER: 0, Role.DEVELOPER: 1, Role.ADMIN: 2}


class MembershipQuerySet(TeamScopedQuerySet):
    def teams_of(self, user):
        return Team.objects.filter(membership__user=user)


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="membership_once_per_team"),
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="membership_role_valid"
            ),
        ]

    def __str__(self):
        return f"{self.user} in {self.team} as {self.role}"

    def has_role(self, needed: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[needed]


class Quota(models.Model):
    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="quota")
    vcpus = models.PositiveIntegerField(default=16)
    memory_mb = models.PositiveIntegerField(default=32768)
    disk_gb = models.PositiveIntegerField(default=500)
    vms = models.PositiveIntegerField(default=10)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(vcpus__gte=0, memory_mb__gte=0, disk_gb__gte=0, vms__gte=0),
                name="quota_non_negative",
            )
        ]

    def __str__(self):
        return f"quota of {self.team}"


class AuditEvent(models.Model):
    """An append-only record of a change: who, in which team, did what, to what."""

    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["team", "-created_at"])]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target_repr}"

    @classmethod
    def record(cls, action, *, team=None, actor=None, target=None, **details):
        return cls.objects.create(
            team=team,
            actor=actor if getattr(actor, "is_authenticated", False) else None,
            action=action,
            target_type=target._meta.label_lower if target is not None else "",
            target_id=str(target.pk) if target is not None else "",
            target_repr=str(target)[:200] if target is not None else "",
            details=details,
        )


def token_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A user's API token.  Only its digest is stored; the key is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=60)
    prefix = models.CharField(max_length=16, help_text="the start of the key, to tell tokens apart")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name: str) -> tuple["ApiToken", str]:
        key = "strata_" + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=key[:14], digest=token_digest(key))
        return token, key

    @classmethod
    def authenticate(cls, key: str):
        return (
            cls.objects.select_related("user")
            .filter(digest=token_digest(key), revoked_at=None, user__is_active=True)
            .first()
        )
