"""Finding 9.3: secrets are scoped to an environment kind (or one environment).

Only who may act on a kind writes its secrets, a deploy resolves names in its
environment's scope, and short values are refused so masking never leaks them.
"""

import threading

import pytest
from django.db import connection

from cloud.models import (
    Deployment,
    Environment,
    Flavor,
    Host,
    Image,
    Job,
    Release,
    Secret,
    Service,
    VirtualMachine,
)
from cloud.services import deployments, secrets
from tenants.models import Membership
from workers.jobs.masking import mask
from workers.jobs.steps.deploy import secret_values

pytestmark = pytest.mark.django_db

URL = "/api/v1/teams/alpha/secrets/"


@pytest.fixture
def world(make_team, catalogue, django_user_model):
    """Team alpha with an admin and a developer, and one environment of each kind
    (plus a second prod one), each with a running VM."""
    team, admin = make_team("alpha")
    developer = django_user_model.objects.create_user("alpha-dev")
    Membership.objects.create(team=team, user=developer, role="developer")
    host, flavor, image = Host.objects.get(), Flavor.objects.get(), Image.objects.get()
    envs = {}
    for name, kind in (("dev", "dev"), ("stage", "staging"), ("live", "prod"), ("eu", "prod")):
        envs[name] = Environment.objects.create(team=team, name=name, kind=kind)
        vm = VirtualMachine.objects.create(
            environment=envs[name], name=f"{name}-1", host=host, flavor=flavor, image=image
        )
        VirtualMachine.objects.filter(pk=vm.pk).update(state="running")
    return team, admin, developer, envs


def test_developers_cannot_set_replace_or_delete_prod_secrets(world, api_as):
    """Finding 9.3: only who may act on prod may set, replace or delete prod secrets."""
    _, admin, developer, envs = world
    as_admin, as_developer = api_as(admin), api_as(developer)
    prod = {"name": "db-password", "value": "prod-value-1", "scope": "prod"}
    assert as_admin.post(URL, prod).status_code == 201
    live = {"name": "db-password", "value": "prod-value-1", "environment": "live"}
    assert as_admin.post(URL, live).status_code == 201

    assert as_developer.post(URL, {**prod, "value": "mine-now"}).status_code == 403
    assert as_developer.post(URL, {**live, "value": "mine-now"}).status_code == 403
    assert as_developer.delete(URL + "db-password/?scope=prod").status_code == 403
    assert as_developer.delete(URL + "db-password/?environment=live").status_code == 403
    assert set(Secret.objects.values_list("value", flat=True)) == {"prod-value-1"}
    assert Secret.objects.count() == 2

    for scope in ("dev", "staging"):
        body = {**prod, "scope": scope, "value": f"{scope}-value"}
        assert as_developer.post(URL, body).status_code == 201
    assert as_developer.delete(URL + "db-password/?scope=staging").status_code == 204
    listed = as_developer.get(URL).json()["results"]
    assert sorted((s["scope"], s["environment"] or "") for s in listed) == [
        ("dev", ""),
        ("prod", ""),
        ("prod", "live"),
    ]
    assert "value" not in str(listed)


def test_the_same_name_holds_one_value_per_scope(world, api_as):
    """Finding 9.3: the scope is part of a secret's identity; an environment's own
    secret wins over its kind's, and a deploy resolves names in its own scope."""
    _, admin, _, envs = world
    client = api_as(admin)
    for where, value in (
        ({"scope": "dev"}, "dev-value"),
        ({"scope": "staging"}, "staging-value"),
        ({"scope": "prod"}, "prod-value"),
        ({"environment": "live"}, "live-value"),
    ):
        body = {"name": "db-password", "value": value, **where}
        assert client.post(URL, body).status_code == 201, where
    assert Secret.objects.filter(name="db-password").count() == 4
    resolved = {
        name: Secret.objects.resolve(env, ["db-password"])["db-password"]
        for name, env in envs.items()
    }
    assert resolved == {
        "dev": "dev-value",
        "stage": "staging-value",
        "live": "live-value",
        "eu": "prod-value",
    }
    # Replacing one scope's value leaves the others alone.
    client.post(URL, {"name": "db-password", "value": "dev-value-2", "scope": "dev"})
    assert Secret.objects.get(scope="dev").value == "dev-value-2"
    assert Secret.objects.get(scope="prod", environment=None).value == "prod-value"
    assert client.delete(URL + "db-password/?environment=live").status_code == 204
    assert Secret.objects.resolve(envs["live"], ["db-password"]) == {"db-password": "prod-value"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "scope"),
        ({"scope": "qa"}, "scope"),
        ({"environment": "nowhere"}, "environment"),
        ({"environment": "dev", "scope": "prod"}, "scope"),
        ({"scope": "dev", "value": "abc"}, "value"),
        ({"scope": "dev", "value": "x"}, "value"),
        ({"scope": "dev", "name": "Bad Name"}, "name"),
    ],
)
def test_bad_secret_input_is_400_naming_the_field(world, api_as, body, field):
    """Finding 9.3: a secret names a valid scope and a value of at least 4
    characters; anything else is a 400 naming the field, and nothing is stored."""
    _, admin, _, _ = world
    response = api_as(admin).post(URL, {"name": "db-password", "value": "long-enough", **body})
    assert response.status_code == 400 and field in response.json(), response.json()
    assert not Secret.objects.exists()


def test_delete_names_the_scope(world, api_as):
    """Finding 9.3: a delete without a scope is a 400 naming it, and deletes nothing."""
    team, admin, _, _ = world
    Secret.objects.create(team=team, scope="dev", name="db-password", value="dev-value")
    response = api_as(admin).delete(URL + "db-password/")
    assert response.status_code == 400 and "scope" in response.json()
    assert api_as(admin).delete(URL + "db-password/?scope=qa").status_code == 400
    assert Secret.objects.count() == 1


def deploy_url(env):
    return f"/api/v1/teams/alpha/environments/{env.pk}/deploy/"


def test_a_dev_deploy_cannot_use_a_prod_secret(world, api_as):
    """Finding 9.3: a dev or staging deploy cannot reference a prod secret (400
    naming secret_env, nothing made), whoever deploys."""
    team, admin, developer, envs = world
    Secret.objects.create(team=team, scope="prod", name="db-password", value="prod-value-1")
    body = {"service_name": "web", "image": "alpha/web:1", "secret_env": {"DB": "db-password"}}
    for user in (developer, admin):
        for env in (envs["dev"], envs["stage"]):
            response = api_as(user).post(deploy_url(env), body, format="json")
            assert response.status_code == 400, response.content
            assert "db-password" in str(response.json()["secret_env"])
    assert not Service.objects.exists() and not Release.objects.exists()
    assert not Deployment.objects.exists() and not Job.objects.exists()

    Secret.objects.create(team=team, scope="dev", name="db-password", value="dev-value-1")
    assert api_as(developer).post(deploy_url(envs["dev"]), body, format="json").status_code == 202
    release = Release.objects.get(service__environment=envs["dev"])
    assert secret_values(release) == {"DB": "dev-value-1"}


def staging_release(team, env, admin) -> Release:
    """A release that succeeded in ``env``, using the secret db-password."""
    spec = deployments.validate_spec(
        {"image": "alpha/web:1", "secret_env": {"DB_PASSWORD": "db-password"}}, team
    )
    service = Service.objects.create(environment=env, name="web", **spec)
    release = Release.objects.create(
        service=service, version=1, spec=spec, image_digest="sha256:" + "b" * 64, created_by=admin
    )
    deployment = Deployment.objects.create(environment=env, release=release)
    Deployment.objects.filter(pk=deployment.pk).update(state="succeeded")
    return release


def test_promote_to_prod_resolves_the_prod_value(world, api_as):
    """Finding 9.3: a promote resolves secret names in the target's scope and fails
    with 400 naming secret_env when that scope lacks one, making nothing."""
    team, admin, _, envs = world
    Secret.objects.create(team=team, scope="staging", name="db-password", value="staging-pw")
    staging_release(team, envs["stage"], admin)
    url = f"/api/v1/teams/alpha/environments/{envs['stage'].pk}/promote/"
    body = {"service_name": "web", "target_env": "live"}

    response = api_as(admin).post(url, body, format="json")
    assert response.status_code == 400 and "secret_env" in response.json(), response.content
    assert not Service.objects.filter(environment=envs["live"]).exists()
    assert not Release.objects.filter(service__environment=envs["live"]).exists()
    assert not Job.objects.exists()

    Secret.objects.create(team=team, scope="prod", name="db-password", value="prod-pw")
    assert api_as(admin).post(url, body, format="json").status_code == 202
    promoted = Release.objects.get(service__environment=envs["live"])
    assert promoted.image_digest == "sha256:" + "b" * 64
    assert secret_values(promoted) == {"DB_PASSWORD": "prod-pw"}


def test_a_secret_deleted_after_deploy_fails_scale_with_400(world):
    """Finding 9.3: every roll-out (scale and rollback too) resolves its secrets
    first, so a scope that lost one is a 400 naming secret_env, not a failed job."""
    team, admin, _, envs = world
    release = staging_release(team, envs["stage"], admin)
    with pytest.raises(deployments.ValidationError) as err:
        deployments.scale(
            user=admin, team=team, env_id=envs["stage"].pk, service_name="web", replicas=2
        )
    assert "secret_env" in err.value.message_dict
    assert Service.objects.get(pk=release.service_id).replicas == 1
    assert not Job.objects.exists()


def test_masking_hides_every_stored_value_however_short():
    """Finding 9.3: values shorter than 4 characters (from before the rule) still
    do not leak through masking; longer values are hidden whole."""
    text = "pin=zq9 key=zq9-and-more token=s3cret-long"
    masked = mask(text, {"zq9", "zq9-and-more", "s3cret-long", ""})
    assert masked == "pin=******** key=******** token=********"


@pytest.mark.django_db(transaction=True)
def test_two_writers_of_one_secret_at_once_leave_one_row(make_team):
    """Finding 9.3: two requests setting the same name in one scope at once leave
    one secret with one of their values; the other scopes are untouched."""
    team, admin = make_team("alpha")
    Secret.objects.create(team=team, scope="prod", name="db-password", value="prod-value")
    barrier, outcomes = threading.Barrier(2), []

    def write(value):
        try:
            barrier.wait()
            secrets.set_secret(user=admin, team=team, name="db-password", value=value, scope="dev")
            outcomes.append("set")
        except secrets.ValidationError as exc:
            outcomes.append(exc.message_dict)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(v,)) for v in ("first-value", "other-value")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dev = Secret.objects.get(team=team, scope="dev", name="db-password")
    assert dev.value in {"first-value", "other-value"}
    assert outcomes.count("set") >= 1
    assert all(o == "set" or "name" in o for o in outcomes), outcomes
    assert Secret.objects.get(team=team, scope="prod").value == "prod-value"


def test_existing_team_wide_secrets_move_to_the_scopes_that_use_them(world):
    """Finding 9.3: the migration gives each team-wide secret the scopes whose
    services or releases use it (a copy per kind), and prod when none does."""
    from importlib import import_module

    from django.apps import apps

    migration = import_module("cloud.migrations.0004_secret_scope")
    team, admin, _, envs = world
    Secret.objects.create(team=team, name="db-password", value="shared-value")
    Secret.objects.create(team=team, name="unused", value="unused-value")
    staging_release(team, envs["stage"], admin)
    Service.objects.create(
        environment=envs["dev"], name="api", image="alpha/api:1", secret_env={"X": "db-password"}
    )
    migration.scope_existing_secrets(apps, None)
    scopes = sorted(Secret.objects.values_list("name", "scope", "value"))
    assert scopes == [
        ("db-password", "dev", "shared-value"),
        ("db-password", "staging", "shared-value"),
        ("unused", "prod", "unused-value"),
    ]
