"""Container logs and stats through the API: the web process asks the worker on
the VM's host queue, which reads the VM's engine over pinned SSH."""

import uuid

import pytest

from cloud.models import Container, Host
from tenants.models import ApiToken
from workers.remote import ServiceSpec, start_container

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def live_container(sshd_guest, worker_factory):
    vm, engine, image = sshd_guest
    queue = f"host.live-{uuid.uuid4().hex[:6]}"
    Host.objects.filter(pk=vm.host_id).update(name=queue.removeprefix("host."))
    worker_factory(queue)
    container = Container.objects.get(vm=vm)
    spec = ServiceSpec(
        name="web",
        image=image,
        service_id=str(container.service_id),
        environment_id=str(vm.environment_id),
        command=("sh", "-c", "echo hello from web; sleep 600"),
        publish_address="127.0.0.1",
    )
    Container.objects.filter(pk=container.pk).update(engine_id=start_container(engine, spec, "v1"))
    return container


def test_logs_and_stats(live_container, api_as):
    from tenants.models import Membership

    user = Membership.objects.get(team__name="alpha").user
    client = api_as(user)
    url = f"/api/v1/teams/alpha/containers/{live_container.pk}/"
    logs = client.get(url + "logs/", {"tail": 10})
    assert logs.status_code == 200, logs.content
    assert "hello from web" in logs.json()["logs"]
    stats = client.get(url + "stats/").json()
    assert stats["memory_bytes"] > 0 and stats["cpu_percent"] >= 0
    assert client.get(url + "logs/", {"tail": 0}).status_code == 400


def test_logs_of_another_team_are_404(live_container, make_team, api_as):
    _, stranger = make_team("beta")
    response = api_as(stranger).get(f"/api/v1/teams/alpha/containers/{live_container.pk}/logs/")
    assert response.status_code == 404
    assert ApiToken.objects.filter(user=stranger).exists()
