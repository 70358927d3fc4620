"""Who sees what: members, viewers, other teams' members and anonymous callers."""

import pytest
from django.urls import reverse

from cloud.models import Job

pytestmark = pytest.mark.django_db


def page_urls(team, env, vm, job):
    """Every read-only page of a team, for one environment, VM and job."""
    name = team.name
    return {
        "dashboard": reverse("portal:dashboard", args=[name]),
        "active jobs": reverse("portal:active-jobs", args=[name]),
        "environment": reverse("portal:environment", args=[name, env.pk]),
        "vm": reverse("portal:vm", args=[name, vm.pk]),
        "console": reverse("portal:vm-console", args=[name, vm.pk]),
        "jobs": reverse("portal:jobs", args=[name]),
        "job": reverse("portal:job", args=[name, job.pk]),
        "job live": reverse("portal:job-live", args=[name, job.pk]),
        "audit": reverse("portal:audit", args=[name]),
    }


def action_posts(team, env, vm, job):
    """Every changing URL with a body that would be valid for a developer."""
    name = team.name
    vm_action = lambda action: reverse("portal:vm-action", args=[name, vm.pk, action])  # noqa: E731
    service = lambda action: reverse(  # noqa: E731
        "portal:service-action", args=[name, env.pk, "web", action]
    )
    return [
        (
            reverse("portal:environment-create", args=[name]),
            {"name": "new", "kind": "dev", "vm_count": 1, "flavor": "small", "image": "debian-12"},
        ),
        (reverse("portal:environment-destroy", args=[name, env.pk]), {"confirm_name": env.name}),
        (
            reverse("portal:deploy", args=[name, env.pk]),
            {"service_name": "api", "image": f"{name}/api:1", "replicas": 1},
        ),
        (service("scale"), {"replicas": 2}),
        (service("promote"), {"target_env": "stage"}),
        (service("rollback"), {}),
        (vm_action("stop"), {}),
        (vm_action("reboot"), {}),
        (vm_action("start"), {}),
        (vm_action("snapshot"), {"snapshot": "before"}),
        (vm_action("revert"), {"snapshot": "before"}),
        (vm_action("delete_snapshot"), {"snapshot": "before"}),
        (vm_action("resize"), {"flavor": "small"}),
        (reverse("portal:job-cancel", args=[name, job.pk]), {}),
    ]


def urls_of(world):
    return page_urls(world["team"], world["env"], world["vm"], world["job"])


def test_every_page_renders_for_a_member(world, client_as):
    client = client_as(world["developer"])
    expected = {
        "dashboard": ["shop", "Quota", "Host utilisation", "Running jobs"],
        "active jobs": ["Running jobs"],
        "environment": ["shop-1", "shop-2", "web", "nginx:1.27", "healthy"],
        "vm": ["shop-1", "Serial console", "CPU and memory", "Snapshots"],
        "console": ["console"],
        "jobs": ["create_environment"],
        "job": ["create_environment", "provision_vm", "100%"],
        "job live": ["provision_vm"],
        "audit": ["environment.create", "alice"],
    }
    for page, url in urls_of(world).items():
        response = client.get(url)
        assert response.status_code == 200, page
        for text in expected[page]:
            assert text in response.content.decode(), (page, text)


def test_the_forms_render_for_a_developer(world, client_as):
    client = client_as(world["developer"])
    team, env = world["team"], world["env"]
    create = client.get(reverse("portal:environment-create", args=[team.name]))
    assert create.status_code == 200 and 'name="vm_count"' in create.content.decode()
    destroy = client.get(reverse("portal:environment-destroy", args=[team.name, env.pk]))
    assert destroy.status_code == 200 and 'name="confirm_name"' in destroy.content.decode()


def test_another_teams_member_gets_404_everywhere(world, client_as):
    client = client_as(world["outsider"])
    for page, url in urls_of(world).items():
        assert client.get(url).status_code == 404, page
    for url, body in action_posts(world["team"], world["env"], world["vm"], world["job"]):
        assert client.post(url, body).status_code == 404, url
    assert Job.objects.filter(team=world["team"]).count() == 3  # parent and two VMs


def test_other_teams_objects_are_404_under_ones_own_team(world, client_as):
    """The object ids of team beta, in URLs of team alpha, do not exist for alpha."""
    client = client_as(world["admin"])
    foreign = page_urls(world["team"], world["other_env"], world["other_vm"], world["other_job"])
    for page, url in foreign.items():
        if page in {"environment", "vm", "console", "job", "job live"}:
            assert client.get(url).status_code == 404, page
    posts = action_posts(world["team"], world["other_env"], world["other_vm"], world["other_job"])
    for url, body in posts[1:]:  # the first creates in the caller's own team
        assert client.post(url, body).status_code == 404, url


def test_unknown_team_is_404(world, client_as):
    client = client_as(world["admin"])
    assert client.get(reverse("portal:dashboard", args=["nosuchteam"])).status_code == 404


def test_viewer_gets_403_for_every_action(world, client_as):
    client = client_as(world["viewer"])
    jobs_before = Job.objects.count()
    for url, body in action_posts(world["team"], world["env"], world["vm"], world["job"]):
        assert client.post(url, body).status_code == 403, url
        assert client.post(url, {}).status_code == 403, url  # even with nothing sent
    assert Job.objects.count() == jobs_before
    team, env = world["team"], world["env"]
    assert client.get(reverse("portal:environment-create", args=[team.name])).status_code == 403
    destroy = reverse("portal:environment-destroy", args=[team.name, env.pk])
    assert client.get(destroy).status_code == 403


def test_viewer_sees_no_action_buttons(world, client_as):
    client = client_as(world["viewer"])
    for page, url in urls_of(world).items():
        html = client.get(url).content.decode()
        assert 'method="post"' not in html.replace(
            f'method="post" action="{reverse("portal:logout")}"', ""
        ), page
        assert "New environment" not in html and "Destroy" not in html, page


def test_developer_sees_actions_on_dev_but_not_on_prod(world, client_as):
    from cloud.models import Environment

    prod = Environment.objects.create(team=world["team"], name="live", kind="prod")
    client = client_as(world["developer"])
    team = world["team"].name
    dev_html = client.get(reverse("portal:environment", args=[team, world["env"].pk])).content
    assert b"Destroy" in dev_html and b"Deploy" in dev_html
    prod_html = client.get(reverse("portal:environment", args=[team, prod.pk])).content
    assert b"Destroy" not in prod_html and b"Deploy a release" not in prod_html
    destroy = reverse("portal:environment-destroy", args=[team, prod.pk])
    assert client.post(destroy, {"confirm_name": "live"}).status_code == 403


def test_anonymous_is_sent_to_login(world, client):
    login = reverse("portal:login")
    urls = list(urls_of(world).values()) + [reverse("portal:home")]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(login), url
    for url, body in action_posts(world["team"], world["env"], world["vm"], world["job"]):
        response = client.post(url, body)
        assert response.status_code == 302 and response["Location"].startswith(login), url


def test_login_and_logout(world, client):
    page = client.get(reverse("portal:login"))
    assert page.status_code == 200 and b'name="password"' in page.content
    response = client.post(reverse("portal:login"), {"username": "alice", "password": "pw"})
    assert response.status_code == 302
    assert client.get(response["Location"])["Location"] == reverse(
        "portal:dashboard", args=["alpha"]
    )
    bad = client.post(reverse("portal:logout"))
    assert bad.status_code == 302
    assert client.get(reverse("portal:home")).status_code == 302


def test_team_switcher_lists_the_users_teams_and_remembers_the_current_one(world, client_as):
    from tenants.models import Membership

    user = world["admin"]
    Membership.objects.create(team=world["other_team"], user=user, role="viewer")
    client = client_as(user)
    html = client.get(reverse("portal:dashboard", args=["alpha"])).content.decode()
    assert reverse("portal:dashboard", args=["beta"]) in html and "Team: alpha" in html
    client.get(reverse("portal:dashboard", args=["beta"]))
    assert client.get(reverse("portal:home"))["Location"] == reverse(
        "portal:dashboard", args=["beta"]
    )


def test_user_without_team_is_told_so(db, client, django_user_model):
    client.force_login(django_user_model.objects.create_user("lonely", password="pw"))
    response = client.get(reverse("portal:home"))
    assert response.status_code == 200 and b"not in a team" in response.content


@pytest.mark.parametrize(
    "path",
    [
        "/t/alpha/environments/99999999999999999999999999/",
        "/t/alpha/vms/99999999999999999999999999/",
        "/t/alpha/vms/99999999999999999999999999/console/",
        "/t/alpha/jobs/00000000-0000-0000-0000-000000000000/",
        "/t/alpha/environments/1/services/..%2F..%2Fetc/scale/",
        "/t/%3Cscript%3E/",
        "/t/alpha/vms/1/%24(reboot)/",
    ],
)
def test_hostile_urls_are_404_not_500(world, client_as, path):
    client = client_as(world["admin"])
    assert client.get(path).status_code == 404
    assert client.post(path).status_code in (404, 405)


def test_a_refreshing_panel_sends_the_whole_page_to_login(world, client):
    job = world["job"]
    page = reverse("portal:job", args=["alpha", job.pk])
    response = client.get(
        reverse("portal:job-live", args=["alpha", job.pk]),
        headers={"HX-Request": "true", "HX-Current-URL": f"http://testserver{page}"},
    )
    assert response.status_code == 204
    assert response["HX-Redirect"] == f"{reverse('portal:login')}?next={page}"
