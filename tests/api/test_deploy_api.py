import pytest

from cloud.models import Job, Service

pytestmark = pytest.mark.django_db



def test_deploy_answers_202_and_services_lists_it(dev_env):
    client, url = dev_env
    body = {
        "service_name": "web",
        "image": "alpha/web:1",
        "ports": [8080],
        "healthcheck": {"type": "http", "path": "/", "port": 8080},
    }
    response = client.post(url + "deploy/", body, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["kind"] == "deploy"
    services = client.get(url + "services/").json()
    assert services[0]["name"] == "web" and services[0]["current_release"] is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("image", "x y"),
        ("ports", [99999]),
        ("env", {"1X": "a"}),
        ("replicas", -5),
        ("service_name", "../../x"),
        ("healthcheck", {"type": "exec"}),
    ],
)
def test_hostile_deploys_are_400_naming_the_field(dev_env, field, value):
    client, url = dev_env
    body = {"service_name": "web", "image": "alpha/web:1", field: value}
    response = client.post(url + "deploy/", body, format="json")
    assert response.status_code == 400 and field in response.json()
    assert not Service.objects.exists() and not Job.objects.exists()


def test_scale_promote_rollback_without_a_release_are_400(dev_env):
    client, url = dev_env
    client.post(url + "deploy/", {"service_name": "web", "image": "alpha/web:1"}, format="json")
    Job.objects.update(state="succeeded")  # the environment is free again
    for action, body in [
        ("scale", {"service_name": "web", "replicas": 2}),
        ("promote", {"service_name": "web"}),
        ("rollback", {"service_name": "web"}),
    ]:
        response = client.post(url + action + "/", body, format="json")
        assert response.status_code == 400, (action, response.content)
    unknown = client.post(url + "rollback/", {"service_name": "nope"}, format="json")
    assert unknown.status_code == 400 and "service_name" in unknown.json()
