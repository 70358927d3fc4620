"""SSH to a target machine with a pinned host key, and a pool of connections.

Every remote command is an argument list joined with ``shlex.join``, so no
string ever reaches the remote shell unquoted.  Host keys are pinned: the key
comes from provisioning and nothing is read from ``~/.ssh``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import select
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paramiko

from .errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    SSHAuthFailed,
    SSHUnreachable,
)

if TYPE_CHECKING:
    import docker

logger = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 2000
_READ_CHUNK = 65536


@dataclass(frozen=True)
class Endpoint:
    """Where a target's sshd listens, and the host key it must present.

    ``host_key`` is an OpenSSH public key line (``ssh-ed25519 AAAA... [comment]``).
    """

    host: str
    port: int
    user: str
    host_key: str

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port")
        parse_public_key(self.host_key)

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def parse_public_key(line: str) -> paramiko.PKey:
    """An OpenSSH public key line as a paramiko key; ValueError when malformed."""
    fields = line.split()
    if len(fields) < 2:
        raise ValueError("host_key: expected '<type> <base64>'")
    try:
        return paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))
    except (binascii.Error, paramiko.SSHException, ValueError) as exc:
        raise ValueError(f"host_key: not a valid {fields[0]} key: {exc}") from exc


def load_private_key(pem: str, passphrase: str | None = None) -> paramiko.PKey:
    """The manager's private key from its OpenSSH/PEM text (ed25519, ECDSA or RSA)."""
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(pem), password=passphrase)
        except paramiko.SSHException:
            continue
    raise ValueError("private key not readable as ed25519, ECDSA or RSA")


class SSHConnection:
    """One authenticated SSH connection to an endpoint; reconnects when it died.

    Thread-safe: channels are opened concurrently on the one transport.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        private_key: paramiko.PKey,
        *,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
    ):
        self.endpoint = endpoint
        self._private_key = private_key
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._client: paramiko.SSHClient | None = None
        self._engine = None
        self._engine_transport: paramiko.Transport | None = None
        self._lock = threading.Lock()

    # -- connection -----------------------------------------------------

    @property
    def is_alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def transport(self) -> paramiko.Transport:
        """The live transport, connecting (again) first when needed."""
        with self._lock:
            if not self.is_alive:
                self._reconnect_locked()
            return self._client.get_transport()

    def _reconnect_locked(self) -> None:
        self._close_locked()
        client = paramiko.SSHClient()
        ep = self.endpoint
        known_name = ep.host if ep.port == 22 else f"[{ep.host}]:{ep.port}"
        pinned = parse_public_key(ep.host_key)
        client.get_host_keys().add(known_name, pinned.get_name(), pinned)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = self._open_socket()
        try:
            client.connect(
                ep.host,
                port=ep.port,
                username=ep.user,
                pkey=self._private_key,
                sock=sock,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(
                f"{ep}: host key {exc.key.get_fingerprint().hex()} is not the pinned one"
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SSHAuthFailed(f"{ep}: {exc}") from None
        except paramiko.SSHException as exc:
            client.close()
            # RejectPolicy raises a bare SSHException when the server offers
            # only key types we hold no pinned key for.
            if "not found in known_hosts" in str(exc):
                raise HostKeyMismatch(f"{ep}: server's host key is unknown") from None
            raise SSHUnreachable(f"{ep}: {exc}") from exc
        except (OSError, EOFError) as exc:
            client.close()
            raise SSHUnreachable(f"{ep}: {exc}") from exc
        self._client = client
        logger.debug("ssh connected to %s", ep)

    def _open_socket(self) -> socket.socket:
        try:
            sock = socket.create_connection(
                (self.endpoint.host, self.endpoint.port), timeout=self.connect_timeout
            )
        except OSError as exc:
            raise SSHUnreachable(f"{self.endpoint}: {exc}") from exc
        # Commands and Docker API calls are small request/response exchanges:
        # send each packet at once rather than coalescing under Nagle.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- commands -------------------------------------------------------

    def open_exec_channel(
        self, argv: Sequence[str], timeout: float | None = None
    ) -> paramiko.Channel:
        """A channel running ``argv`` remotely, for callers that stream its stdio."""
        argv = _checked_argv(argv)
        try:
            channel = self.transport().open_session(timeout=self.connect_timeout)
            channel.settimeout(timeout)
            channel.exec_command(shlex.join(argv))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHUnreachable(f"{self.endpoint}: {exc}") from exc
        return channel

    def run(
        self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True
    ) -> CommandResult:
        """Run ``argv`` remotely and collect its output.

        Raises CommandTimeout after ``timeout`` seconds (the connection's default
        when None) and CommandFailed on a non-zero exit when ``check``.  A timed
        out command's channel is closed, but without a pty sshd does not kill
        the process: commands that may hang run under ``timeout(1)`` remotely.
        """
        argv = _checked_argv(argv)
        timeout = self.command_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        channel = self.open_exec_channel(argv, timeout)
        stdout, stderr = [], []
        try:
            while True:
                while channel.recv_ready():
                    stdout.append(channel.recv(_READ_CHUNK))
                while channel.recv_stderr_ready():
                    stderr.append(channel.recv_stderr(_READ_CHUNK))
                if channel.exit_status_ready() and channel.eof_received:
                    if not (channel.recv_ready() or channel.recv_stderr_ready()):
                        break
                    continue
                if channel.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(argv, timeout)
                # The channel's fileno is readable on stdout or stderr data and
                # on EOF or close.
                select.select([channel], [], [], remaining)
            exit_status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        finally:
            channel.close()
        result = CommandResult(argv, exit_status, b"".join(stdout), b"".join(stderr))
        if check and exit_status != 0:
            tail = result.stderr.decode(errors="replace")[-STDERR_TAIL_CHARS:]
            raise CommandFailed(argv, exit_status, tail)
        return result

    # -- docker ---------------------------------------------------------

    def docker(self) -> docker.DockerClient:
        """The DockerClient of this connection's remote engine (one per connection)."""
        from .engine import engine_client  # engine imports this module

        transport = self.transport()
        with self._lock:
            # A reconnect means a new transport: the old client's channels are dead.
            if self._engine is None or self._engine_transport is not transport:
                if self._engine is not None:
                    self._engine.close()
                self._engine = engine_client(self)
                self._engine_transport = transport
            return self._engine


def wait_for_ssh(
    endpoint: Endpoint,
    private_key: paramiko.PKey,
    *,
    timeout: float,
    interval: float = 1.0,
    connect_timeout: float = 5.0,
) -> SSHConnection:
    """A connection to a machine that is still booting, once its sshd answers.

    Retries only SSHUnreachable (QEMU's user networking accepts TCP before
    sshd listens, so a silent banner counts as not up yet); a wrong host key
    or a refused client key raise at once.  Raises SSHUnreachable at the end.
    """
    deadline = time.monotonic() + timeout
    connection = SSHConnection(endpoint, private_key, connect_timeout=connect_timeout)
    # paramiko logs a traceback for every reset banner; while a guest boots
    # those are expected and only the last failure matters.
    paramiko_log = logging.getLogger("paramiko")
    level = paramiko_log.level
    paramiko_log.setLevel(logging.CRITICAL)
    try:
        while True:
            try:
                connection.transport()
                return connection
            except SSHUnreachable:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                time.sleep(min(interval, remaining))
    finally:
        paramiko_log.setLevel(level)


def _checked_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str) or not argv:
        raise TypeError("argv must be a non-empty list of strings, not a command line")
    if not all(isinstance(arg, str) for arg in argv):
        raise TypeError("every argument must be a str")
    return list(argv)


class ConnectionPool:
    """Connections keyed by endpoint (which includes the pinned host key).

    The steps of a job share one connection per endpoint; a connection whose
    transport died reconnects on its next use.
    """

    def __init__(
        self,
        private_key: paramiko.PKey,
        *,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
    ):
        self._private_key = private_key
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._connections: dict[Endpoint, SSHConnection] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: Endpoint) -> SSHConnection:
        """The endpoint's connection, connected (raises the connect errors)."""
        with self._lock:
            connection = self._connections.get(endpoint)
            if connection is None:
                connection = SSHConnection(
                    endpoint,
                    self._private_key,
                    connect_timeout=self._connect_timeout,
                    command_timeout=self._command_timeout,
                )
                self._connections[endpoint] = connection
        # Connect outside the pool lock: one slow target must not stall others.
        connection.transport()
        return connection

    def close(self) -> None:
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            connection.close()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
