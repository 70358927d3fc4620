import io

import pytest
from django.core.management import call_command

from cloud.models import Flavor, Host
from tenants.models import Membership, Team

pytestmark = pytest.mark.django_db


def test_bootstrap_twice_reuses_what_exists(settings):
    settings.STRATA_LIBVIRT_URI = "test:///default"
    settings.STRATA_HOST_NAME = "hv-test"
    settings.STRATA_ADMIN_PASSWORD = ""
    first = io.StringIO()
    call_command("bootstrap", stdout=first)
    assert "password" in first.getvalue()

    second = io.StringIO()
    call_command("bootstrap", stdout=second)
    assert "created, password" not in second.getvalue()
    assert "exists" in second.getvalue()

    host = Host.objects.get(name="hv-test")
    assert host.libvirt_uri == "test:///default" and host.cpus > 0 and host.memory_mb > 0
    team = Team.objects.get(name="default")
    assert Membership.objects.get(team=team).role == "admin"
    assert Flavor.objects.count() == 3 and Host.objects.count() == 1


def test_bootstrap_prints_only_the_queue_when_asked(settings, capsys):
    settings.STRATA_LIBVIRT_URI = "test:///default"
    settings.STRATA_HOST_NAME = "hv-q"
    out = io.StringIO()
    call_command("bootstrap", "--print-queue", stdout=out)
    assert out.getvalue().strip() == "host.hv-q"


def test_bootstrap_refuses_an_unreachable_hypervisor(settings):
    from django.core.management.base import CommandError

    settings.STRATA_LIBVIRT_URI = "qemu+unix:///system?socket=/nonexistent/libvirt.sock"
    settings.STRATA_HOST_NAME = "hv-gone"
    with pytest.raises(CommandError, match="cannot register"):
        call_command("bootstrap", stdout=io.StringIO())
    assert not Host.objects.filter(name="hv-gone").exists()
