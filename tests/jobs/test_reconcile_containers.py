"""The reconciler against a VM's Docker engine: here a real sshd on loopback in
front of the host's dockerd stands in for the guest (the VM record points at it)."""

import uuid
from datetime import timedelta

import docker
import pytest
from django.utils import timezone

from cloud.models import Container, Orphan, Release, Service, VirtualMachine
from tenants.models import AuditEvent
from tests.foundation.factories import team_world
from tests.hypervisor.conftest import TEST_DATA_DIR, make_spec
from tests.remote.servers import KeyPair, Sshd, build_web_images, new_ed25519_key, remove_web_images
from workers.hypervisor import Hypervisor
from workers.keys import manager_keypair
from workers.reconcile import reconcile_host
from workers.remote import ServiceSpec, start_container
from workers.remote.services import LABEL_SERVICE_ID

pytestmark = [pytest.mark.django_db, pytest.mark.integration, pytest.mark.libvirt]


@pytest.fixture
def guest(tmp_path, make_team):
    """A running VM record whose sshd is a test sshd in front of the host's dockerd."""
    manager = manager_keypair()
    host_key = new_ed25519_key()
    sshd = Sshd(
        tmp_path / "sshd", host_key, KeyPair(manager.private_openssh, manager.public_openssh)
    )
    hv = Hypervisor("test:///default", TEST_DATA_DIR, virt_type="qemu")
    hv.ensure_storage()
    team, _ = make_team("alpha")
    env = team_world(team, port=20022)
    vm = VirtualMachine.objects.get(environment=env)
    VirtualMachine.objects.filter(pk=vm.pk).update(
        state="running", ssh_port=sshd.port, host_key_public=host_key.public_line
    )
    vm.refresh_from_db()
    hv.define(make_spec(name=vm.domain_name, uuid=str(vm.uuid), vm_id=str(vm.pk)))
    hv.start(str(vm.uuid))
    engine = docker.from_env()
    images = build_web_images(engine)
    yield vm, engine, images[0]
    for container in engine.containers.list(all=True, filters={"label": LABEL_SERVICE_ID}):
        container.remove(force=True)
    remove_web_images(engine, images)
    hv.close()
    sshd.stop()


def spec_for(service_id, vm, image):
    return ServiceSpec(
        name=f"svc{service_id}",
        image=image,
        service_id=str(service_id),
        environment_id=str(vm.environment_id),
        publish_address="127.0.0.1",
    )


def test_missing_containers_and_orphans(guest, settings):
    vm, engine, image = guest
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
    orphan = Orphan.objects.get(kind="container")
    assert orphan.name == f"{vm.uuid}/{stray}"

    Orphan.objects.update(first_seen_at=timezone.now() - timedelta(hours=2))
    assert reconcile_host(vm.host_id)["orphans_removed"] == 1
    ids = {c.id for c in engine.containers.list(all=True, filters={"label": LABEL_SERVICE_ID})}
    assert stray not in ids and kept in ids
    assert reconcile_host(vm.host_id)["containers_missing"] == 0  # missing is reported once
