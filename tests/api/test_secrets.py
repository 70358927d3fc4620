"""Team secrets: written through the API, never read back, decrypted only by the
worker that starts the container, and masked in job logs."""

import pytest

from cloud.models import Job, Release, Secret
from cloud.services import deployments
from tenants.models import Membership
from workers import jobs

pytestmark = pytest.mark.django_db

URL = "/api/v1/teams/alpha/secrets/"


def test_set_list_replace_delete(make_team, api_as):
    _, user = make_team("alpha", "developer")
    client = api_as(user)
    assert client.post(URL, {"name": "db-password", "value": "hunter2"}).status_code == 201
    listed = client.get(URL).json()["results"]
    assert [s["name"] for s in listed] == ["db-password"] and "hunter2" not in str(listed)
    client.post(URL, {"name": "db-password", "value": "correct horse"})
    assert Secret.objects.get(name="db-password").value == "correct horse"
    assert client.delete(URL + "db-password/").status_code == 204
    assert client.delete(URL + "db-password/").status_code == 404


@pytest.mark.parametrize("field, value", [("name", "../x"), ("name", "A B"), ("value", "")])
def test_bad_secrets_are_400_naming_the_field(make_team, api_as, field, value):
    _, user = make_team("alpha")
    body = {"name": "ok", "value": "v", field: value}
    response = api_as(user).post(URL, body)
    assert response.status_code == 400 and field in response.json()
    assert not Secret.objects.exists()


def test_viewers_and_strangers(make_team, api_as):
    team, admin = make_team("alpha")
    viewer = type(admin).objects.create_user("viewer")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    assert api_as(viewer).post(URL, {"name": "x", "value": "y"}).status_code == 403
    _, stranger = make_team("beta")
    assert api_as(stranger).get(URL).status_code == 404


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_deploy_injects_the_secret_and_masks_it(sshd_guest):
    vm, engine, image = sshd_guest
    team = vm.environment.team
    user = Membership.objects.get(team=team).user
    Secret.objects.create(team=team, name="api-key", value="s3cr3t-value-42")
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
