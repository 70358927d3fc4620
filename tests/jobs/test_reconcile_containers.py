"""The reconciler against a VM's Docker engine: here a real sshd on loopback in
front of the host's dockerd stands in for the guest (the VM record points at it)."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from cloud.models import Container, Orphan, Release, Service
from tenants.models import AuditEvent
from workers.drivers.guest import ServiceSpec, start_container
from workers.drivers.guest.containers import LABEL_SERVICE_ID
from workers.jobs.reconcile import reconcile_host

pytestmark = [pytest.mark.django_db, pytest.mark.integration, pytest.mark.libvirt]


def spec_for(service_id, vm, image):
    return ServiceSpec(
        name=f"svc{service_id}",
        image=image,
        service_id=str(service_id),
        environment_id=str(vm.environment_id),
    )


def test_missing_containers_and_orphans(sshd_guest, settings):
    vm, engine, image = sshd_guest
    service = Service.objects.get(environment=vm.environment)
    release = Release.objects.get(service=service)
    kept = start_container(engine, spec_for(service.pk, vm, image), "v1")
    Container.objects.filter(vm=vm).update(engine_id=kept)  # the record of a live container
    gone = Container.objects.create(
        vm=vm,
        service=service,
        release=release,
        name="gone",
        engine_id=uuid.uuid4().hex,
        state="running",
    )
    stray = start_container(engine, spec_for(999999, vm, image), "v1")  # no such service

    settings.STRATA_ORPHAN_GRACE_SECONDS = 3600
    counts = reconcile_host(vm.host_id)
    gone.refresh_from_db()
    assert counts["containers_missing"] == 1 and gone.state == "missing"
    assert Container.objects.get(engine_id=kept).state == "running"
    assert AuditEvent.objects.filter(action="container.missing").count() == 1
    orphan = Orphan.objects.get(kind="container", name=f"{vm.uuid}/{stray}")

    Orphan.objects.filter(pk=orphan.pk).update(first_seen_at=timezone.now() - timedelta(hours=2))
    assert reconcile_host(vm.host_id)["orphans_removed"] == 1
    ids = {c.id for c in engine.containers.list(all=True, filters={"label": LABEL_SERVICE_ID})}
    assert stray not in ids and kept in ids
    assert reconcile_host(vm.host_id)["containers_missing"] == 0  # missing is reported once
