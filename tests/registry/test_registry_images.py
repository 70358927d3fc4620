"""The team's images, recorded from the real registry's notifications after a
real ``docker push``, listed by the API to the team only; the notification
endpoint refuses strangers and malformed envelopes without writing."""

import json
import subprocess
import time

import pytest
import requests

from cloud.models import RegistryImage, RegistryTag
from cloud.services.registry_tokens import notification_secret
from tests.registry.test_registry_docker import registry_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
EVENTS = "/api/v1/registry/events"
EVENTS_TYPE = "application/vnd.docker.distribution.events.v1+json"
WAIT_SECONDS = 20


def wait_for_image(repository: str, tag: str) -> RegistryImage:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = RegistryTag.objects.filter(repository=repository, tag=tag).first()
        if found is not None:
            return found.image
        time.sleep(0.2)
    raise AssertionError(f"no notification recorded {repository}:{tag}")


def repo_digest(reference: str) -> str:
    done = subprocess.run(
        ["docker", "inspect", "--format", "{{index .RepoDigests 0}}", reference],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return done.stdout.strip().rsplit("@", 1)[1]


def test_a_push_is_recorded_with_digest_size_and_pusher(
    registry, api_key, docker_cli, local_image, live_server, django_user_model
):
    developer = docker_cli()
    key = api_key("alpha", "developer")
    developer.login(registry, key)
    reference = local_image(f"{registry}/alpha/web:1")
    developer.run("push", reference)
    image = wait_for_image("alpha/web", "1")
    assert image.digest == repo_digest(reference)
    assert image.team.name == "alpha"
    assert image.size > 4096  # the layer holds 4 KiB of random bytes, compressed poorly
    assert image.pushed_by.username.startswith("alpha-developer")

    # The same digest under a second tag is one image with two tags.
    developer.run("tag", reference, f"{registry}/alpha/web:stable")
    developer.run("push", f"{registry}/alpha/web:stable")
    assert wait_for_image("alpha/web", "stable") == image

    listed = requests.get(
        f"{live_server.url}/api/v1/teams/alpha/images/",
        headers={"Authorization": f"Bearer {api_key('alpha', 'viewer')}"}, timeout=10,
    ).json()["results"]
    assert [(row["repository"], row["digest"], row["tags"]) for row in listed] == [
        ("alpha/web", image.digest, ["1", "stable"])
    ]
    assert listed[0]["size"] == image.size
    stranger = requests.get(
        f"{live_server.url}/api/v1/teams/alpha/images/",
        headers={"Authorization": f"Bearer {api_key('beta', 'admin')}"}, timeout=10,
    )
    assert stranger.status_code == 404


def test_a_refused_push_records_nothing(registry, api_key, docker_cli, local_image):
    viewer = docker_cli()
    viewer.login(registry, api_key("alpha", "viewer"))
    assert viewer.run("push", local_image(f"{registry}/alpha/web:1"), check=False).returncode
    assert not RegistryImage.objects.exists()


def _post(live_server, body, secret):
    return requests.post(
        f"{live_server.url}{EVENTS}", data=body, timeout=10,
        headers={"Content-Type": EVENTS_TYPE, "Authorization": f"Bearer {secret}"},
    )


def push_event(repository="alpha/web", digest="sha256:" + "a" * 64, **target):
    return {
        "action": "push",
        "timestamp": "2026-12-03T17:00:00Z",
        "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                   "repository": repository, "digest": digest, "tag": "1", **target},
        "actor": {"name": "someone"},
    }


@pytest.mark.parametrize("secret", ["", "wrong", "strata_not-the-secret"])
def test_the_events_endpoint_refuses_all_but_the_registry(registry, live_server, secret):
    answer = _post(live_server, json.dumps({"events": [push_event()]}), secret)
    assert answer.status_code == 401
    assert not RegistryImage.objects.exists()


@pytest.mark.parametrize(
    "envelope",
    [
        {"events": "push"},
        {"events": [push_event(), "not an event"]},
        {"events": [push_event(), push_event(repository="alpha/../web")]},
        {"events": [push_event(digest="sha256:short")]},
        {"events": [push_event(repository="registry.example/alpha/web")]},
        {"events": [push_event(tag="bad tag")]},
        {"events": [push_event()] * 1001},
    ],
)
def test_a_malformed_envelope_is_a_400_and_writes_nothing(registry, live_server, envelope):
    answer = _post(live_server, json.dumps(envelope), notification_secret())
    assert answer.status_code == 400, answer.content
    assert "events" in answer.json()
    assert not RegistryImage.objects.exists()


def test_a_push_the_registry_cannot_show_is_a_503_so_it_retries(registry, live_server, api_key):
    api_key("alpha", "admin")  # the namespace exists; the manifest does not
    answer = _post(live_server, json.dumps({"events": [push_event()]}), notification_secret())
    assert answer.status_code == 503
    assert not RegistryImage.objects.exists()


def _delete_manifest(registry, live_server, key, repository, digest):
    token = registry_token(live_server, key, f"repository:{repository}:delete")
    return requests.delete(
        f"http://{registry}/v2/{repository}/manifests/{digest}",
        headers={"Authorization": f"Bearer {token}"}, timeout=10,
    )


def test_only_an_admin_deletes_and_the_record_goes_with_it(
    registry, api_key, docker_cli, local_image, live_server
):
    developer = docker_cli()
    developer_key = api_key("alpha", "developer")
    developer.login(registry, developer_key)
    reference = local_image(f"{registry}/alpha/web:1")
    developer.run("push", reference)
    image = wait_for_image("alpha/web", "1")
    refused = _delete_manifest(registry, live_server, developer_key, "alpha/web", image.digest)
    assert refused.status_code == 401
    outsider = _delete_manifest(
        registry, live_server, api_key("beta", "admin"), "alpha/web", image.digest
    )
    assert outsider.status_code == 401
    deleted = _delete_manifest(
        registry, live_server, api_key("alpha", "admin"), "alpha/web", image.digest
    )
    assert deleted.status_code == 202, deleted.text
    deadline = time.monotonic() + WAIT_SECONDS
    while RegistryImage.objects.filter(pk=image.pk).exists():
        assert time.monotonic() < deadline, "the delete was never recorded"
        time.sleep(0.2)
    assert not RegistryTag.objects.exists()
