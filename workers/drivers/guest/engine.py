"""The docker SDK driving a target's engine through our own SSH connection.

The SDK's ``ssh://`` transport reads ``~/.ssh`` and picks its own host key
policy, so instead each HTTP connection of the SDK is a paramiko exec channel
running ``docker system dial-stdio`` on the target (what the docker CLI and
docker-py's SSHHTTPAdapter do), opened on the pinned, pooled connection.
No Docker TCP listener is needed in the guest.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING

import docker
import urllib3
import urllib3.connection
import urllib3.connectionpool
from docker.transport.basehttpadapter import BaseHTTPAdapter

if TYPE_CHECKING:
    from .ssh import SSHConnection

# Debian 12's docker.io (20.10) speaks 1.41; newer engines accept it too.
ENGINE_API_VERSION = "1.41"
# docker-py picks the raw socket of attach/exec streams by this URL prefix.
_BASE_URL = "http+docker://ssh"
DIAL_STDIO = ["docker", "system", "dial-stdio"]


class _DialStdioConnection(urllib3.connection.HTTPConnection):
    def __init__(self, ssh: SSHConnection, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._ssh = ssh

    def connect(self):
        self.sock = self._ssh.open_exec_channel(DIAL_STDIO, timeout=self.timeout)


class _DialStdioPool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(self, ssh: SSHConnection, timeout: float, maxsize: int):
        super().__init__("localhost", timeout=timeout, maxsize=maxsize)
        self._ssh = ssh
        self._channel_timeout = timeout

    def _new_conn(self):
        return _DialStdioConnection(self._ssh, self._channel_timeout)

    # urllib3's own _get_conn probes idle connections with select() on their
    # fileno, and each paramiko channel fileno() is a new pipe pair; like
    # docker-py we hand idle channels back as they are (a dead one fails the
    # request, which the caller sees as a connection error).
    def _get_conn(self, timeout=None):
        try:
            connection = self.pool.get(block=self.block, timeout=timeout)
        except AttributeError as exc:  # pool closed
            raise urllib3.exceptions.ClosedPoolError(self, "Pool is closed.") from exc
        except queue.Empty:
            if self.block:
                raise urllib3.exceptions.EmptyPoolError(self, "Pool is full.") from None
            connection = None
        return connection or self._new_conn()


class DialStdioAdapter(BaseHTTPAdapter):
    """A requests adapter whose connections are ``dial-stdio`` channels."""

    def __init__(self, ssh: SSHConnection, timeout: float, max_channels: int = 8):
        super().__init__()
        self._pool = _DialStdioPool(ssh, timeout, max_channels)

    def get_connection(self, url, proxies=None):
        return self._pool

    def close(self):
        super().close()
        self._pool.close()


class _EngineClient(docker.DockerClient):
    # DockerClient's own __init__ would build an APIClient; it only holds .api.
    def __init__(self, api: docker.APIClient):
        self.api = api


def engine_client(ssh: SSHConnection, timeout: float | None = None) -> docker.DockerClient:
    """A DockerClient for the engine behind ``ssh``; no request is made yet."""
    timeout = ssh.command_timeout if timeout is None else timeout
    # A fixed version skips the SDK's version probe; "tcp://localhost:2375" is a
    # placeholder that is unmounted right away.
    api = docker.APIClient(
        base_url="tcp://localhost:2375", version=ENGINE_API_VERSION, timeout=timeout
    )
    api._unmount("http://", "https://")
    adapter = DialStdioAdapter(ssh, timeout)
    api.mount(_BASE_URL, adapter)
    api._custom_adapter = adapter
    api.base_url = _BASE_URL
    return _EngineClient(api)
