"""Reach a guest's sshd through its loopback forward, trusting only the pinned key."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import time
from collections.abc import Iterator

import paramiko

from .errors import InvalidSpec, OperationTimeout
from .ports import LOOPBACK
from .spec import require_port

# slirp accepts the TCP connection long before sshd answers: a short banner
# timeout turns each such attempt into a quick retry instead of a long hang.
BANNER_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0
POLL_INTERVAL_SECONDS = 1.0


def _load_private_key(private_openssh: str) -> paramiko.PKey:
    try:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(private_openssh))
    except paramiko.SSHException as error:
        raise InvalidSpec("client_private_key", "must be an OpenSSH ed25519 key") from error


def _host_key(public_openssh: str) -> paramiko.PKey:
    try:
        key_type, key_base64 = public_openssh.split()[:2]
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(key_base64))
    except (ValueError, TypeError, binascii.Error, paramiko.SSHException) as error:
        raise InvalidSpec("host_public_key", "must be an OpenSSH public key") from error


@contextlib.contextmanager
def _quiet_paramiko() -> Iterator[None]:
    # Every refused or reset attempt logs a traceback at ERROR; while polling
    # those are expected and only the last one matters.
    logger = logging.getLogger("paramiko")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def connect_pinned(
    port: int,
    host_public_key: str,
    client_private_key: str,
    *,
    username: str = "root",
    host: str = LOOPBACK,
    timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> paramiko.SSHClient:
    """One SSH connection that fails unless the server shows ``host_public_key``."""
    require_port("port", port)
    client = paramiko.SSHClient()
    # No known_hosts files, no auto-accept: the pinned key is the only trusted one.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_host = host if port == 22 else f"[{host}]:{port}"
    pinned = _host_key(host_public_key)
    client.get_host_keys().add(key_host, pinned.get_name(), pinned)
    try:
        client.connect(
            host,
            port=port,
            username=username,
            pkey=_load_private_key(client_private_key),
            timeout=timeout,
            banner_timeout=min(BANNER_TIMEOUT_SECONDS, timeout),
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except BaseException:
        client.close()
        raise
    return client


def wait_for_ssh(
    port: int,
    host_public_key: str,
    client_private_key: str,
    *,
    timeout: float,
    username: str = "root",
    host: str = LOOPBACK,
) -> paramiko.SSHClient:
    """Poll until sshd accepts us with the pinned host key; return the connection.

    Raises OperationTimeout carrying the last error when ``timeout`` seconds pass.
    A wrong host key is retried too: until cloud-init has run, the guest may
    still present the image's own key.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    with _quiet_paramiko():
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OperationTimeout(
                    f"ssh to {host}:{port} not ready after {timeout:g} s", last_error
                )
            try:
                return connect_pinned(
                    port,
                    host_public_key,
                    client_private_key,
                    username=username,
                    host=host,
                    timeout=min(CONNECT_TIMEOUT_SECONDS, remaining),
                )
            except (OSError, EOFError, paramiko.SSHException) as error:
                last_error = error
            time.sleep(min(POLL_INTERVAL_SECONDS, max(0.0, deadline - time.monotonic())))
