"""The service proxy of an environment: HAProxy's configuration and runtime API.

Each guest runs Debian's HAProxy in master-worker mode. Strata renders its
whole ``haproxy.cfg`` from a typed description (service name → listen port,
replicas, health check), and changes replicas without a reload through the
runtime API socket (``level admin``): add a server, wait until its health
check passes, drain the old one, remove it.

Every value is checked against a strict grammar before it is written, and
only the checked value (or its canonical form) goes into the text, so no
user string can add a directive, a section or a runtime command. No Django.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import RemoteError

# Service and replica names: DNS labels (what containers resolve), so also
# valid HAProxy proxy and server names.
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# An HTTP path without spaces, quotes, '%', '#', '?' or anything HAProxy reads
# as syntax; health checks never need a query string.
HEALTH_PATH_PATTERN = re.compile(r"/[A-Za-z0-9._~/-]{0,255}")
FILE_PATH_PATTERN = re.compile(r"/[A-Za-z0-9._/-]{1,200}")
PROTOCOLS = ("http", "tcp")
SERVER_STATES = ("ready", "drain", "maint")
MAX_MILLISECONDS = 3_600_000
MAX_CHECK_COUNT = 100
MAX_CONNECTIONS = 1_000_000
# HAProxy's default server weight, which every rendered server has.
REPLICA_WEIGHT = 1
GUEST_CONFIG_PATH = "/etc/haproxy/haproxy.cfg"
GUEST_RUNTIME_SOCKET = "/run/haproxy/admin.sock"
GUEST_STATE_FILE = "/var/lib/haproxy/server-state"


class ProxyConfigError(RemoteError):
    """A refused value; ``field`` names it (an API caller gets a 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RuntimeCommandFailed(RemoteError):
    """HAProxy's runtime API answered a command with an error."""


class ProxyTimeout(RemoteError):
    """A bounded wait on the proxy (health, drain) ran out."""

    transient = True


def _require_match(field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ProxyConfigError(field, f"must be {what}, got {value!r}")
    return value


def _require_name(field: str, value: object) -> str:
    return _require_match(field, value, NAME_PATTERN, "1-63 lower-case letters, digits, hyphens")


def _require_int(field: str, value: object, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ProxyConfigError(
            field, f"must be an integer from {minimum} to {maximum}, got {value!r}"
        )
    return value


def _require_ipv4(field: str, value: object) -> str:
    try:
        address = ipaddress.IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        address = None
    if address is None or str(address) != value:
        raise ProxyConfigError(field, f"must be an IPv4 address in dotted form, got {value!r}")
    return value


def _require_tuple(field: str, value: object, item_type: type, minimum: int = 0) -> tuple:
    if not isinstance(value, tuple) or len(value) < minimum:
        raise ProxyConfigError(field, f"must be a tuple of at least {minimum} {item_type.__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, item_type):
            raise ProxyConfigError(f"{field}[{index}]", f"must be a {item_type.__name__}")
    return value


@dataclass(frozen=True)
class HealthCheck:
    """How HAProxy decides a replica may take traffic.

    ``path`` is requested with GET for HTTP services (2xx or 3xx passes); TCP
    services get a connect check. A replica goes down after ``fall`` failed
    checks and up again after ``rise`` good ones, ``interval_ms`` apart.
    """

    path: str = "/"
    interval_ms: int = 2000
    timeout_ms: int = 1000
    fall: int = 3
    rise: int = 2

    def validate(self, field: str) -> None:
        _require_match(f"{field}.path", self.path, HEALTH_PATH_PATTERN, "an absolute URL path")
        _require_int(f"{field}.interval_ms", self.interval_ms, 10, MAX_MILLISECONDS)
        _require_int(f"{field}.timeout_ms", self.timeout_ms, 10, MAX_MILLISECONDS)
        _require_int(f"{field}.fall", self.fall, 1, MAX_CHECK_COUNT)
        _require_int(f"{field}.rise", self.rise, 1, MAX_CHECK_COUNT)

    def server_options(self) -> str:
        return f"check inter {self.interval_ms} fall {self.fall} rise {self.rise}"


@dataclass(frozen=True)
class Replica:
    """One container of a service, reachable at ``address:port``."""

    name: str
    address: str
    port: int
    state: str = "ready"

    def validate(self, field: str) -> None:
        _require_name(f"{field}.name", self.name)
        _require_ipv4(f"{field}.address", self.address)
        _require_int(f"{field}.port", self.port, 1, 65535)
        if self.state not in SERVER_STATES:
            raise ProxyConfigError(f"{field}.state", f"must be one of {SERVER_STATES}")

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Service:
    """A name other containers reach at ``<bind address>:listen_port``."""

    name: str
    listen_port: int
    replicas: tuple[Replica, ...]
    health: HealthCheck = HealthCheck()
    protocol: str = "http"

    def validate(self, field: str) -> None:
        _require_name(f"{field}.name", self.name)
        _require_int(f"{field}.listen_port", self.listen_port, 1, 65535)
        if self.protocol not in PROTOCOLS:
            raise ProxyConfigError(f"{field}.protocol", f"must be one of {PROTOCOLS}")
        if not isinstance(self.health, HealthCheck):
            raise ProxyConfigError(f"{field}.health", "must be a HealthCheck")
        self.health.validate(f"{field}.health")
        _require_tuple(f"{field}.replicas", self.replicas, Replica)
        names: set[str] = set()
        for index, replica in enumerate(self.replicas):
            replica.validate(f"{field}.replicas[{index}]")
            if replica.name in names:
                raise ProxyConfigError(f"{field}.replicas[{index}].name", "is used twice")
            names.add(replica.name)


@dataclass(frozen=True)
class ProxyConfig:
    """Everything one guest's ``haproxy.cfg`` says.

    ``bind_addresses`` has no default: the guest's segment address (and the
    Docker bridge's gateway, for its containers), never every interface.
    """

    services: tuple[Service, ...]
    bind_addresses: tuple[str, ...]
    runtime_socket: str = GUEST_RUNTIME_SOCKET
    state_file: str = GUEST_STATE_FILE
    max_connections: int = 4096
    connect_timeout_ms: int = 2000
    client_timeout_ms: int = 30000
    server_timeout_ms: int = 30000
    # Old workers of a reload finish their requests for at most this long.
    hard_stop_after_ms: int = 30000

    def validate(self) -> ProxyConfig:
        _require_tuple("bind_addresses", self.bind_addresses, str, minimum=1)
        for index, address in enumerate(self.bind_addresses):
            _require_ipv4(f"bind_addresses[{index}]", address)
        for field in ("runtime_socket", "state_file"):
            value = getattr(self, field)
            _require_match(field, value, FILE_PATH_PATTERN, "an absolute path")
            if "/../" in value + "/" or "/./" in value + "/" or "//" in value:
                raise ProxyConfigError(field, f"must be a normalised path, got {value!r}")
        _require_int("max_connections", self.max_connections, 1, MAX_CONNECTIONS)
        for field in ("connect_timeout_ms", "client_timeout_ms", "server_timeout_ms"):
            _require_int(field, getattr(self, field), 1, MAX_MILLISECONDS)
        _require_int("hard_stop_after_ms", self.hard_stop_after_ms, 1, MAX_MILLISECONDS)
        _require_tuple("services", self.services, Service)
        names: set[str] = set()
        ports: set[int] = set()
        for index, service in enumerate(self.services):
            service.validate(f"services[{index}]")
            if service.name in names:
                raise ProxyConfigError(f"services[{index}].name", "is used twice")
            if service.listen_port in ports:
                raise ProxyConfigError(f"services[{index}].listen_port", "is used twice")
            names.add(service.name)
            ports.add(service.listen_port)
        return self


def _global_section(config: ProxyConfig) -> list[str]:
    return [
        "global",
        # Master-worker: a reload (SIGUSR2) starts new workers on the same
        # listening sockets while old ones finish their requests.
        "    master-worker",
        f"    stats socket {config.runtime_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    server-state-file {config.state_file}",
        f"    maxconn {config.max_connections}",
        f"    hard-stop-after {config.hard_stop_after_ms}ms",
        "",
        "defaults",
        "    mode http",
        # A failed attempt is retried on another replica.
        "    option redispatch 1",
        "    retries 3",
        # After a reload a replica keeps the health it had, not "assumed up".
        "    load-server-state-from-file global",
        f"    timeout connect {config.connect_timeout_ms}ms",
        f"    timeout client {config.client_timeout_ms}ms",
        f"    timeout server {config.server_timeout_ms}ms",
        "",
    ]


_STATE_OPTIONS = {"ready": "", "drain": " weight 0", "maint": " disabled"}


def _service_section(config: ProxyConfig, service: Service) -> list[str]:
    lines = [f"listen {service.name}", f"    mode {service.protocol}"]
    lines += [f"    bind {address}:{service.listen_port}" for address in config.bind_addresses]
    lines.append("    balance roundrobin")
    if service.protocol == "http":
        lines += [
            f"    option httpchk GET {service.health.path}",
            "    http-check expect status 200-399",
            # A replica that closes without answering (it is stopping) costs
            # no request; one that may change state is only replayed if it
            # never reached a replica.
            "    retry-on conn-failure empty-response",
            "    http-request disable-l7-retry unless METH_GET || METH_OPTIONS",
        ]
    lines.append(f"    timeout check {service.health.timeout_ms}ms")
    lines += [
        f"    server {replica.name} {replica.endpoint} {service.health.server_options()}"
        + _STATE_OPTIONS[replica.state]
        for replica in service.replicas
    ]
    return [*lines, ""]


def render_config(config: ProxyConfig) -> str:
    """The complete haproxy.cfg; raises ProxyConfigError for any refused value."""
    config.validate()
    lines = _global_section(config)
    for service in config.services:
        lines += _service_section(config, service)
    return "\n".join(lines)


def haproxy_argv(config_path: str, master_socket: str | None = None) -> list[str]:
    """The command line of a master-worker HAProxy (``-S``: the master's own CLI)."""
    _require_match("config_path", config_path, FILE_PATH_PATTERN, "an absolute path")
    argv = ["haproxy", "-W", "-f", config_path]
    if master_socket is not None:
        _require_match("master_socket", master_socket, FILE_PATH_PATTERN, "an absolute path")
        argv += ["-S", master_socket]
    return argv


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
        _require_name("service", service)
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
        _require_name("service", service)
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
        _require_name("service", service)
        _require_name("replica", replica)
        target = f"{service}/{replica}"
        self._command("enable health", target)
        self._command("enable server", target)
        self._command("set server", target, "health down")

    def admit_replica(self, service: str, replica: str, timeout: float) -> None:
        """Wait until the replica passed its health checks, then give it traffic."""
        _require_name("replica", replica)
        self.wait_until(
            service,
            lambda servers: replica in servers and servers[replica].up,
            timeout,
            f"{replica} did not pass its health check",
        )
        self._command("set server", f"{service}/{replica}", f"weight {REPLICA_WEIGHT}")

    def set_state(self, service: str, replica: str, state: str) -> None:
        _require_name("service", service)
        _require_name("replica", replica)
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


def roll_replica(
    api: RuntimeAPI,
    service: Service,
    new: Replica,
    old: Sequence[str],
    health_timeout: float = 60.0,
    drain_timeout: float = 30.0,
) -> None:
    """Replace ``old`` replicas of ``service`` by ``new`` without a failed request.

    The new server is added and must pass its health check before the old
    ones are drained; each old one is removed once it has no open request.
    If the new one never becomes healthy it is removed again and the old
    ones keep serving (ProxyTimeout). A drain that runs out of time raises
    ProxyTimeout with the old replica drained but kept; the caller decides
    whether to wait longer or remove it with ``force``.

    Re-running after a crash halfway is safe: a new replica already added is
    not added again, old ones already removed are skipped.
    """
    current = api.servers(service.name)
    if new.name not in current:
        api.add_replica(service.name, new, service.health)
    elif current[new.name].status == "MAINT":
        # An earlier run stopped between adding the server and enabling it.
        api.hold_back(service.name, new.name)
    try:
        api.admit_replica(service.name, new.name, health_timeout)
    except ProxyTimeout:
        api.remove_replica(service.name, new.name)
        raise
    remaining = [name for name in old if name in api.servers(service.name)]
    for name in remaining:
        api.set_state(service.name, name, "drain")
    for name in remaining:
        api.wait_until(
            service.name,
            lambda servers, name=name: name not in servers or servers[name].sessions == 0,
            drain_timeout,
            f"{name} did not drain",
        )
        api.remove_replica(service.name, name)
