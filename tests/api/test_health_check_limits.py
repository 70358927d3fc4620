"""Finding 5: a deploy asking for unbounded health-check timings is a 400
naming the healthcheck, and nothing is made."""

import pytest

from cloud.models import Job, Service

pytestmark = pytest.mark.django_db


@pytest.fixture
def deploy_url(dev_env):
    client, url = dev_env
    return client, url + "deploy/"


@pytest.mark.parametrize(
    "timing, value",
    [("retries", 101), ("retries", 300), ("retries", 2.5), ("interval", 31), ("timeout", 60)],
)
def test_unbounded_health_timings_are_400(deploy_url, timing, value):
    """Finding 5: retries at most 100 (whole), interval and timeout at most 30 s."""
    client, url = deploy_url
    health = {"type": "tcp", "port": 8080, timing: value}
    body = {"service_name": "web", "image": "alpha/web:1", "healthcheck": health}
    response = client.post(url, body, format="json")
    assert response.status_code == 400
    assert any(timing in message for message in response.json()["healthcheck"])
    assert not Service.objects.exists() and not Job.objects.exists()


def test_the_bounds_themselves_are_accepted(deploy_url):
    """Finding 5: the maxima are allowed (the rollout's total budget bounds the rest)."""
    client, url = deploy_url
    health = {"type": "tcp", "port": 8080, "retries": 100, "interval": 30, "timeout": 30}
    body = {"service_name": "web", "image": "alpha/web:1", "healthcheck": health}
    assert client.post(url, body, format="json").status_code == 202
