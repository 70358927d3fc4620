import pytest

from tenants.models import Membership, Role
from tenants.services import create_team


@pytest.fixture
def make_team(django_user_model):
    """Create a team (with its quota) whose one member has ``role``; returns (team, user)."""

    def make(name: str, role: str = Role.ADMIN, username: str | None = None):
        user = django_user_model.objects.create_user(username or f"{name}-{role}", password="pw")
        team = create_team(name, user)
        Membership.objects.filter(team=team, user=user).update(role=role)
        return team, user

    return make


@pytest.fixture(autouse=True)
def plain_http(settings):
    """The test client speaks plain HTTP; production redirects it to HTTPS.

    (scripts/test.sh also sets STRATA_HTTPS=false, for the live server, whose
    middleware reads the setting once at start.)"""
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(autouse=True)
def test_images_allowed(settings):
    """Every team may deploy the suite's own images (tests.remote.servers builds
    them as strata-test/...), as an operator's allow-list would admit busybox:*."""
    settings.STRATA_IMAGE_ALLOWLIST = ["strata-test/*"]


@pytest.fixture
def worker_factory(request):
    """Start real Celery worker processes on the test database.

    ``start(queue, include=[modules])`` returns the Popen; every worker is
    SIGKILLed with its pool at the end of the test.
    """
    from django.db import connection

    from bench.harness.celery_workers import database_url, kill_worker, start_worker

    if connection.settings_dict["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("worker tests share the database with another process: needs PostgreSQL")
    url = database_url(connection.settings_dict)
    procs = []

    def start(queue: str, include=(), **env):
        proc = start_worker(queue, f"{queue}-{len(procs)}", {"DATABASE_URL": url, **env}, include)
        procs.append(proc)
        return proc

    start.kill = kill_worker
    yield start
    for proc in procs:
        kill_worker(proc)


@pytest.fixture
def sshd_guest(tmp_path, make_team, settings, monkeypatch):
    """A running VM record whose "guest" is a real sshd on loopback in front of
    the host's dockerd, so container work runs for real without booting a VM.
    Its HAProxy runs here as the guest would run it, from a directory of its
    own and on loopback (settings, and the environment of workers started
    later). Yields (vm, host engine, web image tag); its domain lives on the
    test driver."""
    import docker

    from bench.harness.guest_servers import (
        KeyPair,
        Sshd,
        build_web_images,
        new_ed25519_key,
        remove_web_images,
    )
    from bench.harness.proxy_servers import guest_proxy_directory, stop_guest_proxy
    from cloud.models import VirtualMachine
    from tests.foundation.factories import team_world
    from tests.hypervisor.conftest import TEST_DATA_DIR, make_spec
    from workers.drivers.guest.containers import LABEL_ENVIRONMENT_ID
    from workers.drivers.hypervisor import Hypervisor
    from workers.jobs.keys import manager_keypair

    proxy_directory = guest_proxy_directory()
    for name, value in {
        "STRATA_GUEST_PROXY_DIR": proxy_directory,
        "STRATA_GUEST_PUBLISH_ADDRESS": "127.0.0.1",
    }.items():
        setattr(settings, name, value)
        monkeypatch.setenv(name, value)
    manager = manager_keypair()
    host_key = new_ed25519_key()
    sshd = Sshd(
        tmp_path / "sshd", host_key, KeyPair(manager.private_openssh, manager.public_openssh)
    )
    hv = Hypervisor("test:///default", TEST_DATA_DIR, virt_type="qemu")
    hv.storage.ensure_pools()
    team, _ = make_team("alpha")
    env = team_world(team, port=20022)
    vm = VirtualMachine.objects.get(environment=env)
    VirtualMachine.objects.filter(pk=vm.pk).update(
        state="running", ssh_port=sshd.port, host_key_public=host_key.public_line
    )
    vm.refresh_from_db()
    hv.guests.define(make_spec(name=vm.domain_name, uuid=str(vm.uuid), vm_id=str(vm.pk)))
    hv.guests.start(str(vm.uuid))
    engine = docker.from_env()
    images = build_web_images(engine)
    yield vm, engine, images[0]
    # Only this test's containers: other work may share the host's engine.
    ours = {"label": f"{LABEL_ENVIRONMENT_ID}={vm.environment_id}"}
    for container in engine.containers.list(all=True, filters=ours):
        container.remove(force=True)
    remove_web_images(engine, images)
    stop_guest_proxy(proxy_directory)
    hv.close()
    sshd.stop()
