"""Issue 13: a host's hardware virtualisation, detected at registration and on
every reconcile pass, overridable by an operator, shown in the admin and portal."""

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django.utils import timezone

from cloud.models import Host, VirtualMachine
from cloud.services.hosts import register_host
from tenants.models import AuditEvent
from tests.foundation.factories import team_world
from tests.foundation.test_project import manage
from tests.hypervisor.conftest import TEST_DATA_DIR
from workers.drivers.hypervisor import Hypervisor
from workers.jobs.adapters import domain_spec
from workers.jobs.reconcile import reconcile_host

NO_FLAG = "no vmx/svm flag in the host CPU"
TEST_DRIVER_REASON = f"{NO_FLAG}; libvirt reports no kvm domain type"
pytestmark = [pytest.mark.django_db, pytest.mark.libvirt]


def test_registration_stores_the_detection(settings):
    """Issue 13: a registered host records the detected type, its reason and when."""
    settings.STRATA_CPU_MODEL = "host-passthrough"
    before = timezone.now()
    host, created = register_host("h10-test", "test:///default")
    host.refresh_from_db()
    assert created
    assert (host.detected_virt_type, host.virt_type_reason) == ("qemu", TEST_DRIVER_REASON)
    assert host.virt_checked_at >= before
    assert host.virt_type_override == "" and host.virt_type == "qemu"
    assert host.cpu_mode == "host-passthrough"


def test_registration_with_a_type_is_an_override_kept_on_refresh():
    """Issue 13: an operator's type wins over the detection and survives re-registration."""
    register_host("h10-forced", "test:///default", virt_type="kvm")
    host, created = register_host("h10-forced", "test:///default")
    host.refresh_from_db()
    assert not created
    assert host.detected_virt_type == "qemu" and host.virt_type_override == "kvm"
    assert host.virt_type == "kvm"


def test_registering_this_machine_chooses_tcg_and_says_why():
    """Issue 13: this machine's qemu:///system has /dev/kvm but no vmx/svm: qemu."""
    host, _ = register_host("h10-local", "qemu:///system")
    host.refresh_from_db()
    with open("/proc/cpuinfo", encoding="ascii") as cpuinfo:
        has_flag = any(f in cpuinfo.read().split() for f in ("vmx", "svm"))
    if has_flag:
        pytest.skip("this CPU has vmx/svm; the choice depends on /dev/kvm")
    assert host.detected_virt_type == "qemu" and host.virt_type == "qemu"
    assert host.virt_type_reason.startswith(NO_FLAG)


def test_a_reconcile_pass_updates_the_detection_and_audits_a_change():
    """Issue 13: a stale detection is corrected on the next pass, audited once."""
    host, _ = register_host("h10-reconciled", "test:///default")
    Host.objects.filter(pk=host.pk).update(
        detected_virt_type="kvm", virt_type_reason="KVM usable", virt_checked_at=None
    )
    with Hypervisor("test:///default", TEST_DATA_DIR) as hv:
        hv.storage.ensure_pools()
        counts = reconcile_host(host.pk)
        host.refresh_from_db()
        assert counts["virt_changed"] == 1
        assert (host.detected_virt_type, host.virt_type_reason) == ("qemu", TEST_DRIVER_REASON)
        assert host.virt_checked_at is not None
        event = AuditEvent.objects.get(action="host.virt_detected", target_id=str(host.pk))
        assert event.details == {
            "detected": "qemu",
            "reason": TEST_DRIVER_REASON,
            "effective_before": "kvm",
            "effective": "qemu",
        }
        checked = host.virt_checked_at
        # Nothing changed: the check time moves on, no new audit event.
        assert reconcile_host(host.pk)["virt_changed"] == 0
    host.refresh_from_db()
    assert host.virt_checked_at > checked
    assert AuditEvent.objects.filter(action="host.virt_detected").count() == 1


def test_an_override_wins_over_every_reconcile_pass():
    """Issue 13: the operator's override stays the effective type whatever is detected."""
    host, _ = register_host("h10-override", "test:///default")
    Host.objects.filter(pk=host.pk).update(virt_type_override="kvm")
    with Hypervisor("test:///default", TEST_DATA_DIR) as hv:
        hv.storage.ensure_pools()
        reconcile_host(host.pk)
    host.refresh_from_db()
    assert host.detected_virt_type == "qemu" and host.virt_type_override == "kvm"
    assert host.virt_type == "kvm"


def test_a_vm_gets_its_hosts_type_and_cpu_model(make_team):
    """Issue 13: a VM's domain uses the host's effective type and its CPU mode."""
    team, _ = make_team("alpha")
    vm = VirtualMachine.objects.get(environment=team_world(team, port=20122))
    Host.objects.filter(pk=vm.host_id).update(
        virt_type_override="kvm", detected_virt_type="qemu", cpu_mode="EPYC-v4"
    )
    vm.refresh_from_db()
    with Hypervisor("test:///default", TEST_DATA_DIR, virt_type="kvm") as hv:
        spec = domain_spec(vm, hv)
    assert (spec.virt_type, spec.cpu_mode) == ("kvm", "EPYC-v4")


@pytest.mark.parametrize("cpu_mode", ["", "Skylake\n", "a b", "<x/>", "x" * 65])
def test_a_hostile_cpu_mode_is_refused_naming_the_field(cpu_mode):
    host = Host(name="h10-bad", libvirt_uri="test:///default", cpus=1, memory_mb=512)
    host.cpu_mode = cpu_mode
    with pytest.raises(ValidationError) as error:
        host.full_clean()
    assert "cpu_mode" in error.value.message_dict


def test_the_admin_shows_the_detection_and_edits_the_override(admin_client):
    """Issue 13: detected type and reason read-only in the admin; the override editable."""
    host, _ = register_host("h10-admin", "test:///default")
    listing = admin_client.get(reverse("admin:cloud_host_changelist")).content.decode()
    assert "h10-admin" in listing and "host-passthrough" in listing
    url = reverse("admin:cloud_host_change", args=[host.pk])
    page = admin_client.get(url).content.decode()
    assert TEST_DRIVER_REASON in page
    assert 'name="virt_type_override"' in page and 'name="detected_virt_type"' not in page
    form = {
        "name": host.name,
        "libvirt_uri": host.libvirt_uri,
        "status": host.status,
        "cpus": host.cpus,
        "memory_mb": host.memory_mb,
        "disk_gb": host.disk_gb,
        "cpu_overcommit": host.cpu_overcommit,
        "ram_overcommit": host.ram_overcommit,
        "virt_type_override": "kvm",
        "cpu_mode": "Skylake-Client-IBRS",
    }
    assert admin_client.post(url, form).status_code == 302
    host.refresh_from_db()
    assert host.virt_type == "kvm" and host.cpu_mode == "Skylake-Client-IBRS"
    bad = admin_client.post(url, {**form, "cpu_mode": "Skylake; rm"})
    assert bad.status_code == 200 and "cpu_mode" in bad.context["adminform"].form.errors
    host.refresh_from_db()
    assert host.cpu_mode == "Skylake-Client-IBRS"


def test_the_dashboard_labels_each_host_with_its_type_and_reason(make_team, client):
    """Issue 13: the portal's host utilisation shows the type, the reason as its title."""
    team, user = make_team("alpha")
    register_host("h10-portal", "test:///default")
    client.force_login(user)
    html = client.get(reverse("portal:dashboard", args=[team.name])).content.decode()
    assert f'title="{TEST_DRIVER_REASON}"' in html and "QEMU TCG (emulated)" in html


@pytest.mark.django_db(transaction=True)
def test_an_existing_hosts_type_becomes_its_override():
    """Issue 13: migrating keeps an existing host's type (as its override)."""
    executor = MigrationExecutor(connection)
    executor.migrate([("cloud", "0006_deployment_targets")])
    old_host = executor.loader.project_state([("cloud", "0006_deployment_targets")]).apps
    old_host.get_model("cloud", "Host").objects.create(
        name="h10-old", libvirt_uri="qemu:///system", virt_type="kvm", cpus=2, memory_mb=1024
    )
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    host = Host.objects.get(name="h10-old")
    assert host.virt_type_override == "kvm" and host.virt_type == "kvm"
    assert host.detected_virt_type == "" and host.virt_type_reason == ""


@pytest.mark.parametrize("value", ["Skylake Client", "host-passthrough\n", "<x/>"])
def test_a_bad_cpu_model_setting_names_the_variable(tmp_path, value):
    """Issue 13: STRATA_CPU_MODEL is matched whole at start-up."""
    result = manage("check", env_overrides={"STRATA_CPU_MODEL": value}, tmp_path=tmp_path)
    assert result.returncode != 0 and "STRATA_CPU_MODEL must be" in result.stderr
