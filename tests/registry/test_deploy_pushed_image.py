"""Deploying an image pushed to Strata's registry, with the real registry, the
host's dockerd and a real worker; the "VM" is the sshd_guest fixture (a real
sshd in front of the host's dockerd).  The tag is resolved to a digest once,
when the release is made; the worker pulls that digest into the manager's
engine with a token Strata issues itself and ships it over SSH."""

import uuid

import pytest
from rest_framework.test import APIClient

from bench.harness.guest_servers import KeyPair, Sshd, build_on_top, new_ed25519_key, wait_for
from cloud.models import (
    Deployment,
    Environment,
    Job,
    JobStep,
    Release,
    VirtualMachine,
)
from tenants.models import ApiToken, Membership
from tests.jobs.test_atomic_deploy import NamespacedDockerd
from workers import tasks
from workers.drivers.guest import list_containers
from workers.drivers.registry import RegistryDown, delete_manifest
from workers.jobs.keys import manager_keypair
from workers.jobs.registry import RegistrySource, manager_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
SERVICE = "site"
HEALTHY_HTTP = {"type": "http", "path": "/", "port": 8080, "interval": 0.5}


def push(guest, registry: str, key: str, page: bytes) -> tuple[str, str]:
    """Build ``alpha/web:1`` (the guest's web image plus a page of its own), push it
    with the docker SDK, and take it out of the host's engine again, so a deploy
    has to pull it back; returns (reference, digest)."""
    _, engine, base = guest
    repository = f"{registry}/alpha/web"
    build_on_top(engine, base, f"{repository}:1", page)
    image_id = engine.images.get(f"{repository}:1").id
    progress = list(
        engine.api.push(
            repository,
            tag="1",
            stream=True,
            decode=True,
            auth_config={"username": "token", "password": key},
        )
    )
    assert not [m for m in progress if "error" in m], progress
    digest = next(m["aux"]["Digest"] for m in progress if "Digest" in m.get("aux", {}))
    engine.images.remove(image_id, force=True)
    return f"{repository}:1", digest


def start_worker(worker_factory, vm, settings, **env):
    """A worker on the VM's host queue that reaches this test's registry with its key."""
    worker_factory(
        vm.host.queue,
        STRATA_REGISTRY_ADDR=settings.STRATA_REGISTRY_ADDR,
        STRATA_REGISTRY_AUTH_DIR=str(settings.STRATA_REGISTRY_AUTH_DIR),
        **env,
    )
    tasks.ping.apply_async(args=["up"], queue=vm.host.queue).get(timeout=90)


def client_of(vm) -> APIClient:
    admin = Membership.objects.get(team=vm.environment.team, role="admin").user
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(admin, 'deploy')[1]}")
    return client


def deploy(vm, image: str, **spec):
    url = f"/api/v1/teams/alpha/environments/{vm.environment_id}/deploy/"
    body = {"service_name": SERVICE, "image": image, **spec}
    return client_of(vm).post(url, body, format="json")


def finished(job_id, timeout=180) -> Job:
    job = Job.objects.get(pk=job_id)

    def done():
        job.refresh_from_db()
        return job.state in ("succeeded", "failed", "cancelled")

    wait_for(done, timeout, "the deploy job to finish", interval=0.5)
    return job


def test_a_pushed_image_deploys_by_digest_and_serves_http(
    guest, registry, api_key, worker_factory, settings
):
    vm, engine, _ = guest
    page = f"pushed {uuid.uuid4().hex}\n".encode()
    reference, digest = push(guest, registry, api_key("alpha", "developer"), page)
    start_worker(worker_factory, vm, settings)

    answer = deploy(vm, reference, healthcheck=HEALTHY_HTTP)
    assert answer.status_code == 202, answer.content
    release = Release.objects.get(service__name=SERVICE)
    assert release.image_digest == digest  # resolved once, when the release was made
    job = finished(answer.json()["id"])
    assert job.state == "succeeded", job.error

    resolve_log = JobStep.objects.get(job__parent=job, name="resolve image").log
    assert f"{reference} is {digest}" in resolve_log
    image_id = engine.api.inspect_image(f"{registry}/alpha/web@{digest}")["Id"]
    running = list_containers(engine, service_id=str(release.service_id))
    assert [c.state for c in running] == ["running"]
    container = engine.containers.get(running[0].id)
    assert container.image.id == image_id  # the VM runs the pinned image, by ID
    served = container.exec_run(["wget", "-qO-", "http://127.0.0.1:8080/"])
    assert served.exit_code == 0 and served.output == page


@pytest.fixture
def isolated_vm(guest, tmp_path):
    """The guest VM, now reached over SSH in front of a dockerd of its own in a
    network namespace holding only loopback: it has no route to the registry."""
    vm = guest[0]
    engine = NamespacedDockerd()
    sshd = None
    try:
        manager = manager_keypair()
        host_key = new_ed25519_key()
        sshd = Sshd(
            tmp_path / "sshd-isolated",
            host_key,
            KeyPair(manager.private_openssh, manager.public_openssh),
            docker_host=f"unix://{engine.socket}",
        )
        VirtualMachine.objects.filter(pk=vm.pk).update(
            ssh_port=sshd.port, host_key_public=host_key.public_line
        )
        vm.refresh_from_db()
        yield vm, engine.client
    finally:
        if sshd is not None:
            sshd.stop()
        engine.stop()


def test_a_vm_without_a_route_to_the_registry_gets_the_layers_over_ssh(
    guest, isolated_vm, registry, api_key, worker_factory, settings
):
    vm, vm_engine = isolated_vm
    page = f"isolated {uuid.uuid4().hex}\n".encode()
    reference, digest = push(guest, registry, api_key("alpha", "developer"), page)
    start_worker(worker_factory, vm, settings)
    answer = deploy(vm, reference, healthcheck=HEALTHY_HTTP)
    assert answer.status_code == 202, answer.content
    job = finished(answer.json()["id"])
    assert job.state == "succeeded", job.error

    roll_out_log = JobStep.objects.get(job__parent=job, name="roll out").log
    assert "ship image: sent " in roll_out_log
    image_id = guest[1].api.inspect_image(f"{registry}/alpha/web@{digest}")["Id"]
    (serving,) = list_containers(
        vm_engine, service_id=str(Release.objects.get(service__name=SERVICE).service_id)
    )
    container = vm_engine.containers.get(serving.id)
    assert container.image.id == image_id
    served = container.exec_run(["wget", "-qO-", "http://127.0.0.1:8080/"])
    assert served.exit_code == 0 and served.output == page


def test_a_moved_tag_leaves_the_release_on_its_digest(guest, registry, api_key, settings):
    """The release pins what the tag named when it was made; promote and
    rollback carry that digest, not the tag."""
    vm = guest[0]
    key = api_key("alpha", "developer")
    reference, first = push(guest, registry, key, b"one\n")
    assert deploy(vm, reference).status_code == 202
    _, second = push(guest, registry, key, b"two\n")
    assert second != first
    assert Release.objects.get(service__name=SERVICE).image_digest == first
    assert deploy(vm, reference, queue_if_busy=True).status_code == 202
    pinned = Release.objects.filter(service__name=SERVICE).order_by("version")
    assert list(pinned.values_list("image_digest", flat=True)) == [first, second]


def test_promote_carries_the_digest_not_the_tag(guest, registry, api_key):
    vm = guest[0]
    staging = Environment.objects.create(team=vm.environment.team, name="stage", kind="staging")
    VirtualMachine.objects.create(
        environment=staging,
        name="s1",
        host=vm.host,
        flavor=vm.flavor,
        image=vm.image,
        state="running",
    )
    key = api_key("alpha", "developer")
    reference, first = push(guest, registry, key, b"one\n")
    assert deploy(vm, reference).status_code == 202
    # As if the dev rollout succeeded: promote takes the release dev serves.
    Deployment.objects.filter(release__service__name=SERVICE).update(state="succeeded")
    _, second = push(guest, registry, key, b"two\n")
    url = f"/api/v1/teams/alpha/environments/{vm.environment_id}/promote/"
    body = {"service_name": SERVICE, "target_env": "stage"}
    assert client_of(vm).post(url, body, format="json").status_code == 202
    promoted = Release.objects.get(service__environment=staging)
    assert (promoted.image_digest, promoted.spec["image"]) == (first, reference)


@pytest.mark.parametrize(
    "image, message",
    [
        ("{registry}/beta/web:1", "is not allowed for this team"),
        ("{registry}/alpha/nosuch:1", "not in the team's registry"),
        ("{registry}/alpha/web:nosuch", "not in the team's registry"),
        ("{registry}/alpha/web@sha256:" + "0" * 64, "not in the team's registry"),
    ],
)
def test_another_teams_namespace_or_an_unknown_tag_is_400_and_makes_nothing(
    guest, registry, api_key, image, message
):
    vm = guest[0]
    api_key("beta", "admin")  # beta exists: its namespace is still not alpha's
    push(guest, registry, api_key("alpha", "developer"), b"one\n")
    releases, jobs = Release.objects.count(), Job.objects.count()
    answer = deploy(vm, image.format(registry=registry))
    assert answer.status_code == 400, answer.content
    assert message in " ".join(answer.json()["image"])
    assert (Release.objects.count(), Job.objects.count()) == (releases, jobs)


def test_a_registry_that_is_down_fails_the_job_at_resolve_image(
    guest, registry_settings, worker_factory
):
    """No registry listens: the release is made without a digest, the job's
    "resolve image" step retries with backoff, then fails saying why, and no
    container was started."""
    vm, engine, _ = guest
    start_worker(
        worker_factory,
        vm,
        registry_settings,
        STRATA_JOB_MAX_ATTEMPTS="2",
        STRATA_JOB_BACKOFF_SECONDS="0.2",
    )
    reference = f"{registry_settings.STRATA_REGISTRY_ADDR}/alpha/web:1"
    answer = deploy(vm, reference)
    assert answer.status_code == 202, answer.content
    assert Release.objects.get(service__name=SERVICE).image_digest == ""
    job = finished(answer.json()["id"])
    assert job.state == "failed"
    child = Job.objects.get(parent=job)
    assert child.attempts == 2
    failed = child.steps.get(state="failed")
    assert failed.name == "resolve image"
    assert f"the registry at {registry_settings.STRATA_REGISTRY_ADDR} does not answer" in (
        child.error
    )
    service_id = str(Release.objects.get(service__name=SERVICE).service_id)
    assert list_containers(engine, service_id=service_id) == []


def test_an_image_gone_from_the_registry_after_its_release_fails_at_resolve_image(
    guest, registry, api_key, worker_factory, settings
):
    """The release pinned a digest the registry no longer holds (deleted behind
    Strata's back) and the manager's engine lacks: the job fails saying so."""
    vm = guest[0]
    reference, digest = push(guest, registry, api_key("alpha", "developer"), b"gone\n")
    answer = deploy(vm, reference)
    assert answer.status_code == 202, answer.content
    delete_manifest(registry, "alpha/web", digest, manager_token("alpha/web", ("delete",)))
    start_worker(worker_factory, vm, settings)
    job = finished(answer.json()["id"])
    assert job.state == "failed"
    child = Job.objects.get(parent=job)
    assert child.steps.get(state="failed").name == "resolve image"
    assert f"{reference} is gone from the team's registry" in child.error
    assert "manifest unknown" in child.error


def test_a_registry_that_trusts_another_key_is_down_for_strata(registry, settings, tmp_path):
    """Strata's own token refused (the registry was configured by another
    installation): RegistryDown, saying so, which a deploy job retries."""
    settings.STRATA_REGISTRY_AUTH_DIR = tmp_path / "another-installation"
    with pytest.raises(RegistryDown, match="refused Strata's token"):
        RegistrySource(registry, "alpha/web", None).resolve_digest("1")
