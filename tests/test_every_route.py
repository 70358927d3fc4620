"""Every route of the portal and the API, walked from the URL configuration,
so that a new route cannot escape: anonymous callers are sent to log in (or
get 401), a member of another team gets 404 for this team's objects, and a
viewer gets 403 for every action.  Routes whose parameters this test does not
know how to fill fail the test until it learns them."""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from cloud.models import (
    Container,
    Environment,
    ExternalRegistry,
    Job,
    RegistryImage,
    Release,
    VirtualMachine,
)
from tenants.models import ApiToken, Membership
from tests.foundation.factories import team_world

pytestmark = pytest.mark.django_db

# Routes anyone may open: the login page itself and logging out.
PUBLIC = {"portal:login", "portal:logout"}
# POSTs that change nothing a viewer may not see: a ticket to watch a console.
VIEWER_MAY_POST = {"portal:vm-console-ticket"}


def routes(patterns=None, prefix="", namespace=""):
    """(name, regex of the whole path) for every named route outside the admin."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        regex = entry.pattern.regex.pattern.lstrip("^")
        if isinstance(entry, URLResolver):
            if entry.app_name == "admin":
                continue
            inner = f"{namespace}:{entry.namespace}" if entry.namespace else namespace
            yield from routes(entry.url_patterns, prefix + regex, inner.lstrip(":"))
        elif isinstance(entry, URLPattern) and entry.name:
            full = re.compile(prefix + regex)
            if "format" not in full.groupindex:  # DRF's .json twins of the same views
                yield f"{namespace}:{entry.name}".lstrip(":"), full


@pytest.fixture
def world(make_team):
    team, admin = make_team("alpha", "admin")
    env = team_world(team, port=20022)
    other, stranger = make_team("beta", "admin")
    viewer = type(admin).objects.create_user("viewer")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    return {
        "team": team,
        "other": other,
        "stranger": stranger,
        "viewer": viewer,
        "env": env,
        "vm": VirtualMachine.objects.get(environment=env),
        "job": Job.objects.get(environment=env),
        "container": Container.objects.get(),
        "release": Release.objects.get(),
        "token": ApiToken.issue(admin, "walk")[0],
        "image": RegistryImage.objects.get(team=team),
        "registry": ExternalRegistry.objects.get(team=team),
    }


def fill(name, regex, world, team):
    """The URL of route ``name`` for team ``team`` and the world's objects."""
    by_route = {
        "environment": "env",
        "vm": "vm",
        "job": "job",
        "container": "container",
        "release": "release",
    }
    values = {
        "team": team.name,
        "env_id": world["env"].pk,
        "vm_id": world["vm"].pk,
        "job_id": world["job"].pk,
        "service_name": "web",
        "token_id": world["token"].pk,
        "image_id": world["image"].pk,
        "registry_id": world["registry"].pk,
        "name": "token",  # the secret team_world makes
        "action": "scale" if "service" in name else "reboot",
    }
    if "pk" in regex.groupindex:
        kind = name.split(":")[-1].split("-")[0]
        assert kind in by_route, f"{name}: teach this test which object its pk is"
        values["pk"] = world[by_route[kind]].pk
    unknown = set(regex.groupindex) - set(values)
    assert not unknown, f"{name}: teach this test to fill {unknown}"
    return reverse(name, kwargs={k: values[k] for k in regex.groupindex})


def is_api(name):
    return name.startswith("api:")


def test_the_walk_finds_both_interfaces():
    names = {name for name, _ in routes()}
    assert {"api:environment-list", "api:job-detail", "portal:dashboard", "portal:vm"} <= names


def test_anonymous_callers_must_log_in(client, world):
    for name, regex in routes():
        if name in PUBLIC:
            continue
        url = fill(name, regex, world, world["team"])
        response = client.get(url)
        if is_api(name):
            assert response.status_code == 401, (name, url, response.status_code)
        else:
            assert response.status_code in (302, 405), (name, url)
            if response.status_code == 302:
                assert reverse("portal:login") in response["Location"], (name, url)


def team_routes():
    return [(n, r) for n, r in routes() if "team" in r.groupindex]


def test_another_teams_member_gets_404(client, world):
    client.force_login(world["stranger"])
    for name, regex in team_routes():
        # This team's URLs, and the stranger's own team's URLs with this team's ids.
        has_object = set(regex.groupindex) & {
            "pk",
            "env_id",
            "vm_id",
            "job_id",
            "image_id",
            "registry_id",
        }
        for team in (world["team"], world["other"]) if has_object else (world["team"],):
            url = fill(name, regex, world, team)
            get, post = client.get(url), client.post(url)
            assert 404 in (get.status_code, post.status_code), (name, url)
            assert get.status_code in (404, 405) and post.status_code in (404, 405), (name, url)


def test_viewers_get_403_for_every_action_and_nothing_changes(client, world, monkeypatch):
    from django.conf import settings

    # No worker serves the container's host here: live reads answer 503, quickly.
    monkeypatch.setattr(settings, "STRATA_LIVE_READ_SECONDS", 0.5)
    client.force_login(world["viewer"])
    before = (Job.objects.count(), Environment.objects.count())
    refused = set()
    for name, regex in team_routes():
        url = fill(name, regex, world, world["team"])
        # Action pages (a create form, a destroy confirmation) refuse viewers even to GET.
        assert client.get(url).status_code in (200, 403, 405, 503), (name, url)
        if name in VIEWER_MAY_POST:
            continue
        for method in (client.post, client.delete):
            status = method(url).status_code
            assert status in (403, 405), (name, url, method.__name__, status)
            if status == 403:
                refused.add(name)
    assert (Job.objects.count(), Environment.objects.count()) == before
    expected = {
        "api:environment-list",
        "api:environment-detail",
        "api:environment-deploy",
        "api:vm-actions",
        "api:job-cancel",
        "api:team-image-detail",
        "portal:environment-create",
        "portal:deploy",
        "portal:vm-action",
        "portal:image-delete",
        "portal:job-cancel",
        "portal:service-action",
        "portal:environment-destroy",
    }
    assert expected <= refused, expected - refused
