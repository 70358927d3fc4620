"""Fixtures for the remote driver tests: real sshd and dockerd (see servers.py)."""

from __future__ import annotations

import docker
import pytest

from bench.harness.guest_servers import (
    HOST_DOCKER_SOCKET,
    Dockerd,
    KeyPair,
    Sshd,
    build_web_images,
    missing_tools,
    new_ed25519_key,
    remove_web_images,
)
from bench.harness.proxy_servers import guest_proxy_directory, stop_guest_proxy
from workers.drivers.guest import GuestProxy, SSHConnection
from workers.drivers.guest.containers import LABEL_ENVIRONMENT_ID

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items):
    reason = missing_tools()
    if reason:
        for item in items:
            if "tests/remote" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def manager_key() -> KeyPair:
    return new_ed25519_key()


@pytest.fixture(scope="session")
def host_key() -> KeyPair:
    return new_ed25519_key()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory, host_key, manager_key):
    """sshd in front of the host's own dockerd."""
    server = Sshd(tmp_path_factory.mktemp("sshd"), host_key, manager_key)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def second_dockerd():
    daemon = Dockerd()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def sshd_second(tmp_path_factory, host_key, manager_key, second_dockerd):
    """sshd whose sessions talk to the second dockerd."""
    server = Sshd(
        tmp_path_factory.mktemp("sshd2"), host_key, manager_key, docker_host=second_dockerd.url
    )
    yield server
    server.stop()


@pytest.fixture
def connection(sshd, manager_key):
    conn = SSHConnection(sshd.endpoint(), manager_key.pkey, connect_timeout=5, command_timeout=30)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def local_engine():
    client = docker.DockerClient(base_url=f"unix://{HOST_DOCKER_SOCKET}", version="1.41")
    yield client
    client.close()


@pytest.fixture(scope="session")
def web_images(local_engine):
    """Tags of two busybox httpd images on the host engine; v2 = v1 + one small layer."""
    tags = build_web_images(local_engine)
    yield tags
    remove_web_images(local_engine, tags)


# The environment label of every service these tests roll out.  A real Strata's
# environment ids are numbers, so this never matches another installation's.
TEST_ENVIRONMENT_ID = "env-1"


def remove_test_containers(engine):
    ours = {"label": f"{LABEL_ENVIRONMENT_ID}={TEST_ENVIRONMENT_ID}"}
    for container in engine.containers.list(all=True, filters=ours):
        container.remove(force=True)


@pytest.fixture
def clean_host_engine(local_engine):
    """Removes the containers these tests roll out on the host engine, even on failure.

    Only theirs: a `make run` or another suite may share the engine."""
    remove_test_containers(local_engine)
    yield local_engine
    remove_test_containers(local_engine)


@pytest.fixture
def guest_proxy():
    """Where the "guest's" HAProxy lives for one test: its own directory,
    published ports on loopback; stopped and removed afterwards."""
    directory = guest_proxy_directory()
    yield GuestProxy(directory, publish_address="127.0.0.1")
    stop_guest_proxy(directory)
