"""The service proxy in a guest: HAProxy owns every published port, driven over SSH.

Replica containers publish on the guest's loopback only, on ports the engine
picks (``containers.create_container``); one master-worker HAProxy per guest
listens on each published port and forwards to the healthy replicas. Its
configuration is derived from the guest's own running containers (their
LABEL_PROXY and loopback ports), so whatever restarts it (a rollout, the
reconciler) writes the same file from the same truth. Files and the runtime
API are reached through the guest's SSH connection: the runtime socket with
a ``python3`` one-liner (every guest has python3 for cloud-init), files with
``python3`` and ``haproxy -c``, so nothing is written that HAProxy refuses.

A replica is a (name, address, port): a later step adds other VMs' replicas
at their segment addresses beside the loopback ones. No Django.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import docker

from .containers import (
    REPLICA_ADDRESS,
    ROLE_SERVING,
    ContainerInfo,
    ServiceSpec,
    list_containers,
    proxy_label,
)
from .errors import RemoteError
from .proxy_config import (
    HealthCheck,
    ProxyConfig,
    ProxyConfigError,
    Replica,
    Service,
    haproxy_argv,
    render_config,
    require_ipv4,
    require_name,
    require_path,
)
from .proxy_runtime import MasterCLI, RuntimeAPI
from .ssh import SSHConnection

GUEST_PROXY_DIRECTORY = "/var/lib/strata-proxy"
# Where QEMU's user-mode forwards (and, in production, the host) deliver
# published ports inside the guest.
GUEST_PUBLISH_ADDRESS = "0.0.0.0"  # noqa: S104
SOCKET_TIMEOUT_SECONDS = 5.0
START_TIMEOUT_SECONDS = 10.0
LOG_TAIL_BYTES = 2000

# What GuestProxy.sync did.
NOT_NEEDED = "not needed: no service with published ports"
STARTED = "started"
RESTARTED = "restarted: it was not running"  # it ran before: killed, or the guest rebooted
UNCHANGED = "unchanged"
WRITTEN = "written"  # only server lines changed, which the runtime API had done
RELOADED = "reloaded"

# The guest's python3 talks to a UNIX socket: argv is (path, command,
# timeout); exit 3 when nothing listens there.
_SOCKET_CLIENT = """
import socket, sys
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.settimeout(float(sys.argv[3]))
try:
    client.connect(sys.argv[1])
except OSError as error:
    sys.stderr.write(str(error))
    sys.exit(3)
client.sendall(sys.argv[2].encode() + b"\\n")
client.shutdown(socket.SHUT_WR)
while chunk := client.recv(65536):
    sys.stdout.buffer.write(chunk)
"""
# Writes argv[2] to argv[1] durably (directory made private if missing).
_FILE_WRITER = """
import os, sys
os.makedirs(os.path.dirname(sys.argv[1]), mode=0o700, exist_ok=True)
with open(sys.argv[1], "w") as out:
    out.write(sys.argv[2])
    out.flush()
    os.fsync(out.fileno())
"""
# The master goes to the background (-D): its stdio must not hold the SSH channel open.
_DETACHED = 'log=$1; shift; exec "$@" </dev/null >/dev/null 2>>"$log"'


class ProxyNotRunning(RemoteError, ConnectionError):
    """Nothing accepts connections on the proxy's socket: HAProxy is not running."""


class ProxyStartFailed(RemoteError):
    """HAProxy refused its configuration or did not start; carries its words."""


def ssh_socket_transport(
    ssh: SSHConnection, path: str, timeout: float = SOCKET_TIMEOUT_SECONDS
) -> Callable[[str], str]:
    """Send one command to a UNIX socket in the guest and return its answer."""
    require_path("socket", path)

    def send(command: str) -> str:
        argv = ["python3", "-c", _SOCKET_CLIENT, path, command, f"{timeout:g}"]
        result = ssh.run(argv, timeout=timeout + 5, check=False)
        if result.exit_status == 3:
            raise ProxyNotRunning(f"{path}: {result.stderr.decode(errors='replace')}")
        if result.exit_status != 0:
            tail = result.stderr.decode(errors="replace")[-LOG_TAIL_BYTES:]
            raise RemoteError(f"{path}: the socket client exited {result.exit_status}: {tail}")
        return result.text

    return send


def server_name(release_id: str, replica: int) -> str:
    return f"{release_id}-{replica}"


def listen_name(service: str, listen_port: int) -> str:
    return f"{service}-{listen_port}"


@dataclass(frozen=True)
class GuestProxy:
    """Where one guest's HAProxy keeps its files and sockets, and the address
    its published ports face. Tests on a shared machine pass a directory of
    their own and loopback."""

    directory: str = GUEST_PROXY_DIRECTORY
    publish_address: str = GUEST_PUBLISH_ADDRESS

    def __post_init__(self) -> None:
        require_path("directory", self.directory)
        require_ipv4("publish_address", self.publish_address)

    def path(self, name: str) -> str:
        return f"{self.directory}/{name}"

    @property
    def config_path(self) -> str:
        return self.path("haproxy.cfg")

    def api(self, ssh: SSHConnection) -> RuntimeAPI:
        return RuntimeAPI(ssh_socket_transport(ssh, self.path("admin.sock")))

    def master(self, ssh: SSHConnection) -> MasterCLI:
        return MasterCLI(ssh_socket_transport(ssh, self.path("master.sock")))

    def config(
        self, containers: Iterable[ContainerInfo], listening: ServiceSpec | None = None
    ) -> ProxyConfig:
        """The configuration fronting ``containers`` (running serving replicas),
        with the published ports of ``listening`` open even while none of its
        replicas runs yet (the old release's health check stays until it goes)."""
        listens: dict[str, Service] = {}
        for container in sorted(containers, key=lambda c: (c.release_id, c.replica)):
            for service in _listens_of(container.proxy, container):
                known = listens.setdefault(service.name, service)
                if known is not service:
                    listens[service.name] = Service(
                        known.name,
                        known.listen_port,
                        known.replicas + service.replicas,
                        known.health,
                        known.protocol,
                    )
        if listening is not None:
            for service in _listens_of(proxy_label(listening)):
                listens.setdefault(service.name, service)
        return ProxyConfig(
            services=tuple(listens[name] for name in sorted(listens)),
            bind_addresses=(self.publish_address,),
            runtime_socket=self.path("admin.sock"),
            state_file=self.path("server-state"),
        ).validate()

    def running(self, ssh: SSHConnection) -> bool:
        try:
            self.master(ssh).state()
        except ProxyNotRunning:
            return False
        return True

    def sync(
        self,
        ssh: SSHConnection,
        engine: docker.DockerClient,
        include: Callable[[ContainerInfo], bool] = lambda container: True,
        *,
        listening: ServiceSpec | None = None,
        reload_for_servers: bool = True,
    ) -> str:
        """Make the guest's HAProxy front the running replicas ``include`` keeps.

        Starts HAProxy when it is not running (RESTARTED when a configuration
        shows it ran before: it was killed or died). Otherwise a changed file
        is loaded by a hitless reload, except, without ``reload_for_servers``,
        when only its server lines changed: the runtime API already made
        those changes. Returns what it did (one of the constants above).
        """
        replicas = [
            c
            for c in list_containers(engine)
            if c.role == ROLE_SERVING and c.state == "running" and c.proxy and include(c)
        ]
        text = render_config(self.config(replicas, listening))
        before = self._read(ssh, self.config_path)
        if not self.running(ssh):
            if not replicas and not before and listening is None:
                return NOT_NEEDED
            self._install(ssh, text)
            self._start(ssh)
            return RESTARTED if before else STARTED
        if text == before:
            return UNCHANGED
        self._install(ssh, text)
        if not reload_for_servers and _sections(text) == _sections(before):
            return WRITTEN
        self.api(ssh).save_server_state(
            lambda state: self._write(ssh, self.path("server-state"), state)
        )
        self.master(ssh).reload()
        return RELOADED

    def _read(self, ssh: SSHConnection, path: str) -> str:
        result = ssh.run(["cat", "--", path], check=False)
        return result.text if result.exit_status == 0 else ""

    def _write(self, ssh: SSHConnection, path: str, text: str) -> None:
        ssh.run(["python3", "-c", _FILE_WRITER, path, text])

    def _install(self, ssh: SSHConnection, text: str) -> None:
        """Write the configuration, only once HAProxy accepts it."""
        candidate = self.path("haproxy.cfg.new")
        self._write(ssh, candidate, text)
        check = ssh.run(["haproxy", "-c", "-q", "-f", candidate], check=False)
        if check.exit_status != 0:
            words = (check.stdout + check.stderr).decode(errors="replace")[-LOG_TAIL_BYTES:]
            raise ProxyStartFailed(f"haproxy refused the configuration: {words.strip()}")
        ssh.run(["mv", "-f", "--", candidate, self.config_path])

    def _start(self, ssh: SSHConnection) -> None:
        log = self.path("haproxy.log")
        argv = haproxy_argv(self.config_path, self.path("master.sock"), self.path("haproxy.pid"))
        started = ssh.run(["sh", "-c", _DETACHED, "strata-proxy", log, *argv], check=False)
        if started.exit_status != 0:
            words = self._read(ssh, log)[-LOG_TAIL_BYTES:]
            raise ProxyStartFailed(f"haproxy did not start: {words.strip()}")
        self.master(ssh).wait_ready(START_TIMEOUT_SECONDS)


def _listens_of(label_text: str, container: ContainerInfo | None = None) -> list[Service]:
    """One listen per published port a LABEL_PROXY names, holding ``container``
    (if given) as its one replica.

    The label is Strata's own, but it is read back from the guest: every value
    goes through proxy_config's checks before it reaches the file.
    """
    try:
        label = json.loads(label_text)
        name, ports, check = label["service"], label["ports"], label["check"]
    except (ValueError, KeyError, TypeError) as exc:
        where = container.name if container else "spec"
        raise ProxyConfigError("labels", f"{where}: unreadable proxy label") from exc
    require_name("labels.service", name)
    listens = []
    for listen_port, container_port in ports:
        http = bool(check and check["http_path"] and check["port"] == container_port)
        health = HealthCheck()
        if check:
            health = HealthCheck(
                path=check["http_path"] if http else "/",
                interval_ms=check["interval_ms"],
                timeout_ms=check["timeout_ms"],
            )
        loopback_port = container.loopback_ports.get(container_port) if container else None
        replica = ()
        if container is not None and loopback_port is not None:
            name_of_server = server_name(container.release_id, container.replica)
            replica = (Replica(name_of_server, REPLICA_ADDRESS, loopback_port),)
        listens.append(
            Service(
                listen_name(name, listen_port),
                listen_port,
                replica,
                health,
                "http" if http else "tcp",
            )
        )
    return listens


def _sections(text: str) -> list[str]:
    """The configuration without its server lines (what the runtime API cannot change)."""
    return [line for line in text.splitlines() if not line.startswith("    server ")]
