import uuid

import pytest
import redis
from django.conf import settings

from cloud.models import Environment, Flavor, Host, Image, VirtualMachine
from tests.foundation.factories import SHA


@pytest.fixture
def catalogue():
    """One roomy host (with a queue unique to the test, purged after) and the defaults."""
    host = Host.objects.create(
        name=f"hv-{uuid.uuid4().hex[:8]}",
        libvirt_uri="test:///default",
        cpus=64,
        memory_mb=256 * 1024,
        cpu_overcommit=4.0,
    )
    Flavor.objects.create(name="small", vcpus=1, memory_mb=512, disk_gb=5)
    Image.objects.create(
        name="debian-12",
        sha256=SHA,
        path="/nonexistent.qcow2",
        virtual_size_bytes=3 << 30,
        size_bytes=1 << 28,
        source="built",
    )
    yield host
    # Jobs enqueued for this host's queue have no worker in these tests.
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(host.queue)


def dev_environment(team, host, *vm_names: str) -> Environment:
    """Team's dev environment with running VMs of the catalogue's flavor and image."""
    env = Environment.objects.create(team=team, name="dev", kind="dev")
    for name in vm_names:
        VirtualMachine.objects.create(
            environment=env,
            name=name,
            host=host,
            state="running",
            flavor=Flavor.objects.get(),
            image=Image.objects.get(),
        )
    return env
