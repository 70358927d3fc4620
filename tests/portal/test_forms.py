"""Forms: what they create, and that bad input is named next to its field and
changes nothing."""

import re

import pytest
from django.urls import reverse

from cloud.interfaces.portal.forms import CreateEnvironmentForm, DeployForm, SnapshotForm, TokenForm
from cloud.models import Environment, Job, JobState, VirtualMachine, VMState
from tenants.models import AuditEvent, Quota

pytestmark = pytest.mark.django_db

VALID_ENV = {"name": "blog", "kind": "dev", "vm_count": 1, "flavor": "small", "image": "debian-12"}


def create_url(world):
    return reverse("portal:environment-create", args=[world["team"].name])


def field_errors(response, field):
    return response.context["form"].errors.get(field, [])


def test_create_environment_makes_the_environment_and_its_job(world, client_as):
    client = client_as(world["developer"])
    response = client.post(create_url(world), VALID_ENV)
    env = Environment.objects.get(team=world["team"], name="blog")
    job = Job.objects.get(environment=env, parent=None)
    assert job.kind == "create_environment" and job.children.count() == 1
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:job", args=["alpha", job.pk])
    page = client.get(response["Location"]).content.decode()
    assert "Creating blog" in page and "provision_vm" in page


HOSTILE = [
    ("name", "<domain type='kvm'/>"),
    ("name", "a; rm -rf / #"),
    ("name", "$(reboot)"),
    ("name", "../../etc/passwd"),
    ("name", "x" * 500),
    ("name", "Ünïcødé-名前"),
    ("name", "bad\x00name"),
    ("name", ""),
    ("name", "shop"),  # exists already
    ("kind", "production"),
    ("kind", "<prod>"),
    ("vm_count", "-1"),
    ("vm_count", "0"),
    ("vm_count", "99999999999999999999999999"),
    ("vm_count", "1e3"),
    ("vm_count", "two"),
    ("flavor", "../../small"),
    ("flavor", "nonexistent"),
    ("image", "'; DROP TABLE cloud_image; --"),
    ("image", "/etc/shadow"),
]


@pytest.mark.parametrize("field, value", HOSTILE)
def test_hostile_input_is_named_next_to_its_field_and_creates_nothing(
    world, client_as, field, value
):
    client = client_as(world["developer"])
    counts = (Environment.objects.count(), Job.objects.count(), VirtualMachine.objects.count())
    response = client.post(create_url(world), {**VALID_ENV, field: value})
    assert response.status_code == 400
    assert field_errors(response, field), response.context["form"].errors
    html = response.content.decode()
    # The error sits in the field's own group, right after its label.
    assert f'id="id_{field}_error"' in html
    assert "<domain" not in html and "<prod>" not in html  # escaped, never echoed raw
    assert counts == (
        Environment.objects.count(),
        Job.objects.count(),
        VirtualMachine.objects.count(),
    )


def test_over_quota_is_a_field_error(world, client_as):
    Quota.objects.filter(team=world["team"]).update(vms=2)
    client = client_as(world["developer"])
    response = client.post(create_url(world), VALID_ENV)
    assert response.status_code == 400
    assert "quota" in " ".join(field_errors(response, "vm_count"))
    assert not Environment.objects.filter(name="blog").exists()


def test_destroy_needs_the_name_typed_to_confirm(world, client_as):
    client = client_as(world["developer"])
    env = world["env"]
    url = reverse("portal:environment-destroy", args=["alpha", env.pk])
    page = client.get(url)
    assert page.status_code == 200 and b"cannot be undone" in page.content
    for typed in ("", "wrong", "SHOP"):
        response = client.post(url, {"confirm_name": typed})
        assert response.status_code == 400 and field_errors(response, "confirm_name")
    assert not Job.objects.filter(kind="destroy_environment").exists()
    response = client.post(url, {"confirm_name": "shop"})
    job = Job.objects.get(kind="destroy_environment")
    assert response["Location"] == reverse("portal:job", args=["alpha", job.pk])
    assert job.children.count() == 2


def test_busy_environment_names_the_job_holding_it(world, client_as):
    holder = Job.objects.create(
        team=world["team"], kind="create_environment", environment=world["env"], state="running"
    )
    Environment.objects.filter(pk=world["env"].pk).update(lock_job=holder)
    client = client_as(world["developer"])
    url = reverse("portal:vm-action", args=["alpha", world["vm"].pk, "reboot"])
    response = client.post(url, follow=True)
    html = response.content.decode()
    assert "busy" in html and reverse("portal:job", args=["alpha", holder.pk]) in html
    assert not Job.objects.filter(kind="vm_reboot").exists()


def test_vm_actions_start_jobs(world, client_as):
    client = client_as(world["developer"])
    vm = world["vm"]
    url = lambda action: reverse("portal:vm-action", args=["alpha", vm.pk, action])  # noqa: E731
    response = client.post(url("snapshot"), {"snapshot": "before-upgrade"})
    job = Job.objects.get(kind="vm_snapshot")
    assert response["Location"] == reverse("portal:job", args=["alpha", job.pk])
    assert job.params == {"snapshot": "before-upgrade"}
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)
    Environment.objects.filter(pk=world["env"].pk).update(lock_job=None)
    page = client.get(reverse("portal:vm", args=["alpha", vm.pk])).content.decode()
    assert "before-upgrade" in page and "Revert to it" in page
    client.post(url("revert"), {"snapshot": "before-upgrade"})
    assert Job.objects.get(kind="vm_revert").params == {"snapshot": "before-upgrade"}
    Environment.objects.filter(pk=world["env"].pk).update(lock_job=None)
    client.post(url("stop"))
    assert Job.objects.filter(kind="vm_stop", vm=vm).exists()


@pytest.mark.parametrize("value", ["../x", "<x>", "a b", "x" * 41, "名前", ""])
def test_hostile_snapshot_name_is_a_field_error(world, client_as, value):
    client = client_as(world["developer"])
    url = reverse("portal:vm-action", args=["alpha", world["vm"].pk, "snapshot"])
    response = client.post(url, {"snapshot": value})
    assert response.status_code == 400
    assert response.context["snapshot_form"].errors["snapshot"]
    assert b'id="id_snapshot_error"' in response.content
    assert not Job.objects.filter(kind="vm_snapshot").exists()


def test_action_in_the_wrong_state_is_explained(world, client_as):
    client = client_as(world["developer"])
    url = reverse("portal:vm-action", args=["alpha", world["vm"].pk, "start"])
    page = client.post(url, follow=True).content.decode()
    assert "cannot start a VM that is running" in page
    resize = reverse("portal:vm-action", args=["alpha", world["vm"].pk, "resize"])
    response = client.post(resize, {"flavor": "small"})
    assert response.status_code == 400 and b"cannot resize" in response.content


def test_unknown_vm_action_is_404(world, client_as):
    client = client_as(world["developer"])
    url = reverse("portal:vm-action", args=["alpha", world["vm"].pk, "explode"])
    assert client.post(url).status_code == 404


def test_deploy_starts_a_rollout(world, client_as):
    client = client_as(world["developer"])
    url = reverse("portal:deploy", args=["alpha", world["env"].pk])
    response = client.post(
        url, {"service_name": "api", "image": "alpha/api:2", "replicas": 2, "ports": "8080"}
    )
    job = Job.objects.get(kind="deploy", parent=None)
    assert response["Location"] == reverse("portal:job", args=["alpha", job.pk])
    assert job.params["service"] == "api" and job.children.count() == 2


@pytest.mark.parametrize(
    "field, value",
    [
        ("image", "nginx; rm -rf /"),
        ("image", "$(curl evil)"),
        ("service_name", "../web"),
        ("replicas", "-3"),
        ("replicas", "100000"),
        ("ports", "80 70000"),
        ("ports", "80,abc"),
    ],
)
def test_hostile_deploy_is_a_field_error(world, client_as, field, value):
    client = client_as(world["developer"])
    body = {"service_name": "api", "image": "alpha/api:1", "replicas": 1, "ports": "", field: value}
    response = client.post(reverse("portal:deploy", args=["alpha", world["env"].pk]), body)
    assert response.status_code == 400
    assert response.context["deploy_form"].errors[field]
    assert not Job.objects.filter(kind="deploy").exists()


def test_scale_and_rollback_errors_show_on_the_environment_page(world, client_as):
    client = client_as(world["developer"])
    base = ["alpha", world["env"].pk, "web"]
    scale = client.post(reverse("portal:service-action", args=[*base, "scale"]), {"replicas": -1})
    assert scale.status_code == 400 and b'id="id_replicas_error"' in scale.content
    rollback = client.post(reverse("portal:service-action", args=[*base, "rollback"]), follow=True)
    assert b"no earlier release" in rollback.content
    assert (
        client.post(
            reverse("portal:service-action", args=[*base, "scale"]), {"replicas": 3}
        ).status_code
        == 302
    )
    assert Job.objects.get(kind="deploy").params["operation"] == "scale"


def test_viewer_post_creates_no_audit_event(world, client_as):
    before = AuditEvent.objects.count()
    client_as(world["viewer"]).post(create_url(world), VALID_ENV)
    assert AuditEvent.objects.count() == before


def test_stopped_vm_offers_start_not_stop(world, client_as):
    VirtualMachine.objects.filter(pk=world["vm"].pk).update(state=VMState.STOPPED)
    html = (
        client_as(world["developer"])
        .get(reverse("portal:vm", args=["alpha", world["vm"].pk]))
        .content.decode()
    )
    assert reverse("portal:vm-action", args=["alpha", world["vm"].pk, "start"]) in html
    assert reverse("portal:vm-action", args=["alpha", world["vm"].pk, "stop"]) not in html
    assert "Resize" in html


@pytest.fixture
def staging(world):
    """A staging environment with running VMs, the target of dev's promotions."""
    from cloud.services.environments import create_environment
    from tests.portal.conftest import finish_job

    job = create_environment(
        user=world["admin"], team=world["team"], name="stage", kind="staging", vm_count=1
    )
    finish_job(job)
    VirtualMachine.objects.filter(environment=job.environment).update(state=VMState.RUNNING)
    return job.environment


def test_promote_rolls_the_same_release_out_to_staging(world, client_as, staging):
    client = client_as(world["developer"])
    env_page = client.get(reverse("portal:environment", args=["alpha", world["env"].pk]))
    assert b'<option value="stage"' in env_page.content
    url = reverse("portal:service-action", args=["alpha", world["env"].pk, "web", "promote"])
    response = client.post(url, {"target_env": "stage"})
    job = Job.objects.get(kind="deploy", parent=None)
    assert response["Location"] == reverse("portal:job", args=["alpha", job.pk])
    assert job.environment == staging and job.params["operation"] == "promote"


@pytest.mark.parametrize("target", ["shop", "../stage", "<x>", ""])
def test_promote_to_an_unoffered_target_is_a_field_error(world, client_as, staging, target):
    client = client_as(world["developer"])
    url = reverse("portal:service-action", args=["alpha", world["env"].pk, "web", "promote"])
    response = client.post(url, {"target_env": target})
    assert response.status_code == 400 and b'id="id_target_env_error"' in response.content
    assert not Job.objects.filter(kind="deploy").exists()


def without_csrf(content: bytes) -> bytes:
    """The page without its CSRF tokens, which differ on every render."""
    return re.sub(rb'(name="csrfmiddlewaretoken" value=|csrf-token" content=)"[^"]*"', b"", content)


def test_a_team_that_does_not_exist_reads_like_one_you_are_not_in(world, client_as):
    """Finding 13: in the portal too, a missing team and another team's pages
    answer with the same status and the same page, for reads and writes."""
    client = client_as(world["outsider"])
    for method, path, body in [
        ("get", "", None),
        ("get", "environments/new/", None),
        ("post", "environments/new/", VALID_ENV),
        ("get", f"environments/{world['env'].pk}/", None),
        ("post", f"environments/{world['env'].pk}/deploy/", {"service_name": "web"}),
        ("get", "jobs/", None),
        ("get", "audit/", None),
    ]:
        answers = [
            getattr(client, method)(f"/t/{team}/{path}", body or {})
            for team in ("alpha", "no-such-team")
        ]
        existing, missing = ((a.status_code, without_csrf(a.content)) for a in answers)
        assert existing == missing, (method, path)
        assert existing[0] == 404
    assert not Environment.objects.filter(name="blog").exists()


@pytest.mark.parametrize(
    "form_class, field, value",
    [
        (CreateEnvironmentForm, "name", "blog\n"),
        (CreateEnvironmentForm, "vm_count", "٢"),  # an Arabic-Indic 2: int() takes it
        (DeployForm, "service_name", "web\n"),
        (DeployForm, "replicas", "٢"),
        (DeployForm, "ports", "٨٠"),
        (DeployForm, "healthcheck", "http:/\n:80"),
        (DeployForm, "healthcheck", "tcp:80\n"),
        (DeployForm, "healthcheck", "tcp:99999"),
        (DeployForm, "healthcheck", "cmd:a,,b"),
        (SnapshotForm, "snapshot", "before\n"),
        (TokenForm, "name", "ci\n"),
    ],
)
def test_forms_match_the_whole_value(world, form_class, field, value):
    """Finding 12: a form's checks match the whole value as typed: no trailing
    newline, no digits of other scripts, no port out of range."""
    valid = {
        CreateEnvironmentForm: VALID_ENV,
        DeployForm: {"service_name": "web", "image": "alpha/web:1", "replicas": "1"},
        SnapshotForm: {"snapshot": "before"},
        TokenForm: {"name": "ci"},
    }[form_class]
    assert form_class(valid).is_valid(), form_class(valid).errors
    form = form_class({**valid, field: value})
    assert not form.is_valid() and field in form.errors, form.errors


def test_names_and_checksums_are_matched_whole():
    """Finding 12: the model validators refuse a name or a sha256 with a trailing newline."""
    from django.core.exceptions import ValidationError

    from cloud.models import sha256_hex
    from tenants.models import slug_name

    for validator, value in [(slug_name, "web\n"), (sha256_hex, "a" * 64 + "\n")]:
        with pytest.raises(ValidationError):
            validator(value)
