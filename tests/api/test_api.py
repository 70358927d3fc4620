import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from cloud.models import Environment, Flavor, Image, Job, VirtualMachine, VMState
from tenants.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db

CREATE = {"name": "web", "kind": "dev", "vm_count": 1, "flavor": "small", "image": "debian-12"}


def envs_url(team):
    return f"/api/v1/teams/{team.name}/environments/"


def test_create_answers_202_with_the_job(make_team, catalogue, api_as):
    team, user = make_team("alpha", "developer")
    response = api_as(user).post(envs_url(team), CREATE, format="json")
    assert response.status_code == 202, response.content
    job = response.json()
    assert response["Location"] == job["url"] and job["kind"] == "create_environment"
    assert job["state"] == "queued" and len(job["children"]) == 1
    detail = api_as(user).get(job["url"])
    assert detail.status_code == 200 and detail.json()["id"] == job["id"]
    child = api_as(user).get(job["children"][0]).json()
    assert [s["name"] for s in child["steps"]][:3] == ["reserve", "choose path", "create disk"]


HOSTILE = [
    ("name", "<x>'\"&;$(reboot)"),
    ("name", "../../../etc/passwd"),
    ("name", "a" * 300),
    ("name", "ünïcødé"),
    ("kind", "prod; rm -rf /"),
    ("vm_count", -3),
    ("vm_count", 10**12),
    ("flavor", "../flavor"),
    ("image", 'json:{"file":"/etc/shadow"}'),
    ("vm_count", "many"),
]


@pytest.mark.parametrize("field, value", HOSTILE)
def test_hostile_input_is_a_400_naming_the_field_and_creates_nothing(
    make_team, catalogue, api_as, field, value
):
    team, user = make_team("alpha")
    response = api_as(user).post(envs_url(team), {**CREATE, field: value}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Environment.objects.exists() and not Job.objects.exists()


def test_anonymous_and_revoked_tokens_get_401(make_team):
    team, user = make_team("alpha")
    assert APIClient().get(envs_url(team)).status_code == 401
    token, key = ApiToken.issue(user, "ci")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get(envs_url(team)).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert client.get(envs_url(team)).status_code == 401
    assert ApiToken.objects.get(pk=token.pk).digest != key  # only a digest is stored


def test_other_teams_objects_are_404(make_team, catalogue, api_as):
    team_a, user_a = make_team("alpha")
    team_b, user_b = make_team("beta")
    job = api_as(user_a).post(envs_url(team_a), CREATE, format="json").json()
    env = Environment.objects.get()
    vm = VirtualMachine.objects.get()
    stranger = api_as(user_b)
    for url in [
        f"{envs_url(team_a)}",
        f"{envs_url(team_a)}{env.pk}/",
        f"/api/v1/teams/alpha/vms/{vm.pk}/",
        job["url"],
        "/api/v1/teams/alpha/audit/",
        "/api/v1/teams/nope/environments/",
    ]:
        assert stranger.get(url).status_code == 404, url
    # Even through the stranger's own team, another team's ids do not exist.
    assert stranger.get(f"{envs_url(team_b)}{env.pk}/").status_code == 404
    assert stranger.delete(f"{envs_url(team_b)}{env.pk}/").status_code == 404


def test_viewers_get_403_for_actions(make_team, catalogue, api_as):
    team, admin = make_team("alpha", "admin")
    job = api_as(admin).post(envs_url(team), CREATE, format="json").json()
    env, vm = Environment.objects.get(), VirtualMachine.objects.get()
    _, viewer = make_team("other", "viewer", username="viewer")
    from tenants.models import Membership

    Membership.objects.create(team=team, user=viewer, role="viewer")
    client = api_as(viewer)
    assert client.get(envs_url(team)).status_code == 200
    assert client.post(envs_url(team), {**CREATE, "name": "x"}, format="json").status_code == 403
    assert client.delete(f"{envs_url(team)}{env.pk}/").status_code == 403
    action = client.post(
        f"/api/v1/teams/alpha/vms/{vm.pk}/actions/", {"action": "reboot"}, format="json"
    )
    assert action.status_code == 403
    assert client.post(job["url"] + "cancel/").status_code == 403


def test_busy_environment_is_409_with_the_running_job(make_team, catalogue, api_as):
    team, user = make_team("alpha")
    client = api_as(user)
    job = client.post(envs_url(team), CREATE, format="json").json()
    env = Environment.objects.get()
    busy = client.delete(f"{envs_url(team)}{env.pk}/")
    assert busy.status_code == 409 and busy.json()["job"] == job["url"]
    queued = client.delete(f"{envs_url(team)}{env.pk}/?queue_if_busy=true")
    assert queued.status_code == 202


def test_cancel_asks_the_job_and_its_children_to_stop(make_team, catalogue, api_as):
    team, user = make_team("alpha")
    client = api_as(user)
    job = client.post(envs_url(team), CREATE, format="json").json()
    cancelled = client.post(job["url"] + "cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"]
    assert Job.objects.get(parent_id=job["id"]).cancel_requested
    Job.objects.filter(pk=job["id"]).update(state="failed")
    again = client.post(job["url"] + "cancel/")
    assert again.status_code == 400 and "state" in again.json()


def test_lists_are_paginated_filtered_and_audited(make_team, catalogue, api_as):
    team, user = make_team("alpha")
    client = api_as(user)
    for name, kind in [("a", "dev"), ("b", "staging"), ("c", "dev")]:
        assert (
            client.post(
                envs_url(team), {**CREATE, "name": name, "kind": kind}, format="json"
            ).status_code
            == 202
        )
    page = client.get(envs_url(team), {"kind": "dev"}).json()
    assert page["count"] == 2 and [e["name"] for e in page["results"]] == ["a", "c"]
    jobs = client.get(f"/api/v1/teams/{team.name}/jobs/", {"top_level": "true"}).json()
    assert jobs["count"] == 3
    audit = client.get(f"/api/v1/teams/{team.name}/audit/", {"action": "environment.create"}).json()
    assert audit["count"] == 3 == AuditEvent.objects.filter(action="environment.create").count()


def test_schema_and_docs_are_served(make_team, api_as):
    _, user = make_team("alpha")
    client = api_as(user)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/api/v1/teams/{team}/environments/" in schema.json()["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_a_team_that_does_not_exist_reads_like_one_you_are_not_in(make_team, catalogue, api_as):
    """Finding 13: team names cannot be enumerated: a missing team and another
    team answer with the same status and the same body, for reads and writes."""
    make_team("alpha")
    _, outsider = make_team("beta")
    client = api_as(outsider)
    for method, path, body in [
        ("get", "environments/", None),
        ("get", "environments/1/", None),
        ("post", "environments/", CREATE),
        ("post", "environments/1/deploy/", {"service_name": "web", "image": "x:1"}),
        ("delete", "environments/1/", None),
        ("get", "jobs/", None),
        ("get", "audit/", None),
        ("post", "secrets/", {"name": "token", "value": "v"}),
    ]:
        answers = [
            getattr(client, method)(f"/api/v1/teams/{team}/{path}", body, format="json")
            for team in ("alpha", "no-such-team")
        ]
        existing, missing = ((a.status_code, a.content) for a in answers)
        assert existing == missing, (method, path, existing, missing)
        assert existing[0] == 404
    assert not Environment.objects.exists() and not Job.objects.exists()


@pytest.mark.parametrize(
    "field, value",
    [
        ("ports", [22]),
        ("ports", [8080, 22]),
        ("volumes", ["data:/"]),
        ("volumes", ["data:/x\n"]),
        ("volumes", ["data:/proc/self"]),
        ("volumes", ["data:/srv/../etc"]),
        ("env", {"FOO\n": "x"}),
        ("secret_env", {"TOKEN\n": "token"}),
        ("healthcheck", {"type": "http", "path": "/\n", "port": 8080}),
        ("healthcheck", {"type": "tcp", "port": 8080, "shell": "id"}),
        ("service_name", "web\n"),
    ],
)
def test_deploy_refuses_trailing_newlines_root_volumes_and_the_ssh_port(
    make_team, catalogue, api_as, field, value
):
    """Finding 12: "$" let a trailing newline through (env key, volume, health
    path, names); a volume may not mount at / and port 22 may not be published."""
    team, user = make_team("alpha")
    env = Environment.objects.create(team=team, name="web", kind="dev")
    VirtualMachine.objects.create(
        environment=env,
        name="vm1",
        host=catalogue,
        flavor=Flavor.objects.get(name="small"),
        image=Image.objects.get(name="debian-12"),
        state=VMState.RUNNING,
    )
    body = {"service_name": "web", "image": "alpha/web:1", field: value}
    response = api_as(user).post(f"{envs_url(team)}{env.pk}/deploy/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Job.objects.exists() and not env.services.exists()
