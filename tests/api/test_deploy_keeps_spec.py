"""Finding 6: a deploy that does not mention a field keeps the service's
current value, through the portal's form, the API and the CLI."""

import os
import subprocess
import sys

import pytest
from django.urls import reverse

from cloud.models import Job, Release, Service
from cloud.services import deployments
from tenants.models import ApiToken
from tests.services.conftest import dev_environment

FULL = {
    "image": "alpha/web:1",
    "command": ["httpd", "-f", "-p", "8080"],
    "env": {"MODE": "prod"},
    "secret_env": {},
    "volumes": ["data:/var/lib/web"],
    "ports": [8080],
    "cpu_limit": 0.5,
    "memory_limit_mb": 128,
    "restart_policy": "always",
    "healthcheck": {"type": "tcp", "port": 8080, "retries": 5},
}


@pytest.fixture
def deployed(make_team, catalogue):
    """Service web in alpha's dev environment, deployed once with every field set."""
    team, user = make_team("alpha")
    env = dev_environment(team, catalogue, "dev-1", "dev-2", "dev-3")
    deployments.deploy(
        user=user, team=team, env_id=env.pk, service_name="web", replicas=3, **FULL
    )
    Job.objects.update(state="succeeded")  # the environment is free again
    return team, user, env


def latest(env) -> tuple[dict, Service]:
    service = Service.objects.get(environment=env, name="web")
    return Release.objects.filter(service=service).latest("version").spec, service


@pytest.mark.django_db
def test_the_portal_form_changes_only_what_it_names(deployed, client):
    """Finding 6: the form's image and empty fields leave env, volumes, command,
    limits, ports, health check and replicas as they are."""
    team, user, env = deployed
    client.force_login(user)
    url = reverse("portal:deploy", args=["alpha", env.pk])
    body = {"service_name": "web", "image": "alpha/web:2", "replicas": "", "ports": ""}
    response = client.post(url, {**body, "healthcheck": ""})
    assert response.status_code == 302, response.content
    spec, service = latest(env)
    assert spec == {**FULL, "image": "alpha/web:2"}
    assert service.replicas == 3 and service.env == FULL["env"] and service.cpu_limit == 0.5

    Job.objects.update(state="succeeded")
    response = client.post(url, {**body, "ports": "none", "healthcheck": "none", "replicas": 1})
    assert response.status_code == 302
    spec, service = latest(env)
    assert spec["ports"] == [] and spec["healthcheck"] == {} and service.replicas == 1
    assert spec["env"] == FULL["env"] and spec["volumes"] == FULL["volumes"]


@pytest.mark.django_db
def test_the_api_changes_only_what_the_body_names(deployed, api_as):
    """Finding 6: a body without env, secrets, volumes, command or limits keeps them."""
    team, user, env = deployed
    client = api_as(user)
    url = f"/api/v1/teams/alpha/environments/{env.pk}/deploy/"
    body = {"service_name": "web", "image": "alpha/web:3", "env": {"MODE": "debug"}}
    response = client.post(url, body, format="json")
    assert response.status_code == 202, response.content
    spec, service = latest(env)
    assert spec == {**FULL, "image": "alpha/web:3", "env": {"MODE": "debug"}}
    assert service.replicas == 3

    Job.objects.update(state="succeeded")
    bad = client.post(url, {"service_name": "web", "image": "alpha/web:4", "ports": [0]})
    assert bad.status_code == 400 and "ports" in bad.json()
    assert latest(env)[0]["image"] == "alpha/web:3"  # nothing half-made


@pytest.mark.django_db
def test_a_new_service_starts_from_the_defaults(deployed, api_as):
    """Finding 6: with no current value to keep, a field left out gets its default."""
    team, user, env = deployed
    url = f"/api/v1/teams/alpha/environments/{env.pk}/deploy/"
    body = {"service_name": "api", "image": "alpha/api:1"}
    assert api_as(user).post(url, body, format="json").status_code == 202
    service = Service.objects.get(environment=env, name="api")
    kept = (service.env, service.ports, service.replicas, service.memory_limit_mb)
    assert kept == ({}, [], 1, 256)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_cli_sends_only_the_options_given(deployed, live_server):
    """Finding 6: `strata deploy ENV SERVICE IMAGE` keeps everything else."""
    team, user, env = deployed
    _, key = ApiToken.issue(user, "cli")
    cli_env = {**os.environ, "STRATA_URL": live_server.url, "STRATA_TOKEN": key}
    cli_env.pop("STRATA_TEAM", None)
    done = subprocess.run(
        [sys.executable, "-m", "cloud.interfaces.cli", "deploy", "dev", "web", "alpha/web:5"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    spec, service = latest(env)
    assert spec == {**FULL, "image": "alpha/web:5"} and service.replicas == 3
