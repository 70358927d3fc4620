"""wait_for_ssh against an in-process paramiko server on a loopback port."""

from __future__ import annotations

import io
import socket
import threading
import time

import paramiko
import pytest

from workers.hypervisor import (
    HypervisorError,
    InvalidSpec,
    OperationTimeout,
    connect_pinned,
    find_free_loopback_ports,
    generate_ed25519_keypair,
    wait_for_ssh,
)

HOST_KEY = generate_ed25519_keypair()
CLIENT_KEY = generate_ed25519_keypair()


class AcceptClientKey(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        expected = CLIENT_KEY.public_openssh.split()[1]
        if username == "root" and key.get_base64() == expected:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED


class LoopbackSshServer:
    """Accepts connections on 127.0.0.1 and speaks SSH with ``host_key``."""

    def __init__(self, host_key_private: str, *, silent: bool = False) -> None:
        self.host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(host_key_private))
        # silent: accept TCP but never send a banner, like slirp before sshd listens.
        self.silent = silent
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(connection)
            if self.silent:
                continue
            transport = paramiko.Transport(connection)
            transport.add_server_key(self.host_key)
            self.transports.append(transport)
            try:
                transport.start_server(server=AcceptClientKey())
            except (paramiko.SSHException, EOFError):
                continue

    def close(self) -> None:
        # shutdown() wakes the accept() blocked in the thread; close() alone would not.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for transport in self.transports:
            transport.close()
        for connection in self.sockets:
            connection.close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    server = LoopbackSshServer(HOST_KEY.private_openssh)
    yield server
    server.close()


def test_connects_with_the_pinned_key(server):
    client = wait_for_ssh(
        server.port, HOST_KEY.public_openssh, CLIENT_KEY.private_openssh, timeout=10
    )
    try:
        assert client.get_transport().is_authenticated()
    finally:
        client.close()


def test_another_host_key_is_rejected(server):
    impostor = generate_ed25519_keypair()
    with pytest.raises(paramiko.BadHostKeyException):
        connect_pinned(server.port, impostor.public_openssh, CLIENT_KEY.private_openssh)


def test_timeout_carries_the_last_error(server):
    impostor = generate_ed25519_keypair()
    started = time.monotonic()
    with pytest.raises(OperationTimeout) as error:
        wait_for_ssh(server.port, impostor.public_openssh, CLIENT_KEY.private_openssh, timeout=2)
    assert time.monotonic() - started < 5
    assert isinstance(error.value.last_error, paramiko.BadHostKeyException)
    assert error.value.transient is True


def test_silent_listener_times_out_on_the_banner():
    silent = LoopbackSshServer(HOST_KEY.private_openssh, silent=True)
    try:
        started = time.monotonic()
        with pytest.raises(OperationTimeout) as error:
            wait_for_ssh(
                silent.port, HOST_KEY.public_openssh, CLIENT_KEY.private_openssh, timeout=3
            )
        assert time.monotonic() - started < 5
        assert isinstance(error.value.last_error, paramiko.SSHException)
    finally:
        silent.close()


def test_closed_port_times_out_with_connection_refused():
    # Bound but not listening: connections are refused and no one else can take the port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(OperationTimeout) as error:
            wait_for_ssh(port, HOST_KEY.public_openssh, CLIENT_KEY.private_openssh, timeout=1.5)
    # paramiko wraps the refusal in NoValidConnectionsError, an OSError.
    assert isinstance(error.value.last_error, OSError)
    assert "Unable to connect" in str(error.value)


@pytest.mark.parametrize(
    "port, host_key, client_key, field",
    [
        (0, HOST_KEY.public_openssh, CLIENT_KEY.private_openssh, "port"),
        (22, "ssh-ed25519 not-base64!", CLIENT_KEY.private_openssh, "host_public_key"),
        (22, HOST_KEY.public_openssh, "not a key", "client_private_key"),
    ],
)
def test_bad_arguments_are_refused(port, host_key, client_key, field):
    with pytest.raises(InvalidSpec) as error:
        connect_pinned(port, host_key, client_key)
    assert error.value.field == field


def test_free_ports_skip_allocated_and_bound_ones():
    first, second = find_free_loopback_ports(2)
    assert first not in find_free_loopback_ports(2, exclude={first})
    with socket.create_server(("127.0.0.1", first)):
        assert first not in find_free_loopback_ports(2)
        with pytest.raises(HypervisorError):
            find_free_loopback_ports(1, port_range=range(first, first + 1))
    assert second != first
