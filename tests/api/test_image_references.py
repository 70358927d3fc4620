"""Finding 10: image references are a strict grammar and limited to what the
team may run; the worker resolves only the validated reference."""

import docker
import pytest

from bench.harness.guest_servers import build_web_images, remove_web_images
from cloud.models import Job, Release, Service
from cloud.services.deployments import validate_spec
from cloud.services.errors import ValidationError
from workers.jobs.engine import UserError
from workers.jobs.steps.deploy import engine_image_id

pytestmark = pytest.mark.django_db


@pytest.fixture
def dev(dev_env):
    client, url = dev_env
    return client, url + "deploy/"


def post(client, url, image):
    return client.post(url, {"service_name": "web", "image": image}, format="json")


@pytest.mark.parametrize(
    "image",
    [
        "sha256:" + "0a" * 32,
        "0a" * 32,
        "alpha/" + "0a" * 32,
        "a/../../containers/json",
        "registry.invalid/../../x",
        "alpha/./web:1",
        "alpha/../beta/web:1",
        "Alpha/web:1",
        "alpha/web:1@sha256:" + "0" * 63,
        "alpha/web: 1",
        "alpha//web",
        "alpha/web:" + "x" * 129,
    ],
)
def test_malformed_references_are_400_naming_image(dev, image):
    """Finding 10: path segments, bare ids and loose syntax never reach the engine."""
    client, url = dev
    response = post(client, url, image)
    assert response.status_code == 400, response.content
    assert "image" in response.json()
    assert not Service.objects.exists() and not Release.objects.exists()
    assert not Job.objects.exists()


@pytest.mark.parametrize("image", ["alpha/web:1\n", "\talpha/web:1", "alpha/web:1 "])
def test_surrounding_whitespace_is_refused_not_trimmed(make_team, image):
    """Finding 10: the grammar is a full match; a trailing newline is not a reference."""
    team, _ = make_team("alpha")
    with pytest.raises(ValidationError) as raised:
        validate_spec({"image": image}, team)
    assert "image" in raised.value.message_dict


@pytest.mark.parametrize("image", ["beta/web:1", "busybox:1.36", "ghcr.io/alpha/web:1"])
def test_references_outside_the_team_are_not_allowed(dev, image):
    """Finding 10: another team's images, and images the operator did not allow, are 400."""
    client, url = dev
    response = post(client, url, image)
    assert response.status_code == 400
    assert "not allowed for this team" in " ".join(response.json()["image"])
    assert not Service.objects.exists() and not Job.objects.exists()


def test_own_and_allow_listed_references_deploy_in_canonical_form(dev, settings):
    """Finding 10: <team>/... and the operator's patterns are admitted, stored with their tag."""
    client, url = dev
    settings.STRATA_IMAGE_ALLOWLIST = ["busybox:*"]
    assert post(client, url, "alpha/web").status_code == 202
    Job.objects.update(state="succeeded")  # the environment is free again
    assert post(client, url, "busybox:1.36").status_code == 202
    images = list(Release.objects.order_by("version").values_list("spec__image", flat=True))
    assert images == ["alpha/web:latest", "busybox:1.36"]


@pytest.fixture(scope="module")
def engine_images():
    engine = docker.from_env()
    tags = build_web_images(engine)
    yield engine, tags
    remove_web_images(engine, tags)


def test_resolution_finds_only_the_image_carrying_the_reference(engine_images):
    """Finding 10: an id prefix or an untagged alias never resolves to some other image."""
    engine, (v1, _) = engine_images
    image_id = engine.api.inspect_image(v1)["Id"]
    assert engine_image_id(v1) == image_id
    short_id = image_id.removeprefix("sha256:")[:12]
    for reference in (short_id, image_id, "strata-test/web:absent", "strata-test/web/../x"):
        with pytest.raises(UserError):
            engine_image_id(reference)
