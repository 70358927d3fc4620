"""Reading a container's logs and stats: asked of the worker on its VM's host,
which reaches the VM's engine over the pinned SSH connection.

A web request waits at most ``STRATA_LIVE_READ_SECONDS`` for that worker, so
a host whose worker is down or busy costs a web worker seconds, not minutes;
the question expires with the wait, so a worker that comes back later does not
work through reads nobody is waiting for.  Logs leave masked with the
secrets of the container's environment.
"""

import math

from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings

from cloud.models import Container
from workers.jobs import queue

from .access import team_row
from .errors import ValidationError
from .secrets import mask_for

MAX_TAIL = 5000


class Unavailable(Exception):
    """The VM's worker or engine did not answer in time."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def get_container(user, team, container_id) -> Container:
    rows = Container.objects.select_related("vm__host", "vm__environment")
    return team_row(user, team, rows, container_id, "container")


def _ask(task, container: Container, *args):
    wait = settings.STRATA_LIVE_READ_SECONDS
    retry_after = max(1, math.ceil(wait))
    result = queue.send(task, [container.pk, *args], queue=container.vm.host.queue, expires=wait)
    try:
        return result.get(timeout=wait)
    except CeleryTimeout as exc:
        result.forget()
        raise Unavailable(
            f"the worker of host {container.vm.host} did not answer within {wait:g} s",
            retry_after,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the remote error, shown to the caller
        message = mask_for(container.vm.environment, f"could not read from {container.vm}: {exc}")
        raise Unavailable(message, retry_after) from exc


def logs(*, user, team, container_id, tail=100, since=None) -> str:
    container = get_container(user, team, container_id)
    if isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail <= MAX_TAIL:
        raise ValidationError({"tail": [f"must be a whole number from 1 to {MAX_TAIL}"]})
    if since is not None and (not isinstance(since, int | float) or since < 0):
        raise ValidationError({"since": ["must be a UNIX time"]})
    return mask_for(container.vm.environment, _ask("strata.container_logs", container, tail, since))


def stats(*, user, team, container_id) -> dict:
    return _ask("strata.container_stats", get_container(user, team, container_id))
