"""The console's test world: a team with every role, running VMs on dev and
prod, another team's VM; and, for the end-to-end tests, a real guest under
qemu:///system whose serial console runs a shell, with a real relay."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
import uvicorn
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import connections

from cloud.models import Environment, Flavor, Image, VirtualMachine
from tenants.models import Membership, Role
from tests.console.initramfs import build_initramfs
from tests.services.conftest import catalogue  # noqa: F401 - fixture
from workers.console.relay import ConsoleRelay
from workers.drivers.hypervisor import find_free_loopback_ports

ORIGIN = "http://testserver"
GUEST_DIR = Path("/var/lib/strata-test/console")
IMAGE_DATA_DIR = Path(os.environ.get("STRATA_E2E_IMAGE_DATA_DIR", "/var/lib/strata"))
SYSTEM_URI = "qemu:///system"


def running_vm(team, host, kind: str, name: str, vm_uuid: uuid.UUID | None = None):
    env, _ = Environment.objects.get_or_create(team=team, name=f"{kind}-env", kind=kind)
    return VirtualMachine.objects.create(
        uuid=vm_uuid or uuid.uuid4(),
        environment=env,
        name=name,
        host=host,
        state="running",
        flavor=Flavor.objects.get(),
        image=Image.objects.get(),
    )


@pytest.fixture
def console_world(make_team, django_user_model, catalogue):  # noqa: F811 - the imported fixture
    team, admin = make_team("alpha", Role.ADMIN, username="alice")
    developer = django_user_model.objects.create_user("dave", password="pw")
    viewer = django_user_model.objects.create_user("vera", password="pw")
    Membership.objects.create(team=team, user=developer, role=Role.DEVELOPER)
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    other_team, outsider = make_team("beta", Role.ADMIN, username="olga")
    return {
        "host": catalogue,
        "team": team,
        "admin": admin,
        "developer": developer,
        "viewer": viewer,
        "outsider": outsider,
        "other_team": other_team,
        "dev_vm": running_vm(team, catalogue, "dev", "web-1"),
        "prod_vm": running_vm(team, catalogue, "prod", "web-1"),
        "other_vm": running_vm(other_team, catalogue, "dev", "secret-1"),
    }


@dataclass
class ConsoleGuest:
    domain_name: str
    uuid: uuid.UUID

    def _act(self, action: str) -> None:
        connection = libvirt.open(SYSTEM_URI)
        try:
            domain = connection.lookupByName(self.domain_name)
            if domain.isActive():
                getattr(domain, action)()
        except libvirt.libvirtError:
            pass  # already gone
        finally:
            connection.close()

    def destroy(self) -> None:
        self._act("destroy")

    def suspend(self) -> None:
        self._act("suspend")

    def resume(self) -> None:
        self._act("resume")


def _guest_files() -> tuple[Path, Path]:
    """The guest image's kernel (built once and cached, as the e2e tests do) and
    a busybox initramfs, where QEMU's user can read them."""
    from workers.drivers.images import build_debian_image

    GUEST_DIR.mkdir(parents=True, exist_ok=True)
    GUEST_DIR.chmod(0o755)
    kernel = GUEST_DIR / "vmlinuz"
    if not kernel.exists():
        shutil.copyfile(build_debian_image(IMAGE_DATA_DIR).kernel_path, kernel)
    initrd = build_initramfs(GUEST_DIR / "initrd.gz")
    for path in (kernel, initrd):
        path.chmod(0o644)
    return kernel, initrd


def _guest_xml(name: str, vm_uuid: uuid.UUID, kernel: Path, initrd: Path) -> str:
    # No disk, no network: a kernel, a shell and the pty serial port Strata's VMs have.
    return f"""<domain type='qemu'>
  <name>{name}</name><uuid>{vm_uuid}</uuid>
  <memory unit='MiB'>128</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline></os>
  <on_reboot>destroy</on_reboot>
  <devices><serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console></devices>
</domain>"""


@pytest.fixture
def console_guest():
    """A transient domain named like a Strata VM, its serial console a shell."""
    kernel, initrd = _guest_files()
    vm_uuid = uuid.uuid4()
    guest = ConsoleGuest(f"strata-{vm_uuid}", vm_uuid)
    connection = libvirt.open(SYSTEM_URI)
    try:
        connection.createXML(_guest_xml(guest.domain_name, vm_uuid, kernel, initrd), 0)
    finally:
        connection.close()
    yield guest
    guest.destroy()


class RelayThread:
    """A host's relay on its own event loop, as its own process would run it."""

    def __init__(self, make_relay: Callable[[RedisChannelLayer], object]) -> None:
        self.loop = asyncio.new_event_loop()
        self.relay = make_relay(
            RedisChannelLayer(hosts=settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"])
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop = asyncio.Event()
        self.loop.call_soon(self.started.set)
        self.loop.run_until_complete(self.relay.run(self.stop))

    def start(self) -> RelayThread:
        self.thread.start()
        self.started.wait(5)
        return self

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.fixture
def relay_for(request):
    """Start a host's console relay; stopped after the test."""

    def start(host_name: str, **relay_options) -> RelayThread:
        relay = RelayThread(
            lambda layer: ConsoleRelay(
                layer, host_name, lambda: libvirt.open(SYSTEM_URI), **relay_options
            )
        ).start()
        request.addfinalizer(relay.close)
        return relay

    return start


@pytest.fixture
def relay_process(request):
    """``manage.py console_relay HOST`` as `make run` starts it, on the test
    database; ``start(host)`` returns once both of its relays listen."""
    from django.db import connection

    from bench.harness.celery_workers import REPO, database_url

    def start(host_name: str) -> subprocess.Popen:
        log = open(Path(tempfile.mkdtemp()) / "relay.log", "w+b")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [sys.executable, "manage.py", "console_relay", host_name],
            cwd=REPO,
            env={**os.environ, "DATABASE_URL": database_url(connection.settings_dict)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def stop() -> None:
            process.terminate()
            process.wait(15)
            log.close()

        request.addfinalizer(stop)
        deadline = time.monotonic() + 30
        while b"shell relay listening" not in Path(log.name).read_bytes():
            assert process.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.1)
        return process

    return start


class AsgiServer:
    """cloud.asgi served by uvicorn on a free loopback port, as `make run` serves it."""

    def __init__(self, app="cloud.asgi:application") -> None:
        port = find_free_loopback_ports(1)[0]
        self.origin = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws="websockets",
            ws_max_size=1024 * 1024,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> AsgiServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def asgi_server(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
    # A fresh channel layer per server: a layer remembers the event loop it
    # received on, and each server runs its own loop.
    channel_layers.backends.clear()
    server = AsgiServer().start()
    yield server
    server.stop()
    channel_layers.backends.clear()
    # Consumers' queries ran on asgiref's one shared sync thread, which keeps its
    # connection open; the test database can be dropped only once it is closed.
    asyncio.run(sync_to_async(connections.close_all)())
