"""Team secrets: written through the API, never read back, decrypted only by the
worker that starts the container, and masked in job logs."""

import pytest

from cloud.models import Job, Release, Secret
from cloud.services import deployments
from tenants.models import Membership
from workers.jobs import engine as jobs

pytestmark = pytest.mark.django_db

URL = "/api/v1/teams/alpha/secrets/"


def test_set_list_replace_delete(make_team, api_as):
    _, user = make_team("alpha", "developer")
    client = api_as(user)
    body = {"name": "db-password", "value": "hunter2", "scope": "dev"}
    assert client.post(URL, body).status_code == 201
    listed = client.get(URL).json()["results"]
    assert [(s["name"], s["scope"]) for s in listed] == [("db-password", "dev")]
    assert "hunter2" not in str(listed)
    client.post(URL, {**body, "value": "correct horse"})
    assert Secret.objects.get(name="db-password").value == "correct horse"
    assert client.delete(URL + "db-password/?scope=dev").status_code == 204
    assert client.delete(URL + "db-password/?scope=dev").status_code == 404


@pytest.mark.parametrize("field, value", [("name", "../x"), ("name", "A B"), ("value", "")])
def test_bad_secrets_are_400_naming_the_field(make_team, api_as, field, value):
    _, user = make_team("alpha")
    body = {"name": "ok", "value": "value", "scope": "dev", field: value}
    response = api_as(user).post(URL, body)
    assert response.status_code == 400 and field in response.json()
    assert not Secret.objects.exists()


def test_viewers_and_strangers(make_team, api_as):
    team, admin = make_team("alpha")
    viewer = type(admin).objects.create_user("viewer")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    body = {"name": "x", "value": "yyyy", "scope": "dev"}
    assert api_as(viewer).post(URL, body).status_code == 403
    _, stranger = make_team("beta")
    assert api_as(stranger).get(URL).status_code == 404


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_deploy_injects_the_secret_and_masks_it(sshd_guest):
    vm, engine, image = sshd_guest
    team = vm.environment.team
    user = Membership.objects.get(team=team).user
    Secret.objects.create(team=team, scope="dev", name="api-key", value="s3cr3t-value-42")
    with pytest.raises(deployments.ValidationError) as err:
        deployments.deploy(
            user=user,
            team=team,
            env_id=vm.environment_id,
            service_name="web",
            image=image,
            secret_env={"API_KEY": "nope"},
        )
    assert "secret_env" in err.value.message_dict

    parent = deployments.deploy(
        user=user,
        team=team,
        env_id=vm.environment_id,
        service_name="web",
        image=image,
        env={"MODE": "test"},
        secret_env={"API_KEY": "api-key"},
        volumes=["data:/var/lib/web"],
        command=["sh", "-c", "echo key=$API_KEY; sleep 600"],
    )
    release = Release.objects.filter(service__environment=vm.environment).latest("version")
    assert release.spec["secret_env"] == {"API_KEY": "api-key"}
    assert "s3cr3t" not in str(release.spec)
    child = parent.children.get()
    jobs.run(child.id)
    child.refresh_from_db()
    assert child.state == "succeeded", (child.error, [s.log for s in child.steps.all()])
    container = engine.containers.get(child.vm.containers.get().engine_id)
    assert "API_KEY=s3cr3t-value-42" in container.attrs["Config"]["Env"]
    assert "MODE=test" in container.attrs["Config"]["Env"]
    mounts = {(m["Type"], m["Name"], m["Destination"]) for m in container.attrs["Mounts"]}
    volume = f"strata-{release.service_id}-data"
    assert ("volume", volume, "/var/lib/web") in mounts
    container.remove(force=True)
    engine.volumes.get(volume).remove()
    logs = "".join(s.log for s in child.steps.all()) + child.error
    assert "s3cr3t-value-42" not in logs
    assert Job.objects.get(pk=parent.pk).state == "succeeded"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_health_probe_output_is_masked_even_for_short_values(sshd_guest):
    """Finding 9.3: a failing health probe's output and the container logs shown
    in the job's log are masked with the secret values, short ones too."""
    vm, engine, image = sshd_guest
    team = vm.environment.team
    user = Membership.objects.get(team=team).user
    Secret.objects.create(team=team, scope="dev", name="pin", value="zq9")
    Secret.objects.create(team=team, scope="dev", name="api-key", value="dev-key-value-1")
    probe = ["sh", "-c", "echo probe pin=$PIN key=$API_KEY; exit 1"]
    parent = deployments.deploy(
        user=user,
        team=team,
        env_id=vm.environment_id,
        service_name="web",
        image=image,
        secret_env={"PIN": "pin", "API_KEY": "api-key"},
        command=["sh", "-c", "echo boot pin=$PIN; sleep 600"],
        healthcheck={"type": "command", "command": probe, "retries": 1, "interval": 0.2},
    )
    child = parent.children.get()
    jobs.run(child.id)
    child.refresh_from_db()
    logs = "".join(s.log for s in child.steps.all()) + child.error
    assert child.state == "failed", logs
    assert "probe pin=******** key=********" in logs
    assert "boot pin=********" in logs
    assert "zq9" not in logs and "dev-key-value-1" not in logs
