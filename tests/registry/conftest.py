"""A real registry (Debian's docker-registry) on a free loopback port, with
Strata's token auth pointing at the live test server, and the host's dockerd
with a Docker CLI config of the test's own (so no login leaks out)."""

import contextlib
import dataclasses
import io
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import time

import pytest

from cloud.models import ExternalRegistry
from cloud.services.registry_tokens import registry_config
from tenants.models import ApiToken
from workers.drivers.guest.containers import LABEL_ENVIRONMENT_ID
from workers.drivers.registry import RegistryDown, check_health, write_config

REGISTRY_BINARY = "docker-registry"
START_SECONDS = 20


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def registry_settings(settings, tmp_path):
    """This test's own registry addresses, storage and signing key."""
    settings.STRATA_REGISTRY_ADDR = f"127.0.0.1:{free_loopback_port()}"
    settings.STRATA_REGISTRY_DIR = tmp_path / "registry-storage"
    settings.STRATA_REGISTRY_AUTH_DIR = tmp_path / "registry-auth"
    return settings


@contextlib.contextmanager
def running_registry(tmp_path):
    """The registry, configured from the settings as they are now, until the block ends."""
    if shutil.which(REGISTRY_BINARY) is None:
        pytest.fail(f"{REGISTRY_BINARY} is not installed (scripts/install-system.sh installs it)")
    config = registry_config()
    path = write_config(config, tmp_path / "registry.yml")
    log = open(tmp_path / "registry.log", "wb")  # closed once the process is gone
    proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(path)], stdout=log, stderr=log)
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            check_health(config.addr, config.realm, config.service)
            break
        except RegistryDown:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail((tmp_path / "registry.log").read_text()[-2000:])
            time.sleep(0.1)
    try:
        yield config.addr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def registry(registry_settings, live_server, tmp_path):
    """The running registry's address; it trusts tokens from the live server."""
    registry_settings.STRATA_REGISTRY_REALM = f"{live_server.url}/api/v1/registry/token"
    registry_settings.STRATA_REGISTRY_NOTIFY_URL = f"{live_server.url}/api/v1/registry/events"
    with running_registry(tmp_path) as addr:
        yield addr


@pytest.fixture
def api_key(make_team):
    """``api_key(team, role)`` makes a member of ``team`` (created if new) with
    ``role`` and returns a fresh API token's key."""
    from django.contrib.auth import get_user_model

    from tenants.models import Membership, Team

    def make(team_name: str, role: str) -> str:
        team = Team.objects.filter(name=team_name).first()
        if team is None:
            team, user = make_team(team_name, role)
        else:
            username = f"{team_name}-{role}-{secrets.token_hex(3)}"
            user = get_user_model().objects.create_user(username)
            Membership.objects.create(team=team, user=user, role=role)
        return ApiToken.issue(user, "registry")[1]

    return make


class DockerCli:
    """The docker command with a config directory of its own."""

    def __init__(self, config_dir):
        self.config_dir = config_dir

    def run(self, *args, stdin: str | None = None, check: bool = True):
        done = subprocess.run(
            ["docker", "--config", str(self.config_dir), *args],
            input=stdin, capture_output=True, text=True, timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {done.stderr}")
        return done

    def login(self, addr: str, key: str, check: bool = True):
        return self.run("login", addr, "-u", "token", "--password-stdin", stdin=key, check=check)


@pytest.fixture
def docker_cli(tmp_path):
    """A factory of Docker CLIs, each logged in as nobody until it logs in."""
    made = []

    def make() -> DockerCli:
        cli = DockerCli(tmp_path / f"docker-config-{len(made)}")
        os.makedirs(cli.config_dir)
        made.append(cli)
        return cli

    return make


@pytest.fixture
def local_image():
    """A one-layer image made here (no network): ``local_image(reference)`` tags
    it in the host's engine; every image made is removed at the end."""
    image_ids = []

    def make(reference: str) -> str:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            content = secrets.token_bytes(4096)
            info = tarfile.TarInfo("payload")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        imported = subprocess.run(
            ["docker", "import", "-", reference], input=buffer.getvalue(),
            capture_output=True, check=True, timeout=60,
        )
        image_ids.append(imported.stdout.decode().strip())
        return reference

    yield make
    # By id: a pull by digest leaves the same image under a name with no tag.
    if image_ids:
        subprocess.run(["docker", "rmi", "--force", *image_ids], capture_output=True, timeout=60)


@dataclasses.dataclass(frozen=True)
class BasicAuthRegistry:
    addr: str
    username: str
    password: str


@contextlib.contextmanager
def running_basic_auth_registry(directory, username: str, password: str):
    """Debian's docker-registry as an outside registry stands: htpasswd (Basic)
    auth, its own storage, plain HTTP on loopback (which Docker's engine
    treats as an insecure registry, so no certificate is needed)."""
    import bcrypt
    import requests

    if shutil.which(REGISTRY_BINARY) is None:
        pytest.fail(f"{REGISTRY_BINARY} is not installed (scripts/install-system.sh installs it)")
    os.makedirs(directory)
    addr = f"127.0.0.1:{free_loopback_port()}"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    (directory / "htpasswd").write_text(f"{username}:{hashed}\n")
    (directory / "registry.yml").write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {addr}\n"
        f"auth:\n  htpasswd:\n    realm: outside\n    path: {directory / 'htpasswd'}\n"
    )
    log = open(directory / "registry.log", "wb")  # closed once the process is gone
    proc = subprocess.Popen(
        [REGISTRY_BINARY, "serve", str(directory / "registry.yml")], stdout=log, stderr=log
    )
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            answer = requests.get(f"http://{addr}/v2/", timeout=1)
            if answer.headers.get("WWW-Authenticate", "").startswith("Basic "):
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail((directory / "registry.log").read_text()[-2000:])
        time.sleep(0.1)
    try:
        yield BasicAuthRegistry(addr, username, password)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def outside_registry(tmp_path):
    """A running registry with Basic auth standing in for ghcr.io and the like."""
    with running_basic_auth_registry(
        tmp_path / "outside-registry", "ci", f"pw-{secrets.token_hex(8)}"
    ) as registry:
        yield registry


@pytest.fixture
def guest(sshd_guest, registry_settings):
    """The sshd_guest VM; at the end its containers and every image pulled
    from this test's registry (or from a registry the team registered) leave
    the host's engine."""
    vm, engine, base = sshd_guest
    yield vm, engine, base
    ours = {"label": f"{LABEL_ENVIRONMENT_ID}={vm.environment_id}"}
    for container in engine.containers.list(all=True, filters=ours):
        container.remove(force=True)
    hosts = [
        registry_settings.STRATA_REGISTRY_ADDR,
        *ExternalRegistry.objects.values_list("host", flat=True),
    ]
    prefixes = tuple(f"{host}/" for host in hosts)
    for image in engine.images.list():
        names = [*(image.attrs.get("RepoDigests") or []), *(image.attrs.get("RepoTags") or [])]
        if any(name.startswith(prefixes) for name in names):
            engine.images.remove(image.id, force=True)
