"""The reconciler keeps each guest's HAProxy running: a real sshd on loopback in
front of the host's dockerd stands in for the guest, and its HAProxy runs
here as the guest would run it (from the directory sshd_guest sets)."""

import os
import signal
from pathlib import Path

import pytest

from bench.harness.guest_servers import free_loopback_port
from bench.harness.proxy_servers import get
from cloud.models import Job, Service, VirtualMachine
from tenants.models import AuditEvent
from workers.drivers.guest import HealthCheck, ServiceSpec, roll_out
from workers.jobs.adapters import connect, guest_proxy
from workers.jobs.reconcile import reconcile_host

pytestmark = [pytest.mark.django_db, pytest.mark.integration, pytest.mark.libvirt]


def idle(vm):
    """The fixture's world has an unfinished job on the VM, and the reconciler
    leaves a VM a job acts on to that job."""
    Job.objects.filter(vm=vm).update(state="succeeded")


def test_a_killed_proxy_is_restarted_and_audited(sshd_guest):
    vm, engine, image = sshd_guest
    idle(vm)
    service = Service.objects.get(environment=vm.environment)
    port = free_loopback_port()
    spec = ServiceSpec(
        name=service.name,
        image=image,
        service_id=str(service.pk),
        environment_id=str(vm.environment_id),
        ports={port: 8080},
        replicas=2,
        health=HealthCheck.http("/", 8080, interval=0.1, retries=30),
    )
    proxy = guest_proxy()
    assert proxy.publish_address == "127.0.0.1"  # the fixture's, never the guest's 0.0.0.0
    roll_out(connect(vm), spec, "v1", local_engine=engine, proxy=proxy)
    assert get(port)[1] == "release one\n"
    assert reconcile_host(vm.host_id)["proxies_restarted"] == 0

    master = int(Path(proxy.directory, "haproxy.pid").read_text().split()[0])
    os.kill(master, signal.SIGKILL)
    assert not proxy.running(connect(vm))

    assert reconcile_host(vm.host_id)["proxies_restarted"] == 1
    assert get(port)[1] == "release one\n"
    event = AuditEvent.objects.get(action="proxy.restarted")
    assert event.target_id == str(vm.pk) and event.team == vm.environment.team
    assert event.details == {"outcome": "restarted: it was not running"}
    assert sorted(proxy.api(connect(vm)).servers(f"{service.name}-{port}")) == ["v1-0", "v1-1"]
    # Running again, it is left alone and reported once.
    assert reconcile_host(vm.host_id)["proxies_restarted"] == 0
    assert AuditEvent.objects.filter(action="proxy.restarted").count() == 1


def test_a_vm_without_published_ports_gets_no_proxy(sshd_guest):
    vm, engine, image = sshd_guest
    idle(vm)
    service = Service.objects.get(environment=vm.environment)
    spec = ServiceSpec(
        name=service.name,
        image=image,
        service_id=str(service.pk),
        environment_id=str(vm.environment_id),
    )
    roll_out(connect(vm), spec, "v1", local_engine=engine, proxy=guest_proxy())
    assert reconcile_host(vm.host_id)["proxies_restarted"] == 0
    assert not guest_proxy().running(connect(vm))
    assert not Path(guest_proxy().config_path).exists()


def test_an_unreachable_guest_is_left_for_the_next_pass(sshd_guest, caplog):
    vm, _engine, _image = sshd_guest
    idle(vm)
    VirtualMachine.objects.filter(pk=vm.pk).update(ssh_port=free_loopback_port())
    assert reconcile_host(vm.host_id)["proxies_restarted"] == 0
    assert "cannot bring back the proxy" in caplog.text
    assert not AuditEvent.objects.filter(action="proxy.restarted").exists()
