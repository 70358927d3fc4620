"""Deleting a team image, with the real registry: an image a release pins is
refused (409 naming the releases), an unused one leaves the registry and its
record goes; only admins delete, another team's image is a 404, and a
registry that does not answer changes nothing."""

import pytest
import requests
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from bench.harness.guest_servers import wait_for
from cloud.models import Environment, RegistryImage, Release, Service
from tenants.models import ApiToken, Team
from workers.jobs.registry import manager_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
SHA = "sha256:" + "d" * 64


def client_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def url_of(image, team="alpha") -> str:
    return f"/api/v1/teams/{team}/images/{image.pk}/"


def manifest_status(registry: str, image) -> int:
    answer = requests.get(
        f"http://{registry}/v2/{image.repository}/manifests/{image.digest}",
        headers={
            "Authorization": f"Bearer {manager_token(image.repository)}",
            "Accept": "application/vnd.docker.distribution.manifest.v2+json",
        },
        timeout=10,
    )
    return answer.status_code


@pytest.fixture
def pushed(registry, api_key, docker_cli, local_image):
    """alpha/web:1 pushed by an alpha developer, once Strata recorded it; returns its record."""
    developer = docker_cli()
    developer.login(registry, api_key("alpha", "developer"))
    developer.run("push", local_image(f"{registry}/alpha/web:1"))
    wait_for(RegistryImage.objects.filter(repository="alpha/web").exists, 30, "the push event")
    return RegistryImage.objects.get(repository="alpha/web")


def pin(image, registry: str) -> Release:
    """A release of alpha's dev environment that pins ``image``."""
    env = Environment.objects.create(team=image.team, name="dev", kind="dev")
    service = Service.objects.create(environment=env, name="site", image=f"{registry}/alpha/web:1")
    return Release.objects.create(
        service=service,
        version=3,
        image_digest=image.digest,
        spec={"image": f"{registry}/alpha/web:1"},
    )


def test_an_unused_image_leaves_the_registry_and_its_record_goes(pushed, registry, api_key):
    assert manifest_status(registry, pushed) == 200
    answer = client_with(api_key("alpha", "admin")).delete(url_of(pushed))
    assert answer.status_code == 204, answer.content
    assert manifest_status(registry, pushed) == 404
    assert not RegistryImage.objects.filter(pk=pushed.pk).exists()


def test_an_image_a_release_pins_is_refused_naming_the_release(pushed, registry, api_key):
    pin(pushed, registry)
    answer = client_with(api_key("alpha", "admin")).delete(url_of(pushed))
    assert answer.status_code == 409, answer.content
    assert "pinned by releases dev/site v3" in answer.json()["image"][0]
    assert manifest_status(registry, pushed) == 200
    assert RegistryImage.objects.filter(pk=pushed.pk).exists()


def test_the_image_list_names_the_releases_that_pin_each_image(pushed, registry, api_key):
    release = pin(pushed, registry)
    unpinned = RegistryImage.objects.create(
        team=pushed.team,
        repository="alpha/web",
        digest=SHA,
        media_type=pushed.media_type,
        size=1,
        pushed_at=timezone.now(),
    )
    # The same digest under another repository is another image, pinned by nothing.
    Release.objects.create(
        service=release.service,
        version=4,
        image_digest=SHA,
        spec={"image": f"{registry}/alpha/api:1"},
    )
    client = client_with(api_key("alpha", "viewer"))
    listed = client.get("/api/v1/teams/alpha/images/").json()["results"]
    pinning = {image["digest"]: image["releases"] for image in listed}
    expected = [{"id": release.pk, "environment": "dev", "service": "site", "version": 3}]
    assert pinning == {pushed.digest: expected, unpinned.digest: []}
    assert client.get(url_of(pushed)).json()["releases"] == expected


def test_only_admins_delete_and_another_teams_image_is_404(pushed, registry, api_key):
    for role in ("viewer", "developer"):
        answer = client_with(api_key("alpha", role)).delete(url_of(pushed))
        assert answer.status_code == 403, (role, answer.content)
    outsider = client_with(api_key("beta", "admin"))
    assert outsider.delete(url_of(pushed)).status_code == 404
    assert outsider.get(url_of(pushed)).status_code == 404
    # beta's own URL with alpha's image id: no such image of beta's
    assert outsider.delete(url_of(pushed, team="beta")).status_code == 404
    assert manifest_status(registry, pushed) == 200
    assert RegistryImage.objects.filter(pk=pushed.pk).exists()


def test_a_registry_that_does_not_answer_changes_nothing(registry_settings, make_team):
    """No registry listens on the configured address: 503, the record stays."""
    team, admin = make_team("alpha", "admin")
    image = RegistryImage.objects.create(
        team=Team.objects.get(name="alpha"),
        repository="alpha/web",
        digest=SHA,
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=1,
        pushed_at=timezone.now(),
    )
    answer = client_with(ApiToken.issue(admin, "t")[1]).delete(url_of(image))
    assert answer.status_code == 503, answer.content
    assert "does not answer" in answer.json()["detail"]
    assert RegistryImage.objects.filter(pk=image.pk).exists()


def portal_client(key: str) -> Client:
    client = Client()
    client.force_login(ApiToken.authenticate(key).user)
    return client


def test_the_portal_lists_images_with_what_pins_them_and_deletes_alike(
    pushed, registry, api_key, make_team
):
    admin = portal_client(api_key("alpha", "admin"))
    release = pin(pushed, registry)
    page = admin.get("/t/alpha/images/").content.decode()
    assert "alpha/web" in page and pushed.digest[:19] in page and ">1<" in page
    assert f"dev/site v{release.version}" in page
    assert "/delete/" not in page  # no delete button for a pinned image
    refused = admin.post(f"/t/alpha/images/{pushed.pk}/delete/", follow=True)
    assert "pinned by releases dev/site v3" in refused.content.decode()
    assert manifest_status(registry, pushed) == 200
    release.delete()
    assert f"/t/alpha/images/{pushed.pk}/delete/" in admin.get("/t/alpha/images/").content.decode()
    done = admin.post(f"/t/alpha/images/{pushed.pk}/delete/", follow=True)
    assert "Image deleted" in done.content.decode()
    assert manifest_status(registry, pushed) == 404
    assert not RegistryImage.objects.filter(pk=pushed.pk).exists()
    # Another team's members see none of it.
    _, stranger = make_team("beta")
    other = Client()
    other.force_login(stranger)
    assert "alpha/web" not in other.get("/t/beta/images/").content.decode()
