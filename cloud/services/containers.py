"""Reading a container's logs and stats: asked of the worker on its VM's host,
which reaches the VM's engine over the pinned SSH connection."""

from celery.exceptions import TimeoutError as CeleryTimeout

from cloud.models import Container

from .access import require_read
from .errors import NotFound, ValidationError

ANSWER_SECONDS = 20
MAX_TAIL = 5000


class Unavailable(Exception):
    """The VM's worker or engine did not answer in time."""


def get_container(user, team, container_id) -> Container:
    require_read(user, team)
    container = (
        Container.objects.for_team(team).select_related("vm__host").filter(pk=container_id).first()
    )
    if container is None:
        raise NotFound("no such container")
    return container


def _ask(task, container: Container, *args):
    from workers import tasks

    result = getattr(tasks, task).apply_async(
        args=[container.pk, *args], queue=container.vm.host.queue
    )
    try:
        return result.get(timeout=ANSWER_SECONDS)
    except CeleryTimeout as exc:
        raise Unavailable(f"the worker of host {container.vm.host} did not answer") from exc
    except Exception as exc:  # noqa: BLE001 - the remote error, shown to the caller
        raise Unavailable(f"could not read from {container.vm}: {exc}") from exc


def logs(*, user, team, container_id, tail=100, since=None) -> str:
    container = get_container(user, team, container_id)
    if isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail <= MAX_TAIL:
        raise ValidationError({"tail": [f"must be a whole number from 1 to {MAX_TAIL}"]})
    if since is not None and (not isinstance(since, int | float) or since < 0):
        raise ValidationError({"since": ["must be a UNIX time"]})
    return _ask("container_logs", container, tail, since)


def stats(*, user, team, container_id) -> dict:
    return _ask("container_stats", get_container(user, team, container_id))
