"""What the pages show: job progress and steps, the console tail, the charts."""

import pytest
from django.urls import reverse
from django.utils import timezone

from cloud.models import Job, JobStep, VirtualMachine, VMState
from tenants.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_job(world):
    """A VM job halfway: one step done with a log, one running, one pending."""
    now = timezone.now()
    job = Job.objects.create(
        team=world["team"],
        kind="vm_reboot",
        environment=world["env"],
        vm=world["vm"],
        state="running",
        progress=33,
        started_at=now - timezone.timedelta(seconds=75),
    )
    JobStep.objects.create(
        job=job,
        index=0,
        name="shut down",
        state="done",
        started_at=now - timezone.timedelta(seconds=75),
        finished_at=now - timezone.timedelta(seconds=5),
        log="10:00:00 guest acknowledged ACPI <shutdown>\n",
    )
    JobStep.objects.create(job=job, index=1, name="boot", state="running", started_at=now)
    JobStep.objects.create(job=job, index=2, name="wait for ssh")
    return job


def test_job_page_shows_progress_steps_timings_and_logs(world, client_as, running_job):
    client = client_as(world["developer"])
    html = client.get(reverse("portal:job", args=["alpha", running_job.pk])).content.decode()
    assert 'value="33"' in html and "33%" in html
    for name in ("shut down", "boot", "wait for ssh"):
        assert name in html
    assert "1m 10s" in html  # the first step's duration
    assert "guest acknowledged ACPI &lt;shutdown&gt;" in html  # its log, escaped
    live = reverse("portal:job-live", args=["alpha", running_job.pk])
    assert f'hx-get="{live}"' in html  # polled while it runs
    assert "Cancel job" in html


def test_finished_job_stops_polling(world, client_as, running_job):
    Job.objects.filter(pk=running_job.pk).update(state="succeeded", progress=100)
    client = client_as(world["developer"])
    html = client.get(reverse("portal:job-live", args=["alpha", running_job.pk])).content.decode()
    assert "hx-get" not in html and 'value="100"' in html and "Cancel job" not in html


def test_failed_job_shows_its_reason_before_the_steps(world, client_as, running_job):
    Job.objects.filter(pk=running_job.pk).update(state="failed", error="boot: domain crashed")
    html = (
        client_as(world["viewer"])
        .get(reverse("portal:job", args=["alpha", running_job.pk]))
        .content.decode()
    )
    assert html.index("boot: domain crashed") < html.index("Steps")


def test_parent_job_progress_is_its_childrens(world, client_as):
    parent = world["job"]
    Job.objects.filter(pk=parent.pk).update(state="running", progress=0)
    first, second = parent.children.order_by("vm__name")
    Job.objects.filter(pk=second.pk).update(state="running", progress=50)
    html = (
        client_as(world["admin"])
        .get(reverse("portal:job", args=["alpha", parent.pk]))
        .content.decode()
    )
    assert 'value="75"' in html  # (100 + 50) / 2
    assert "Per VM" in html and "shop-1" in html and "shop-2" in html
    dashboard = client_as(world["admin"]).get(reverse("portal:dashboard", args=["alpha"]))
    assert 'value="75"' in dashboard.content.decode()


def test_cancel_asks_the_job_to_stop(world, client_as, running_job):
    client = client_as(world["developer"])
    client.post(reverse("portal:job-cancel", args=["alpha", running_job.pk]))
    running_job.refresh_from_db()
    assert running_job.cancel_requested


def test_job_list_filters(world, client_as, running_job):
    client = client_as(world["viewer"])
    url = reverse("portal:jobs", args=["alpha"])
    html = client.get(url, {"state": "running"}).content.decode()
    assert "vm_reboot" in html and "create_environment</a>" not in html
    html = client.get(url, {"kind": "create_environment"}).content.decode()
    assert "create_environment</a>" in html and "vm_reboot</a>" not in html
    for hostile in ({"state": "<script>"}, {"kind": "../x"}, {"page": "-1"}, {"page": "9" * 30}):
        response = client.get(url, hostile)
        assert response.status_code == 200 and b"<script>" not in response.content


def test_audit_log_is_paginated(world, client_as):
    for i in range(60):
        AuditEvent.record(f"test.event{i:02d}", team=world["team"], actor=world["admin"])
    client = client_as(world["viewer"])
    url = reverse("portal:audit", args=["alpha"])
    first = client.get(url).content.decode()
    assert "test.event59" in first and "Page 1 of 2" in first and "environment.create" not in first
    second = client.get(url, {"page": 2}).content.decode()
    assert "environment.create" in second and "test.event59" not in second


def test_audit_shows_only_the_teams_events(world, client_as):
    html = client_as(world["admin"]).get(reverse("portal:audit", args=["alpha"])).content
    assert b"secret" not in html  # team beta's environment


def test_console_tail_is_shown_cleaned_and_escaped(world, client_as, settings, tmp_path):
    settings.STRATA_DATA_DIR = tmp_path
    vm = world["vm"]
    (tmp_path / "console").mkdir()
    log = tmp_path / "console" / f"{vm.domain_name}.log"
    log.write_bytes(b"old line\n" * 5000 + b"\x1b[0;32mOK\x1b[0m Started <b>sshd</b>\r\nlogin: ")
    client = client_as(world["viewer"])
    html = client.get(reverse("portal:vm-console", args=["alpha", vm.pk])).content.decode()
    assert "OK Started &lt;b&gt;sshd&lt;/b&gt;" in html and "login:" in html
    assert "\x1b" not in html
    assert html.count("old line") < 2000  # only the tail
    assert 'hx-trigger="every 3s"' in html


def test_console_without_log_says_so(world, client_as, settings, tmp_path):
    settings.STRATA_DATA_DIR = tmp_path
    html = (
        client_as(world["viewer"])
        .get(reverse("portal:vm", args=["alpha", world["vm"].pk]))
        .content.decode()
    )
    assert "No console log yet" in html
    assert "Not enough samples yet to draw a graph" in html


def test_dashboard_shows_health_quota_bars_and_hosts(world, client_as, catalogue):
    VirtualMachine.objects.filter(pk=world["vm"].pk).update(state=VMState.ERROR)
    html = client_as(world["viewer"]).get(reverse("portal:dashboard", args=["alpha"])).content
    html = html.decode()
    assert "badge-failing" in html  # one VM of shop is in error
    assert 'aria-label="VMs: 2 of 10' in html  # quota bar (default quota: 10 VMs)
    # The host: 3 VMs of 1 vCPU (two of alpha, one of beta) out of 64 x 4.
    assert f"{catalogue.name}" in html and 'aria-label="CPU: 3 of 256 vCPU' in html
    assert "<svg" in html


def test_job_list_pages_keep_the_filters(world, client_as):
    for _ in range(35):
        Job.objects.create(team=world["team"], kind="vm_stop", state="failed")
    client = client_as(world["viewer"])
    html = client.get(reverse("portal:jobs", args=["alpha"]), {"state": "failed"}).content
    assert b"?state=failed&amp;kind=&amp;page=2" in html or b"?state=failed&amp;page=2" in html
    second = client.get(reverse("portal:jobs", args=["alpha"]), {"state": "failed", "page": 2})
    assert b"Page 2 of 2" in second.content and b"page=2&amp;page" not in second.content


def test_pages_use_the_vendored_htmx(world, client_as):
    from django.contrib.staticfiles import finders

    html = client_as(world["viewer"]).get(reverse("portal:dashboard", args=["alpha"])).content
    assert b"/static/cloud/htmx.min.js" in html and b"//unpkg" not in html
    assert "htmx" in open(finders.find("cloud/htmx.min.js")).read(200)
