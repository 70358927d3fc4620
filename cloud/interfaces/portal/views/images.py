"""The team's images in Strata's registry: tags, digests, sizes, who pushed
them and which releases pin them; an admin deletes one no release pins."""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from cloud.selectors.registry_images import releases_by_image, team_images
from cloud.services.registry_images import delete_image
from workers.drivers.registry import ManifestInvalid, RegistryDown

from .base import report_errors, team_page


@require_safe
@team_page
def image_list(request, team):
    pinned = releases_by_image(team)
    images = [
        (image, pinned.get((image.repository, image.digest), []))
        for image in team_images(team).order_by("repository", "-pushed_at")
    ]
    context = {"images": images, "registry": settings.STRATA_REGISTRY_ADDR}
    return render(request, "portal/images.html", context)


@require_POST
@team_page
def image_delete(request, team, image_id):
    try:
        delete_image(user=request.user, team=team, image_id=image_id)
    except ValidationError as error:  # pinned by a release: the releases are named
        report_errors(request, error)
    except (RegistryDown, ManifestInvalid) as error:
        messages.error(request, f"The registry did not delete it: {error}")
    else:
        messages.success(request, "Image deleted; its layers go at the next garbage collection.")
    return redirect("portal:images", team.name)
