"""The team's registry images with their tags, who pushed them and which
releases pin them (read side)."""

from collections import defaultdict

from django.conf import settings

from cloud.models import RegistryImage, Release
from workers.drivers.guest.references import parse_reference


def team_images(team):
    return RegistryImage.objects.for_team(team).select_related("pushed_by").prefetch_related("tags")


def releases_by_image(team) -> dict[tuple[str, str], list[Release]]:
    """(repository, digest) -> the team's releases pinning that image of its
    namespace in Strata's registry, in one query for a whole list."""
    prefix = f"{settings.STRATA_REGISTRY_ADDR}/{team.name}/"
    releases = (
        Release.objects.filter(service__environment__team=team, spec__image__startswith=prefix)
        .exclude(image_digest="")
        .select_related("service__environment")
        .order_by("service__environment__name", "service__name", "version")
    )
    found = defaultdict(list)
    for release in releases:
        found[(parse_reference(release.spec["image"]).path, release.image_digest)].append(release)
    return found
