"""Garbage collection of the team images in Strata's registry.

An image (one manifest digest) goes once no tag names it, no release pins
it and it was pushed more than ``STRATA_REGISTRY_RETENTION_DAYS`` ago: its
manifest is deleted from the registry and its record with it.  That frees
no bytes yet: the registry's own ``garbage-collect`` removes the blobs no
manifest references, and it must run while the registry is stopped (or
read-only), since a push during its mark phase could lose blobs
(``manage.py registry_gc --blobs``).
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cloud.models import RegistryImage

from .registry_images import remove_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Collected:
    repository: str
    digest: str


def collectable_images():
    """Images no tag names, pushed before the retention period (pins are checked per image)."""
    cutoff = timezone.now() - timedelta(days=settings.STRATA_REGISTRY_RETENTION_DAYS)
    return RegistryImage.objects.filter(tags__isnull=True, pushed_at__lt=cutoff).order_by("pk")


def collect_unused_images() -> list[Collected]:
    """Delete every collectable image no release pins, from the registry and
    from the records; RegistryDown (nothing more is deleted) when it does not
    answer.  Each image's row is locked while it goes, as a deploy locks the
    repository's rows while it pins a digest, so no release comes to pin an
    image while it is collected; a tag pushed meanwhile keeps it."""
    collected = []
    for pk in collectable_images().values_list("pk", flat=True):
        with transaction.atomic():
            image = collectable_images().select_for_update(of=("self",)).filter(pk=pk).first()
            if image is None or image.pinned_by().exists():
                continue
            remove_image(image, "image.collect")
        log.info("registry gc: deleted %s@%s", image.repository, image.digest)
        collected.append(Collected(image.repository, image.digest))
    return collected
