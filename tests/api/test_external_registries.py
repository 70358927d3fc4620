"""A team's external registries: registered by admins, the password kept
encrypted and never read back, bad fields named, an unregistered host or a
deploy from one checked by the deploy service."""

import pytest
from django.db import connection

from cloud.models import ExternalRegistry, Release
from tenants.models import AuditEvent, Membership

pytestmark = pytest.mark.django_db

URL = "/api/v1/teams/alpha/registries/"
LOGIN = {"host": "ghcr.io", "username": "ci-bot", "password": "ghp_not-a-real-token"}


def test_register_list_replace_forget(make_team, api_as):
    _, admin = make_team("alpha")
    client = api_as(admin)
    made = client.post(URL, LOGIN, format="json")
    assert made.status_code == 201, made.content
    assert made.json()["host"] == "ghcr.io" and made.json()["added_by"] == admin.username
    listed = client.get(URL).json()["results"]
    assert [(r["host"], r["username"]) for r in listed] == [("ghcr.io", "ci-bot")]
    detail = client.get(f"{URL}{made.json()['id']}/")
    for answer in (made, client.get(URL), detail):
        assert LOGIN["password"] not in answer.content.decode()
        assert "password" not in answer.content.decode()
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM cloud_externalregistry")
        (stored,) = cursor.fetchone()
    assert LOGIN["password"] not in stored  # encrypted at rest

    # Registering the host again (any case) replaces the login.
    again = client.post(URL, {**LOGIN, "host": "GHCR.io", "password": "ghp_new"}, format="json")
    assert again.status_code == 201 and again.json()["id"] == made.json()["id"]
    assert ExternalRegistry.objects.get().password == "ghp_new"
    assert client.delete(f"{URL}{made.json()['id']}/").status_code == 204
    assert client.delete(f"{URL}{made.json()['id']}/").status_code == 404
    actions = AuditEvent.objects.values_list("action", flat=True)
    assert {"registry.register", "registry.remove"} <= set(actions)


@pytest.mark.parametrize(
    "field, value",
    [
        ("host", "ghcr"),  # no port, no dot: a path component, not a host
        ("host", "22.5"),
        ("host", "ghcr.io/org"),
        ("host", "https://ghcr.io"),
        ("host", ""),
        ("host", "x" * 300 + ".io"),
        ("username", ""),
        ("username", "a:b"),
        ("username", "ci\nbot"),
        ("password", ""),
        ("password", 12345),
    ],
)
def test_bad_fields_are_400_naming_the_field(make_team, api_as, field, value):
    _, admin = make_team("alpha")
    response = api_as(admin).post(URL, {**LOGIN, field: value}, format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert not ExternalRegistry.objects.exists()


def test_strata_s_own_registry_needs_no_registering(make_team, api_as, settings):
    _, admin = make_team("alpha")
    response = api_as(admin).post(URL, {**LOGIN, "host": settings.STRATA_REGISTRY_ADDR})
    assert response.status_code == 400
    assert "Strata's own registry" in response.json()["host"][0]


@pytest.mark.parametrize("role", ["developer", "viewer"])
def test_only_admins_register_or_forget(make_team, api_as, django_user_model, role):
    team, _ = make_team("alpha")
    registry = ExternalRegistry.objects.create(team=team, **LOGIN)
    member = django_user_model.objects.create_user(f"a-{role}")
    Membership.objects.create(team=team, user=member, role=role)
    client = api_as(member)
    assert client.get(URL).status_code == 200  # members see which registries there are
    assert client.post(URL, {**LOGIN, "host": "quay.io"}).status_code == 403
    assert client.delete(f"{URL}{registry.pk}/").status_code == 403
    assert ExternalRegistry.objects.count() == 1


def test_another_team_neither_sees_nor_uses_a_registry(make_team, api_as, dev_env):
    alpha_client, _ = dev_env
    alpha_client.post(URL, LOGIN, format="json")
    _, stranger = make_team("gamma")
    stranger_client = api_as(stranger)
    assert stranger_client.get("/api/v1/teams/gamma/registries/").json()["results"] == []
    registry = ExternalRegistry.objects.get()
    assert stranger_client.delete(f"/api/v1/teams/gamma/registries/{registry.pk}/").status_code == (
        404
    )


def test_an_unregistered_host_is_400_naming_image_and_makes_nothing(dev_env):
    client, env_url = dev_env
    answer = client.post(
        f"{env_url}deploy/", {"service_name": "web", "image": "ghcr.io/org/app:1"}, format="json"
    )
    assert answer.status_code == 400
    assert "register ghcr.io as a team registry" in answer.json()["image"][0]
    assert not Release.objects.exists()
