"""Garbage collection with the real registry: of alpha/web's images, the old
untagged one no release pins leaves the registry (and, with the registry
stopped, its layer's blob leaves the disk); one a release pins, one a tag
names and one younger than the retention all stay."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from bench.harness.guest_servers import wait_for
from cloud.models import Environment, RegistryImage, Release, Service
from tests.registry.conftest import running_registry
from tests.registry.test_delete_image import manifest_status
from workers import tasks
from workers.drivers.registry import fetch_manifest
from workers.jobs.registry import manager_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def push_over(cli, registry: str, local_image, tag: str) -> RegistryImage:
    """Push a new image under ``alpha/web:tag`` (the image it held loses the tag)."""
    reference = local_image(f"{registry}/alpha/web:{tag}")
    before = set(RegistryImage.objects.values_list("pk", flat=True))
    cli.run("push", reference)
    wait_for(
        lambda: RegistryImage.objects.exclude(pk__in=before).filter(tags__tag=tag).exists(),
        30,
        "the push event",
    )
    return RegistryImage.objects.exclude(pk__in=before).get()


def blob_path(settings, digest: str):
    hex_digest = digest.removeprefix("sha256:")
    root = settings.STRATA_REGISTRY_DIR / "docker/registry/v2/blobs/sha256"
    return root / hex_digest[:2] / hex_digest


def test_only_old_untagged_unpinned_images_go_and_their_blobs_with_the_registry_stopped(
    registry_settings, live_server, tmp_path, api_key, docker_cli, local_image
):
    settings = registry_settings
    settings.STRATA_REGISTRY_REALM = f"{live_server.url}/api/v1/registry/token"
    settings.STRATA_REGISTRY_NOTIFY_URL = f"{live_server.url}/api/v1/registry/events"
    settings.STRATA_REGISTRY_RETENTION_DAYS = 7
    with running_registry(tmp_path) as registry:
        cli = docker_cli()
        cli.login(registry, api_key("alpha", "developer"))
        pinned = push_over(cli, registry, local_image, "1")
        unused = push_over(cli, registry, local_image, "1")
        tagged = push_over(cli, registry, local_image, "1")
        young = push_over(cli, registry, local_image, "2")
        push_over(cli, registry, local_image, "2")  # young loses its tag, but is young
        old = timezone.now() - timedelta(days=8)
        RegistryImage.objects.exclude(pk=young.pk).update(pushed_at=old)
        env = Environment.objects.create(team=pinned.team, name="dev", kind="dev")
        service = Service.objects.create(environment=env, name="site", image="x")
        Release.objects.create(
            service=service,
            version=1,
            image_digest=pinned.digest,
            spec={"image": f"{registry}/alpha/web:1"},
        )
        _, manifest = fetch_manifest(
            registry, "alpha/web", unused.digest, manager_token("alpha/web")
        )
        (layer,) = manifest["layers"]

        call_command("registry_gc")

        assert manifest_status(registry, unused) == 404
        assert not RegistryImage.objects.filter(pk=unused.pk).exists()
        for kept in (pinned, tagged, young):
            assert manifest_status(registry, kept) == 200
            assert RegistryImage.objects.filter(pk=kept.pk).exists()
        assert blob_path(settings, layer["digest"]).exists()  # until garbage-collect
        # Beat's periodic pass finds nothing more to collect.
        assert settings.CELERY_BEAT_SCHEDULE["registry-gc"]["task"] == "strata.registry_gc"
        assert tasks.registry_gc() == 0
        with pytest.raises(CommandError, match="is running: stop it first"):
            call_command("registry_gc", "--blobs")

    call_command("registry_gc", "--blobs")  # the registry is stopped now
    assert not blob_path(settings, layer["digest"]).exists()
    assert blob_path(settings, pinned.digest).exists()


def test_a_registry_that_does_not_answer_stops_the_collection(registry_settings, make_team):
    team, _ = make_team("alpha")
    image = RegistryImage.objects.create(
        team=team,
        repository="alpha/web",
        digest="sha256:" + "a" * 64,
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=1,
        pushed_at=timezone.now() - timedelta(days=30),
    )
    with pytest.raises(CommandError, match="the registry did not answer"):
        call_command("registry_gc")
    assert RegistryImage.objects.filter(pk=image.pk).exists()
