"""Every model is in the admin, and its pages load for a superuser."""

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import reverse

from cloud.models import (
    ConsoleTicket,
    ExternalRegistry,
    Orphan,
    RegistryImage,
    RegistryTag,
    Template,
    VMSample,
)
from tenants.models import ApiToken, AuditEvent, Team
from tests.foundation.factories import team_world

pytestmark = pytest.mark.django_db

OWN_MODELS = [m for m in apps.get_models() if m._meta.app_label in {"cloud", "tenants"}]


def test_every_model_is_registered():
    missing = [m.__name__ for m in OWN_MODELS if m not in admin.site._registry]
    assert not missing


@pytest.mark.parametrize("model", OWN_MODELS, ids=lambda m: m.__name__)
def test_admin_pages_load(admin_client, make_team, model):
    team, user = make_team("alpha")
    env = team_world(team, port=20022)
    AuditEvent.record("test", team=team, actor=user, target=team)
    ApiToken.issue(user, "ci")
    vm = env.vms.get()
    Orphan.objects.create(host=vm.host, kind="volume", name="strata-x.disk.qcow2")
    Template.objects.create(
        host=vm.host,
        image=vm.image,
        flavor=vm.flavor,
        image_sha256=vm.image.sha256,
        guest_config_version=1,
        host_key_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 strata-template",
        host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----",
    )
    label = f"{model._meta.app_label}_{model._meta.model_name}"

    changelist = admin_client.get(reverse(f"admin:{label}_changelist"), {"q": "a"})
    assert changelist.status_code == 200
    instance = model.objects.first()
    assert instance is not None
    change = admin_client.get(reverse(f"admin:{label}_change", args=[instance.pk]))
    assert change.status_code == 200
    add = admin_client.get(reverse(f"admin:{label}_add"))
    # Evidence, issued keys, measurements, what the registry reported, the
    # logins teams register and saved templates are not made by hand in the admin.
    by_hand_refused = (
        AuditEvent,
        ApiToken,
        VMSample,
        ConsoleTicket,
        RegistryImage,
        RegistryTag,
        ExternalRegistry,
        Template,
    )
    assert add.status_code == (403 if model in by_hand_refused else 200)


def test_audit_events_are_read_only(admin_client, make_team):
    team, user = make_team("alpha")
    event = AuditEvent.record("environment.create", team=team, actor=user, target=team)
    url = reverse("admin:tenants_auditevent_change", args=[event.pk])
    page = admin_client.get(url)
    assert b'name="action"' not in page.content  # shown, not editable
    admin_client.post(url, {"action": "forged"})
    delete = admin_client.post(
        reverse("admin:tenants_auditevent_delete", args=[event.pk]), {"post": "yes"}
    )
    assert delete.status_code == 403
    event.refresh_from_db()
    assert event.action == "environment.create"


def test_host_admin_actions_change_status(admin_client):
    from cloud.models import Host

    host = Host.objects.create(name="hv9", libvirt_uri="test:///default", cpus=4, memory_mb=4096)
    url = reverse("admin:cloud_host_changelist")
    for action, status in [("drain", "draining"), ("disable", "disabled"), ("enable", "enabled")]:
        admin_client.post(url, {"action": action, "_selected_action": [host.pk]})
        host.refresh_from_db()
        assert host.status == status


def test_team_admin_shows_members(admin_client, make_team):
    team, _ = make_team("alpha")
    page = admin_client.get(reverse("admin:tenants_team_changelist"))
    assert b"alpha" in page.content
    assert Team.objects.get(pk=team.pk).quota


def test_the_build_again_action_sends_one_build_per_kind(
    admin_client, make_team, django_capture_on_commit_callbacks
):
    team, _ = make_team("alpha")
    vm = team_world(team, port=20022).vms.get()
    kind = dict(host=vm.host, image=vm.image, flavor=vm.flavor, image_sha256=vm.image.sha256)
    pks = [
        Template.objects.create(
            **kind, guest_config_version=1, host_key_public="k", host_key_private="k"
        ).pk
        for _ in range(2)
    ]
    with django_capture_on_commit_callbacks(execute=False) as sent:
        page = admin_client.post(
            reverse("admin:cloud_template_changelist"),
            {"action": "build_again", "_selected_action": pks},
            follow=True,
        )
    assert page.status_code == 200
    assert b"1 template build(s) sent" in page.content
    assert len(sent) == 1
