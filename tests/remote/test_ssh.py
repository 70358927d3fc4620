"""SSH: pinned host keys, typed errors, quoting, timeouts, pooling."""

import os
import socket
import statistics
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.harness.guest_servers import free_loopback_port, new_ed25519_key
from workers.drivers.guest import (
    CommandFailed,
    CommandTimeout,
    ConnectionPool,
    Endpoint,
    HostKeyMismatch,
    SSHAuthFailed,
    SSHConnection,
    SSHUnreachable,
    wait_for_ssh,
)

pytestmark = pytest.mark.integration

HOSTILE = [
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "; touch /tmp/pwned",
    "a && touch /tmp/pwned",
    'it\'s "quoted"',
    "line one\nline two; touch /tmp/pwned",
    "| touch /tmp/pwned",
    "$HOME ${PATH} *",
    "-n",
]


def test_pinned_host_key_is_accepted(connection):
    assert connection.run(["echo", "hello"]).text == "hello\n"


def test_changed_host_key_is_refused(sshd, manager_key):
    other = new_ed25519_key().public_line
    connection = SSHConnection(sshd.endpoint(other), manager_key.pkey, connect_timeout=5)
    with pytest.raises(HostKeyMismatch):
        connection.run(["true"])


def test_unknown_host_key_type_is_refused(sshd, manager_key):
    # Pinning an ECDSA key where the server only has ed25519: never accepted.
    ecdsa = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    connection = SSHConnection(sshd.endpoint(ecdsa), manager_key.pkey, connect_timeout=5)
    with pytest.raises(HostKeyMismatch):
        connection.run(["true"])


def test_unauthorized_client_key_is_refused(sshd):
    connection = SSHConnection(sshd.endpoint(), new_ed25519_key().pkey, connect_timeout=5)
    with pytest.raises(SSHAuthFailed):
        connection.run(["true"])


def test_closed_port_is_unreachable_and_transient(manager_key, host_key):
    endpoint = Endpoint("127.0.0.1", free_loopback_port(), "root", host_key.public_line)
    with pytest.raises(SSHUnreachable) as caught:
        SSHConnection(endpoint, manager_key.pkey, connect_timeout=2).run(["true"])
    assert caught.value.transient


def test_wait_for_ssh_returns_once_sshd_answers(sshd, manager_key):
    connection = wait_for_ssh(sshd.endpoint(), manager_key.pkey, timeout=5)
    try:
        assert connection.run(["echo", "up"]).text == "up\n"
    finally:
        connection.close()


def test_wait_for_ssh_gives_up_on_a_silent_listener(manager_key, host_key):
    # Like QEMU's user networking before sshd starts: TCP accepted, no banner.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = Endpoint("127.0.0.1", silent.getsockname()[1], "root", host_key.public_line)
        started = time.monotonic()
        with pytest.raises(SSHUnreachable):
            wait_for_ssh(endpoint, manager_key.pkey, timeout=1.5, interval=0.2, connect_timeout=0.5)
    # It waited out its deadline, and then gave up (a bound a loaded machine meets).
    assert 1.4 < time.monotonic() - started < 60


def test_wait_for_ssh_does_not_retry_a_wrong_host_key(sshd, manager_key):
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch):
        wait_for_ssh(sshd.endpoint(new_ed25519_key().public_line), manager_key.pkey, timeout=300)
    # One handshake, not polling until the deadline.
    assert time.monotonic() - started < 60


def test_malformed_pinned_key_is_rejected_early():
    with pytest.raises(ValueError, match="host_key"):
        Endpoint("127.0.0.1", 22, "root", "ssh-ed25519 not-base64!")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_arguments_arrive_verbatim_and_run_nothing(connection, hostile):
    if os.path.exists("/tmp/pwned"):
        os.remove("/tmp/pwned")
    assert connection.run(["printf", "%s", hostile]).text == hostile
    assert not os.path.exists("/tmp/pwned")


def test_command_line_strings_are_refused(connection):
    with pytest.raises(TypeError):
        connection.run("echo hi")
    with pytest.raises(TypeError):
        connection.run(["echo", 1])


def test_failed_command_carries_exit_status_and_stderr_tail(connection):
    with pytest.raises(CommandFailed) as caught:
        connection.run(["sh", "-c", "echo first >&2; echo oops >&2; exit 3"])
    assert caught.value.exit_status == 3
    assert caught.value.stderr_tail.endswith("oops\n")
    unchecked = connection.run(["sh", "-c", "exit 4"], check=False)
    assert unchecked.exit_status == 4


def test_command_timeout_leaves_connection_usable(connection):
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        connection.run(["sleep", "300"], timeout=0.5)
    # Cut short, long before the command would have ended.
    assert time.monotonic() - started < 60
    assert connection.run(["echo", "still here"]).text == "still here\n"


def test_large_output_on_both_streams(connection):
    result = connection.run(["sh", "-c", "head -c 3000000 /dev/zero; head -c 200000 /dev/zero >&2"])
    assert len(result.stdout) == 3_000_000
    assert len(result.stderr) == 200_000


def test_concurrent_commands_share_one_connection(connection):
    outputs, errors = [], []

    def worker(index):
        try:
            outputs.append(connection.run(["echo", str(index)]).text)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(outputs) == sorted(f"{i}\n" for i in range(16))


def test_pool_reuses_and_reconnects_after_the_transport_died(sshd, manager_key):
    with ConnectionPool(manager_key.pkey, connect_timeout=5) as pool:
        first = pool.get(sshd.endpoint())
        assert pool.get(sshd.endpoint()) is first
        transport = first.transport()
        engine = first.docker()
        assert engine.ping()
        transport.close()  # the link drops
        again = pool.get(sshd.endpoint())
        assert again is first and again.transport() is not transport
        assert again.run(["echo", "back"]).text == "back\n"
        assert again.docker() is not engine and again.docker().ping()


def test_pool_keys_on_the_pinned_host_key(sshd, manager_key):
    with ConnectionPool(manager_key.pkey, connect_timeout=5) as pool:
        pool.get(sshd.endpoint())
        with pytest.raises(HostKeyMismatch):
            pool.get(sshd.endpoint(new_ed25519_key().public_line))


def test_per_command_overhead_on_a_reused_connection(connection):
    connection.run(["true"])
    samples = []
    for _ in range(30):
        started = time.perf_counter()
        connection.run(["true"])
        samples.append(time.perf_counter() - started)
    median_ms = statistics.median(samples) * 1000
    print(f"per-command overhead: median {median_ms:.1f} ms")
    # Far below a new connection's handshake (80-300 ms), even on a loaded machine.
    assert median_ms < 150


def test_docker_engine_through_the_ssh_connection(connection, local_engine):
    engine = connection.docker()
    assert engine is connection.docker()  # one client per connection
    assert engine.info()["ID"] == local_engine.info()["ID"]
