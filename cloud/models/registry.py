"""The team's images in Strata's registry, as the registry reported them.

Rows are written from the registry's push and delete notifications; the
registry holds the bytes.  An image is one manifest digest in one
repository; tags point at images and move when a tag is pushed again.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from cloud.models.crypto import EncryptedTextField
from cloud.models.releases import Release
from tenants.models import Team, TeamScopedQuerySet, scoped_queryset


class RegistryImage(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="registry_images")
    repository = models.CharField(max_length=255, help_text="<team>/<name>, as pushed")
    digest = models.CharField(max_length=71, help_text="sha256:<64 hex> of the manifest")
    media_type = models.CharField(max_length=100)
    size = models.BigIntegerField(help_text="bytes of the image's config and layers")
    pushed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    pushed_at = models.DateTimeField()

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["repository", "-pushed_at"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "digest"], name="registry_image_once"),
            models.CheckConstraint(
                condition=models.Q(digest__regex=r"^sha256:[0-9a-f]{64}$"),
                name="registry_image_digest_valid",
            ),
        ]

    def __str__(self):
        return f"{self.repository}@{self.digest}"

    def pinned_by(self):
        """The team's releases that pin this image: its repository in Strata's
        registry at its digest (rollback and promote may deploy any of them again)."""
        name = f"{settings.STRATA_REGISTRY_ADDR}/{self.repository}"
        return (
            Release.objects.filter(
                service__environment__team=self.team_id, image_digest=self.digest
            )
            .filter(Q(spec__image__startswith=f"{name}:") | Q(spec__image__startswith=f"{name}@"))
            .select_related("service__environment")
            .order_by("service__environment__name", "service__name", "version")
        )


class RegistryTag(models.Model):
    image = models.ForeignKey(RegistryImage, on_delete=models.CASCADE, related_name="tags")
    repository = models.CharField(max_length=255)
    tag = models.CharField(max_length=128)

    objects = scoped_queryset("image__team").as_manager()

    class Meta:
        ordering = ["tag"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "tag"], name="registry_tag_once"),
        ]

    def __str__(self):
        return f"{self.repository}:{self.tag}"


class ExternalRegistry(models.Model):
    """A registry outside Strata that a team deploys from, and the team's login
    there: Strata alone uses it, to resolve tags and to pull into the manager's
    engine; the password is encrypted at rest and never read back."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="external_registries")
    host = models.CharField(max_length=255, help_text="host[:port], as image references name it")
    username = models.CharField(max_length=255)
    password = EncryptedTextField(help_text="password or access token")
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["host"]
        constraints = [
            models.UniqueConstraint(fields=["team", "host"], name="external_registry_once"),
        ]

    def __str__(self):
        return f"{self.team.name}/{self.host}"
