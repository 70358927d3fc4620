"""Templates: per host, image, flavor and guest configuration, a booted,
Docker-ready guest saved with its memory state, from which new VMs are
restored in seconds instead of cold-booted."""

import uuid

from django.db import models

from cloud.models.catalogue import Flavor, Host, Image, sha256_hex
from cloud.models.crypto import EncryptedTextField


class TemplateState(models.TextChoices):
    BUILDING = "building"
    READY = "ready"
    # A restore from it failed (state file missing or corrupt): never used again.
    STALE = "stale"
    FAILED = "failed"


class Template(models.Model):
    State = TemplateState

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="templates")
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="templates")
    flavor = models.ForeignKey(Flavor, on_delete=models.PROTECT, related_name="templates")
    # The image's content it was built from: a rebuilt image makes it outdated.
    image_sha256 = models.CharField(max_length=64, validators=[sha256_hex])
    # What the saved guest was set up with (seed, domain shape, re-identity
    # script); a template of an older version is not used.
    guest_config_version = models.PositiveIntegerField()
    state = models.CharField(
        max_length=10, choices=TemplateState.choices, default=TemplateState.BUILDING
    )
    # The template's own host key: accepted only for the re-identity connection.
    host_key_public = models.TextField()
    host_key_private = EncryptedTextField()
    disk_bytes = models.PositiveBigIntegerField(default=0)
    memory_state_bytes = models.PositiveBigIntegerField(default=0)
    # How far a build got, as a job's progress: percent and the last step's words.
    progress = models.PositiveSmallIntegerField(default=0)
    progress_note = models.CharField(max_length=200, blank=True)
    # Why it is stale or failed.
    unusable_reason = models.TextField(blank=True)
    built_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["host", "image", "flavor", "-created_at"]

    def __str__(self):
        return f"{self.image} on {self.host} ({self.flavor}, v{self.guest_config_version})"

    @property
    def name(self) -> str:
        """The name of its volumes and state file on the host."""
        return f"tmpl-{self.uuid}"
