"""The team's registry images, recorded from the registry's notifications, and
deleted by the team's admins when no release pins them.

The registry posts an envelope of events after each push and delete of a
manifest.  Every event is checked first and the whole envelope is applied in
one transaction, so a malformed one changes nothing and a replay (the
registry retries until it gets a 2xx) is harmless: rows are keyed by
repository and digest, tags by repository and tag.  The image's size is
read from its manifest in the registry, never taken from the event.
"""

import re
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from cloud.models import RegistryImage, RegistryTag
from tenants.models import AuditEvent, Role, Team
from workers.drivers.guest.errors import InvalidSpec
from workers.drivers.guest.references import parse_reference
from workers.drivers.registry import MANIFEST_TYPES, delete_manifest, image_size
from workers.jobs.registry import manager_token

from .access import require_role
from .errors import Conflict, NotFound, ValidationError

MAX_EVENTS = 1000
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_TAG = re.compile(r"\w[\w.-]{0,127}", re.ASCII)


@dataclass(frozen=True)
class RegistryEvent:
    action: str  # push or delete
    repository: str
    digest: str
    tag: str
    media_type: str
    actor: str
    at: datetime


def _text(value: object, field: str, pattern: re.Pattern | None = None, optional=False) -> str:
    if optional and value in (None, ""):
        return ""
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise ValidationError({"events": [f"{field} is missing or malformed"]})
    return value


def _parse(event: object) -> RegistryEvent | None:
    """The event if it is a manifest push or a delete; None for what is not recorded."""
    if not isinstance(event, dict) or not isinstance(event.get("target"), dict):
        raise ValidationError({"events": ["each event must be an object with a target"]})
    action, target = event.get("action"), event["target"]
    if action not in ("push", "delete"):
        return None  # pulls and mounts change no image
    repository = _text(target.get("repository"), "target.repository")
    try:
        reference = parse_reference(repository)
    except InvalidSpec:
        reference = None
    if reference is None or reference.host or reference.path != repository:
        raise ValidationError({"events": ["target.repository is not a repository name"]})
    media_type = _text(target.get("mediaType"), "target.mediaType", optional=True)
    if action == "push" and media_type not in MANIFEST_TYPES:
        return None  # a layer, not an image
    actor = event.get("actor") if isinstance(event.get("actor"), dict) else {}
    at = parse_datetime(_text(event.get("timestamp"), "timestamp", optional=True) or "")
    return RegistryEvent(
        action=action,
        repository=repository,
        digest=_text(target.get("digest"), "target.digest", _DIGEST, optional=action == "delete"),
        tag=_text(target.get("tag"), "target.tag", _TAG, optional=True),
        media_type=media_type,
        actor=_text(actor.get("name"), "actor.name", optional=True)[:150],
        at=at or timezone.now(),
    )


def record_events(envelope: object) -> int:
    """Apply an envelope of registry events; returns how many were recorded.

    ValidationError naming ``events`` for a malformed envelope (nothing
    applied); RegistryDown, ImageNotInRegistry or ManifestInvalid when a pushed manifest cannot
    be read back, so the registry sends the envelope again later."""
    events = envelope.get("events") if isinstance(envelope, dict) else None
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise ValidationError({"events": [f"must be a list of at most {MAX_EVENTS} events"]})
    parsed = [found for found in map(_parse, events) if found is not None]
    teams = {
        team.name: team
        for team in Team.objects.filter(
            name__in={event.repository.split("/", 1)[0] for event in parsed}
        )
    }
    recorded = 0
    with transaction.atomic():
        for event in parsed:
            team = teams.get(event.repository.split("/", 1)[0])
            if team is None:
                continue  # tokens grant no push outside a team: nothing of ours
            if event.action == "push":
                _record_push(team, event)
            else:
                _record_delete(team, event)
            recorded += 1
    return recorded


def _record_push(team: Team, event: RegistryEvent) -> None:
    image = RegistryImage.objects.filter(repository=event.repository, digest=event.digest).first()
    if image is None:
        size = image_size(
            settings.STRATA_REGISTRY_ADDR,
            event.repository,
            event.digest,
            manager_token(event.repository),
        )
        pusher = get_user_model().objects.filter(username=event.actor).first()
        image, _ = RegistryImage.objects.get_or_create(
            repository=event.repository,
            digest=event.digest,
            defaults={
                "team": team,
                "media_type": event.media_type,
                "size": size,
                "pushed_by": pusher,
                "pushed_at": event.at,
            },
        )
    if event.tag:
        RegistryTag.objects.update_or_create(
            repository=event.repository, tag=event.tag, defaults={"image": image}
        )


def _record_delete(team: Team, event: RegistryEvent) -> None:
    if event.digest:
        RegistryImage.objects.for_team(team).filter(
            repository=event.repository, digest=event.digest
        ).delete()
    elif event.tag:
        RegistryTag.objects.for_team(team).filter(
            repository=event.repository, tag=event.tag
        ).delete()


def delete_image(*, user, team, image_id) -> None:
    """Delete one of the team's images from the registry (its manifest, and so
    its tags; blobs go with the registry's garbage collection) and its record.

    Admins only, as the registry grants delete; Conflict naming the releases
    that pin it; RegistryDown when the registry does not answer (nothing
    changed).  The row stays locked until the end, and a deploy locks the
    repository's rows while it pins a digest, so no release comes to pin an
    image while it is deleted."""
    require_role(user, team, Role.ADMIN)
    with transaction.atomic():
        image = RegistryImage.objects.for_team(team).select_for_update().filter(pk=image_id).first()
        if image is None:
            raise NotFound("no such image")
        pinned = list(image.pinned_by())
        if pinned:
            names = ", ".join(
                f"{r.service.environment.name}/{r.service.name} v{r.version}" for r in pinned
            )
            raise Conflict("image", f"{image} is pinned by releases {names}: not deleted")
        remove_image(image, "image.delete", actor=user)


def remove_image(image: RegistryImage, action: str, actor=None) -> None:
    """Delete ``image``'s manifest in the registry (RegistryDown: nothing changed),
    then its record, audited as ``action``; the caller holds the row's lock."""
    delete_manifest(
        settings.STRATA_REGISTRY_ADDR,
        image.repository,
        image.digest,
        manager_token(image.repository, ("delete",)),
    )
    AuditEvent.record(
        action,
        team=image.team,
        actor=actor,
        target=image,
        repository=image.repository,
        digest=image.digest,
    )
    image.delete()
