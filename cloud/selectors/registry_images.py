"""The team's registry images with their tags and who pushed them (read side)."""

from cloud.models import RegistryImage


def team_images(team):
    return RegistryImage.objects.for_team(team).select_related("pushed_by").prefetch_related("tags")
