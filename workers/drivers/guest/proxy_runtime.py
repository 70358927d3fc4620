"""The service proxy at run time: HAProxy's runtime API and master CLI.

Replicas change without a reload through the runtime API socket (``level
admin``): add a server, wait until its health check passes, drain the old
one, remove it. A new configuration (proxy_config) is loaded by a hitless
reload through the master's CLI. Every name is checked before it goes into a
command, so no user string can add one. No Django.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import RemoteError
from .proxy_config import (
    SERVER_STATES,
    HealthCheck,
    ProxyConfigError,
    Replica,
    Service,
    require_name,
)

# HAProxy's default server weight, which every rendered server has.
REPLICA_WEIGHT = 1


class RuntimeCommandFailed(RemoteError):
    """HAProxy's runtime API answered a command with an error."""


class ProxyTimeout(RemoteError):
    """A bounded wait on the proxy (health, drain) ran out."""

    transient = True


@dataclass(frozen=True)
class ServerStatus:
    """A replica as HAProxy sees it: ``status`` is UP, DOWN, MAINT, DRAIN or
    a transition such as ``UP 1/2``; ``sessions`` counts its open requests."""

    name: str
    status: str
    sessions: int
    weight: int

    @property
    def up(self) -> bool:
        return self.status == "UP"


def unix_socket_transport(path: str, timeout: float = 5.0) -> Callable[[str], str]:
    """Send one command to a local runtime API socket and return its answer."""

    def send(command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(path)
            connection.sendall(command.encode() + b"\n")
            # The master's CLI answers only once the client has finished.
            connection.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    return send


class RuntimeAPI:
    """HAProxy's runtime API over ``send`` (a local socket, or later one
    reached through the guest's SSH connection)."""

    def __init__(self, send: Callable[[str], str]) -> None:
        self._send = send

    def _command(self, *words: str, success: Sequence[str] = ("",)) -> str:
        answer = self._send(" ".join(words)).strip()
        if answer not in success:
            raise RuntimeCommandFailed(f"{' '.join(words)!r}: {answer}")
        return answer

    def servers(self, service: str) -> dict[str, ServerStatus]:
        require_name("service", service)
        lines = self._send(f"show stat {service} 4 -1").strip().splitlines()
        if not lines or not lines[0].startswith("# "):
            raise RuntimeCommandFailed(f"show stat {service}: {' '.join(lines)}")
        header = lines[0][2:].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        return {
            row["svname"]: ServerStatus(
                row["svname"], row["status"], int(row["scur"] or 0), int(row["weight"] or 0)
            )
            for row in rows
            if row.get("pxname") == service
        }

    def add_replica(self, service: str, replica: Replica, health: HealthCheck) -> None:
        """Register a new server that takes no traffic until ``admit_replica``.

        A server HAProxy has just been given counts as up before its first
        check (measured: a dynamic server got requests at once), so it is
        added with weight 0 and forced down: only ``health.rise`` passed
        checks bring it up.
        """
        require_name("service", service)
        replica.validate("replica")
        health.validate("health")
        target = f"{service}/{replica.name}"
        self._command(
            "add server",
            target,
            replica.endpoint,
            health.server_options(),
            "weight 0",
            success=("New server registered.",),
        )
        self.hold_back(service, replica.name)

    def hold_back(self, service: str, replica: str) -> None:
        """Enable a server added in maintenance (as dynamic servers are) with
        its checks on, forced down: it comes up only after passing checks."""
        require_name("service", service)
        require_name("replica", replica)
        target = f"{service}/{replica}"
        self._command("enable health", target)
        self._command("enable server", target)
        self._command("set server", target, "health down")

    def admit_replica(self, service: str, replica: str, timeout: float) -> None:
        """Wait until the replica passed its health checks, then give it traffic."""
        require_name("replica", replica)
        self.wait_until(
            service,
            lambda servers: replica in servers and servers[replica].up,
            timeout,
            f"{replica} did not pass its health check",
        )
        self._command("set server", f"{service}/{replica}", f"weight {REPLICA_WEIGHT}")

    def set_state(self, service: str, replica: str, state: str) -> None:
        require_name("service", service)
        require_name("replica", replica)
        if state not in SERVER_STATES:
            raise ProxyConfigError("state", f"must be one of {SERVER_STATES}")
        self._command("set server", f"{service}/{replica}", "state", state)

    def remove_replica(self, service: str, replica: str, force: bool = False) -> bool:
        """Put the server in maintenance and delete it; False if it was not there.

        HAProxy refuses to delete a server with requests in flight; ``force``
        cuts them first (for a drain that ran out of time).
        """
        if replica not in self.servers(service):
            return False
        self.set_state(service, replica, "maint")
        if force:
            self._command("shutdown sessions server", f"{service}/{replica}")
        self._command("del server", f"{service}/{replica}", success=("Server deleted.",))
        return True

    def wait_until(
        self,
        service: str,
        condition: Callable[[dict[str, ServerStatus]], bool],
        timeout: float,
        what: str,
    ) -> dict[str, ServerStatus]:
        deadline = time.monotonic() + timeout
        while True:
            servers = self.servers(service)
            if condition(servers):
                return servers
            if time.monotonic() > deadline:
                raise ProxyTimeout(f"{service}: {what} within {timeout:g} s; now {servers}")
            time.sleep(0.05)

    def save_server_state(self, write: Callable[[str], None]) -> None:
        """Hand ``show servers state`` to ``write`` (which stores it in the
        state file) right before a reload, so the new workers keep health."""
        write(self._send("show servers state"))


@dataclass(frozen=True)
class MasterState:
    """The master process: reloads done, reloads refused, old workers still finishing."""

    reloads: int
    failed_reloads: int
    old_workers: int


MASTER_LINE_PATTERN = re.compile(r"^\d+\s+master\s+(\d+)\s+\[failed: (\d+)\]", re.MULTILINE)


class MasterCLI:
    """The master's own CLI (``haproxy -S``): hitless reloads and their outcome."""

    def __init__(self, send: Callable[[str], str]) -> None:
        self._send = send

    def state(self) -> MasterState:
        answer = self._send("show proc")
        match = MASTER_LINE_PATTERN.search(answer)
        if match is None:
            raise RuntimeCommandFailed(f"show proc: {answer.strip()}")
        old = answer.split("# old workers", 1)[1] if "# old workers" in answer else ""
        old_workers = sum(
            1 for line in old.split("# programs", 1)[0].splitlines() if line[:1].isdigit()
        )
        return MasterState(int(match[1]), int(match[2]), old_workers)

    def wait_ready(self, timeout: float) -> MasterState:
        """The master's state once its CLI answers: right after start and after
        every reload the master re-executes itself and reopens the socket."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.state()
            except OSError as error:
                if time.monotonic() > deadline:
                    raise ProxyTimeout(f"haproxy's master CLI did not answer: {error}") from None
            time.sleep(0.05)

    def reload(self, timeout: float = 30.0) -> MasterState:
        """Load the configuration file again without dropping a connection.

        New workers take over the listening sockets; old ones finish their
        requests (at most ``hard_stop_after_ms``). If HAProxy refuses the new
        file, the old workers keep serving and RuntimeCommandFailed says so.
        """
        deadline = time.monotonic() + timeout
        before = self.wait_ready(timeout)
        self._send("reload")
        while True:
            time.sleep(0.05)
            now = self.wait_ready(max(0.0, deadline - time.monotonic()))
            if now.failed_reloads > before.failed_reloads:
                raise RuntimeCommandFailed(
                    "haproxy refused the new configuration; the old workers keep serving"
                )
            if now.reloads > before.reloads:
                return now
            if time.monotonic() > deadline:
                raise ProxyTimeout(f"haproxy did not report the reload within {timeout:g} s")


def admit_replicas(
    api: RuntimeAPI, service: Service, new: Sequence[Replica], health_timeout: float = 60.0
) -> None:
    """Add ``new`` replicas held back and give them traffic once every one
    passed ``rise`` checks.

    If one never becomes healthy every new one is removed again, so what
    served before keeps serving alone (ProxyTimeout naming it). Re-running after a
    crash halfway is safe: a replica already added is not added again.
    """
    current = api.servers(service.name)
    for replica in new:
        if replica.name not in current:
            api.add_replica(service.name, replica, service.health)
        elif current[replica.name].status == "MAINT":
            # An earlier run stopped between adding the server and enabling it.
            api.hold_back(service.name, replica.name)
    names = [replica.name for replica in new]
    try:
        # None takes traffic before all are up: they go in together or not at all.
        api.wait_until(
            service.name,
            lambda servers: all(name in servers and servers[name].up for name in names),
            health_timeout,
            "new replicas did not pass their health check",
        )
    except ProxyTimeout:
        servers = api.servers(service.name)
        down = [name for name in names if name not in servers or not servers[name].up]
        for name in names:
            api.remove_replica(service.name, name)
        raise ProxyTimeout(
            f"{service.name}: {', '.join(down)} did not pass its health check"
            f" within {health_timeout:g} s"
        ) from None
    for name in names:
        api.admit_replica(service.name, name, health_timeout)


def drain_replicas(
    api: RuntimeAPI,
    service: Service,
    old: Sequence[str],
    drain_timeout: float = 30.0,
    force: bool = False,
) -> None:
    """Stop new traffic to ``old`` replicas and remove each once it has no open request.

    A drain that runs out of time raises ProxyTimeout with the replica
    drained but kept, unless ``force`` cuts its requests and removes it (a
    cut GET is replayed on another replica: ``retry-on empty-response``).
    Replicas already gone are skipped.
    """
    remaining = [name for name in old if name in api.servers(service.name)]
    for name in remaining:
        api.set_state(service.name, name, "drain")
    deadline = time.monotonic() + drain_timeout
    for name in remaining:
        try:
            api.wait_until(
                service.name,
                lambda servers, name=name: name not in servers or servers[name].sessions == 0,
                max(0.0, deadline - time.monotonic()),
                f"{name} did not drain",
            )
        except ProxyTimeout:
            if not force:
                raise
        api.remove_replica(service.name, name, force=force)


def roll_replica(
    api: RuntimeAPI,
    service: Service,
    new: Replica,
    old: Sequence[str],
    health_timeout: float = 60.0,
    drain_timeout: float = 30.0,
) -> None:
    """Replace ``old`` replicas of ``service`` by ``new`` without a failed request.

    The new server must pass its health check before the old ones are
    drained (``admit_replicas``, then ``drain_replicas``): a new one that
    never becomes healthy is removed and the old ones keep serving; a drain
    that runs out of time leaves the old one drained but kept, for the
    caller to wait longer or remove with ``force``.
    """
    admit_replicas(api, service, [new], health_timeout)
    drain_replicas(api, service, old, drain_timeout)
