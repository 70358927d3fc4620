"""Deploying from a registry outside Strata that the team registered: a real
Debian docker-registry with Basic (htpasswd) auth on loopback stands in for
ghcr.io and the like, and Strata's own registry for one with the Bearer
token flow.  The tag is resolved once, when the release is made, with the
team's login; the worker pulls that digest into the manager's engine with it
and ships it over SSH: the VM never gets the login."""

import uuid

import pytest

from bench.harness.guest_servers import build_on_top
from cloud.models import ExternalRegistry, Job, JobStep, Release
from tests.registry.conftest import free_loopback_port
from tests.registry.test_deploy_pushed_image import (
    HEALTHY_HTTP,
    SERVICE,
    client_of,
    deploy,
    finished,
    push,
    start_worker,
)
from workers.drivers.guest import list_containers
from workers.drivers.registry import LoginRefused, RegistryLogin, fetch_manifest_with_login

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def register(vm, host: str, username: str, password: str):
    url = "/api/v1/teams/alpha/registries/"
    body = {"host": host, "username": username, "password": password}
    return client_of(vm).post(url, body, format="json")


def push_outside(scene, outside, page: bytes) -> tuple[str, str]:
    """Build ``org/web:1`` on the guest's web image, push it to the outside
    registry with its login, and take it out of the host's engine again, so a
    deploy has to pull it back; returns (reference, digest)."""
    _, engine, base = scene
    repository = f"{outside.addr}/org/web"
    build_on_top(engine, base, f"{repository}:1", page)
    image_id = engine.images.get(f"{repository}:1").id
    login = {"username": outside.username, "password": outside.password}
    progress = list(
        engine.api.push(repository, tag="1", stream=True, decode=True, auth_config=login)
    )
    assert not [m for m in progress if "error" in m], progress
    digest = next(m["aux"]["Digest"] for m in progress if "Digest" in m.get("aux", {}))
    engine.images.remove(image_id, force=True)
    return f"{repository}:1", digest


def test_an_image_of_a_registered_registry_deploys_by_digest_and_serves_http(
    guest, outside_registry, worker_factory, settings
):
    vm, engine, _ = guest
    registered = register(
        vm, outside_registry.addr, outside_registry.username, outside_registry.password
    )
    assert registered.status_code == 201, registered.content
    assert outside_registry.password not in registered.content.decode()
    page = f"outside {uuid.uuid4().hex}\n".encode()
    reference, digest = push_outside(guest, outside_registry, page)
    start_worker(worker_factory, vm, settings)

    answer = deploy(vm, reference, healthcheck=HEALTHY_HTTP)
    assert answer.status_code == 202, answer.content
    release = Release.objects.get(service__name=SERVICE)
    assert release.image_digest == digest  # resolved once, with the team's login
    job = finished(answer.json()["id"])
    assert job.state == "succeeded", job.error

    resolve_log = JobStep.objects.get(job__parent=job, name="resolve image").log
    assert f"{reference} is {digest}" in resolve_log
    assert outside_registry.password not in resolve_log
    image_id = engine.api.inspect_image(f"{outside_registry.addr}/org/web@{digest}")["Id"]
    (running,) = list_containers(engine, service_id=str(release.service_id))
    container = engine.containers.get(running.id)
    assert container.image.id == image_id
    served = container.exec_run(["wget", "-qO-", "http://127.0.0.1:8080/"])
    assert served.exit_code == 0 and served.output == page
    # The engine keeps no login: a pull of its own is refused.
    with pytest.raises(Exception, match="no basic auth credentials|unauthorized"):
        engine.images.pull(f"{outside_registry.addr}/org/web", tag="1")


def test_a_digest_of_a_registered_registry_is_checked_and_pinned(guest, outside_registry):
    vm = guest[0]
    register(vm, outside_registry.addr, outside_registry.username, outside_registry.password)
    _, digest = push_outside(guest, outside_registry, b"by digest\n")
    answer = deploy(vm, f"{outside_registry.addr}/org/web@{digest}")
    assert answer.status_code == 202, answer.content
    assert Release.objects.get(service__name=SERVICE).image_digest == digest


@pytest.mark.parametrize(
    "image, password, message",
    [
        ("{addr}/org/web:1", "wrong-password", "refused the team's login (401)"),
        ("{addr}/org/web:1", "wrong-password", "authentication required"),
        ("{addr}/org/web:nosuch", None, "not in the registry at {addr}"),
        ("{addr}/org/nosuch:1", None, "not in the registry at {addr}"),
        ("{addr}/org/web@sha256:" + "0" * 64, None, "manifest unknown"),
        ("127.0.0.2:5999/org/web:1", None, "register 127.0.0.2:5999 as a team registry"),
    ],
)
def test_a_refused_login_an_unknown_tag_or_an_unregistered_host_is_400_and_makes_nothing(
    guest, outside_registry, image, password, message
):
    vm = guest[0]
    push_outside(guest, outside_registry, b"one\n")
    login = password or outside_registry.password
    assert register(vm, outside_registry.addr, outside_registry.username, login).status_code == 201
    releases, jobs = Release.objects.count(), Job.objects.count()
    answer = deploy(vm, image.format(addr=outside_registry.addr))
    assert answer.status_code == 400, answer.content
    assert message.format(addr=outside_registry.addr) in " ".join(answer.json()["image"])
    assert (Release.objects.count(), Job.objects.count()) == (releases, jobs)


def test_a_registered_registry_that_is_down_leaves_the_digest_to_the_job(guest):
    """As for Strata's registry: the release is made without a digest and the
    job's "resolve image" step resolves it, retried with backoff."""
    vm = guest[0]
    addr = f"127.0.0.1:{free_loopback_port()}"  # nothing listens
    assert register(vm, addr, "ci", "ci-password").status_code == 201
    answer = deploy(vm, f"{addr}/org/web:1")
    assert answer.status_code == 202, answer.content
    assert Release.objects.get(service__name=SERVICE).image_digest == ""


def test_the_bearer_token_flow_trades_the_login_for_a_pull_token(
    guest,
    registry,
    api_key,
):
    """Strata's own registry speaks the registry token protocol as ghcr.io
    does: challenged, the team's login buys a token at the realm."""
    key = api_key("alpha", "developer")
    _, digest = push(guest, registry, key, b"bearer\n")
    found, manifest = fetch_manifest_with_login(
        registry, "alpha/web", "1", RegistryLogin("token", key)
    )
    assert found == digest and "layers" in manifest
    with pytest.raises(LoginRefused, match=r"refused the team's login \(401\): .*token"):
        fetch_manifest_with_login(registry, "alpha/web", "1", RegistryLogin("token", "not-a-key"))


def test_a_registry_is_not_forgotten_while_a_release_pins_an_image_from_it(guest, outside_registry):
    vm = guest[0]
    registered = register(
        vm, outside_registry.addr, outside_registry.username, outside_registry.password
    )
    reference, _ = push_outside(guest, outside_registry, b"pinned\n")
    assert deploy(vm, reference).status_code == 202
    url = f"/api/v1/teams/alpha/registries/{registered.json()['id']}/"
    refused = client_of(vm).delete(url)
    assert refused.status_code == 409, refused.content
    assert f"{vm.environment.name}/{SERVICE} v1" in " ".join(refused.json()["host"])
    assert ExternalRegistry.objects.filter(host=outside_registry.addr).exists()
