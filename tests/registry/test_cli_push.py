"""``strata push`` as a subprocess against the live server and the real
registry, pushing from the host's dockerd: only the layers the registry
lacks are sent, a progress line per layer, errors name what is wrong."""

import io
import os
import subprocess
import sys
import tarfile
import time
import uuid

import docker
import pytest
import requests

from bench.harness.guest_servers import build_on_top, wait_for
from cloud.models import RegistryImage, Release
from tenants.models import Team
from tests.services.conftest import catalogue, dev_environment  # noqa: F401 - fixture
from workers.jobs.registry import manager_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture
def strata_push(live_server, registry):
    """``strata_push(key, *args)`` runs ``strata push`` with that API token;
    ``strata_push.run(key, *args)`` any other strata command."""

    def strata(key: str, *args: str):
        env = {**os.environ, "STRATA_URL": live_server.url, "STRATA_TOKEN": key}
        env.pop("STRATA_TEAM", None)
        return subprocess.run(
            [sys.executable, "-m", "cloud.interfaces.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def push(key: str, *args: str):
        return strata(key, "push", *args)

    push.run = strata
    return push


@pytest.fixture
def two_versions(local_image):
    """``name:1`` (one layer of its own) and ``name:2`` (the same plus one small layer)."""
    engine = docker.from_env()
    name = f"strata-push-{uuid.uuid4().hex[:8]}"
    local_image(f"{name}:1")
    build_on_top(engine, f"{name}:1", f"{name}:2", b"two\n")
    yield name
    engine.images.remove(f"{name}:2", force=True)


def test_a_second_push_sends_only_the_changed_layer(strata_push, registry, api_key, two_versions):
    key = api_key("alpha", "developer")
    first = strata_push(key, f"{two_versions}:1", "--name", "web")
    assert first.returncode == 0, first.stderr
    assert f"as {registry}/alpha/web:1" in first.stdout
    assert "1 layer(s) sent, 0 already in the registry" in first.stdout
    assert "] Pushed" in first.stdout  # the layer's bar, at its end

    second = strata_push(key, f"{two_versions}:2", "--name", "web")
    assert second.returncode == 0, second.stderr
    assert "1 layer(s) sent, 1 already in the registry" in second.stdout
    assert "Layer already exists" in second.stdout
    assert f"deploy it: strata deploy ENV SERVICE {registry}/alpha/web:2" in second.stdout
    pushed_digest = second.stdout.split(f"pushed {registry}/alpha/web:2 ", 1)[1].split()[0]
    held = docker.from_env().api.inspect_image(f"{two_versions}:2")["RepoDigests"]
    assert f"{registry}/alpha/web@{pushed_digest}" in held


def test_what_strata_push_prints_is_what_strata_deploy_takes(
    strata_push,
    registry,
    api_key,
    local_image,
    catalogue,  # noqa: F811 - the fixture
):
    name = f"strata-push-{uuid.uuid4().hex[:8]}"
    local_image(f"{name}:1")
    key = api_key("alpha", "developer")
    pushed = strata_push(key, f"{name}:1", "--name", "web")
    reference, digest = pushed.stdout.split("\npushed ", 1)[1].split()[:2]
    dev_environment(Team.objects.get(name="alpha"), catalogue, "vm1")
    deployed = strata_push.run(key, "deploy", "dev", "site", reference)
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.startswith("job ")
    release = Release.objects.get(service__name="site")
    assert (release.spec["image"], release.image_digest) == (reference, digest)


def test_the_name_defaults_to_the_images_last_part(strata_push, registry, api_key, local_image):
    name = f"strata-push-{uuid.uuid4().hex[:8]}"
    local_image(f"{name}:3")
    done = strata_push(api_key("alpha", "developer"), f"{name}:3")
    assert done.returncode == 0, done.stderr
    assert f"pushed {registry}/alpha/{name}:3 sha256:" in done.stdout
    retagged = strata_push(api_key("alpha", "developer"), f"{name}:3", "--name", "site:v3")
    assert f"pushed {registry}/alpha/site:v3 sha256:" in retagged.stdout


def test_bad_input_and_refusals_exit_2_saying_why(strata_push, api_key, local_image):
    name = f"strata-push-{uuid.uuid4().hex[:8]}"
    local_image(f"{name}:1")
    developer = api_key("alpha", "developer")
    missing = strata_push(developer, f"{name}:nosuch")
    assert missing.returncode == 2 and "image: no image" in missing.stderr
    malformed = strata_push(developer, "Not/Valid")
    assert malformed.returncode == 2 and "image: must be" in malformed.stderr
    bad_name = strata_push(developer, f"{name}:1", "--name", "../x")
    assert bad_name.returncode == 2 and "image: must be" in bad_name.stderr
    viewer = strata_push(api_key("alpha", "viewer"), f"{name}:1")
    assert viewer.returncode == 2
    assert "denied" in viewer.stderr or "unauthorized" in viewer.stderr
    stranger = strata_push("strata_not-a-token", f"{name}:1")
    assert stranger.returncode == 2 and "401" in stranger.stderr


def test_a_push_cut_off_halfway_leaves_no_tag_and_a_retry_completes(
    strata_push, live_server, registry, api_key
):
    """The registry takes the manifest only after every layer, so a push killed
    while a layer is uploading leaves no tag and no image record."""
    name = f"strata-push-big-{uuid.uuid4().hex[:8]}"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        payload = os.urandom(96 * 1024 * 1024)  # incompressible: the upload takes a while
        info = tarfile.TarInfo("payload")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    subprocess.run(
        ["docker", "import", "-", f"{name}:1"], input=layer.getvalue(), check=True, timeout=120
    )
    key = api_key("alpha", "developer")
    env = {**os.environ, "STRATA_URL": live_server.url, "STRATA_TOKEN": key}
    env.pop("STRATA_TEAM", None)
    try:
        pushing = subprocess.Popen(
            [sys.executable, "-m", "cloud.interfaces.cli", "push", f"{name}:1", "--name", "big"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        uploading = next((line for line in pushing.stdout if "Pushing" in line), None)
        assert uploading, "the push never began uploading a layer"
        pushing.kill()
        pushing.wait(10)
        time.sleep(2)  # what the engine still had in flight
        tags = requests.get(
            f"http://{registry}/v2/alpha/big/tags/list",
            headers={"Authorization": f"Bearer {manager_token('alpha/big')}"},
            timeout=10,
        )
        assert tags.status_code == 404 or not tags.json().get("tags"), tags.text
        assert not RegistryImage.objects.filter(repository="alpha/big").exists()

        again = strata_push(key, f"{name}:1", "--name", "big")
        assert again.returncode == 0, again.stderr
        wait_for(RegistryImage.objects.filter(repository="alpha/big").exists, 30, "the push event")
        assert RegistryImage.objects.get(repository="alpha/big").tags.get().tag == "1"
    finally:
        subprocess.run(["docker", "rmi", "--force", f"{name}:1"], capture_output=True, timeout=60)
