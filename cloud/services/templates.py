"""Templates on the operator's side: asking a host's worker to build one."""

from django.db import transaction

from cloud.models import Flavor, Host, Image
from workers.jobs.queue import send

BUILD_TEMPLATE = "strata.build_template"


def request_build(host: Host, image: Image, flavor: Flavor) -> None:
    """Have ``host``'s worker build a template of ``image`` and ``flavor`` once
    the surrounding transaction commits; its row shows the build's progress."""
    args = [host.pk, image.pk, flavor.pk]
    transaction.on_commit(lambda: send(BUILD_TEMPLATE, args, queue=host.queue))
