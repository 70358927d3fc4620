"""Container logs and stats through the API: the web process asks the worker on
the VM's host queue, which reads the VM's engine over pinned SSH."""

import time
import uuid

import pytest

from cloud.models import Container, Host, Secret
from tenants.models import ApiToken, Membership
from workers import tasks
from workers.drivers.guest import ServiceSpec, start_container

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# What the container prints: two of its environment's secrets (one short, from
# before short values were refused) and a prod secret it never had.
PRINTED = "hello from web; api=dev-api-key-77 pin=zq9 prod=prod-only-value"


@pytest.fixture
def container_without_worker(sshd_guest):
    """A running container whose host's queue (unique to the test) has no worker yet."""
    vm, engine, image = sshd_guest
    queue = f"host.live-{uuid.uuid4().hex[:6]}"
    Host.objects.filter(pk=vm.host_id).update(name=queue.removeprefix("host."))
    team = vm.environment.team
    Secret.objects.create(team=team, scope="dev", name="api-key", value="dev-api-key-77")
    Secret.objects.create(team=team, scope="dev", name="pin", value="zq9")
    Secret.objects.create(team=team, scope="prod", name="api-key", value="prod-only-value")
    container = Container.objects.get(vm=vm)
    spec = ServiceSpec(
        name="web",
        image=image,
        service_id=str(container.service_id),
        environment_id=str(vm.environment_id),
        command=("sh", "-c", f"echo '{PRINTED}'; sleep 600"),
    )
    Container.objects.filter(pk=container.pk).update(engine_id=start_container(engine, spec, "v1"))
    return container, queue


def start_worker(worker_factory, queue):
    """A worker on ``queue``, once it answers (its start-up is not part of a read)."""
    worker_factory(queue)
    tasks.ping.apply_async(args=["up"], queue=queue).get(timeout=90)


@pytest.fixture
def live_container(container_without_worker, worker_factory):
    container, queue = container_without_worker
    start_worker(worker_factory, queue)
    return container


def url_of(container):
    return f"/api/v1/teams/alpha/containers/{container.pk}/"


def test_logs_and_stats(live_container, api_as):
    user = Membership.objects.get(team__name="alpha").user
    client = api_as(user)
    url = url_of(live_container)
    logs = client.get(url + "logs/", {"tail": 10})
    assert logs.status_code == 200, logs.content
    assert "hello from web" in logs.json()["logs"]
    stats = client.get(url + "stats/").json()
    assert stats["memory_bytes"] > 0 and stats["cpu_percent"] >= 0
    assert client.get(url + "logs/", {"tail": 0}).status_code == 400


def test_logs_leave_masked_with_the_environment_secrets(live_container, api_as, django_user_model):
    """Finding 9.3: container logs are masked with the secret values of the
    container's environment (short ones too) before they leave the API, also
    for viewers."""
    team = live_container.vm.environment.team
    viewer = django_user_model.objects.create_user("alpha-viewer")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    logs = api_as(viewer).get(url_of(live_container) + "logs/", {"tail": 10})
    assert logs.status_code == 200, logs.content
    text = logs.json()["logs"]
    assert "hello from web; api=******** pin=******** prod=prod-only-value" in text
    assert "dev-api-key-77" not in text and "zq9" not in text


def test_without_a_worker_reads_answer_503_quickly_then_the_real_logs(
    container_without_worker, worker_factory, api_as, settings
):
    """Finding 9.15: with no worker on the host's queue, logs and stats answer 503
    with Retry-After within the configured bound instead of holding a web worker
    for 20 s; once a worker serves the queue, the same request answers the logs."""
    container, queue = container_without_worker
    client = api_as(Membership.objects.get(team__name="alpha").user)
    settings.STRATA_LIVE_READ_SECONDS = 1
    for path, params in (("logs/", {"tail": 10}), ("stats/", {})):
        started = time.monotonic()
        response = client.get(url_of(container) + path, params)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.content
        assert response["Retry-After"] == "1"
        assert "did not answer within 1 s" in response.json()["detail"]
        assert elapsed < 2.5, elapsed

    settings.STRATA_LIVE_READ_SECONDS = 5
    start_worker(worker_factory, queue)
    logs = client.get(url_of(container) + "logs/", {"tail": 10})
    assert logs.status_code == 200, logs.content
    assert "hello from web" in logs.json()["logs"]


def test_logs_of_another_team_are_404(live_container, make_team, api_as):
    _, stranger = make_team("beta")
    response = api_as(stranger).get(f"/api/v1/teams/alpha/containers/{live_container.pk}/logs/")
    assert response.status_code == 404
    assert ApiToken.objects.filter(user=stranger).exists()
