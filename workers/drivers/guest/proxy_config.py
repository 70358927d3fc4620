"""The service proxy's configuration: HAProxy's ``haproxy.cfg`` rendered whole.

Each guest runs Debian's HAProxy in master-worker mode. Strata renders its
whole ``haproxy.cfg`` from a typed description (service name → listen port,
replicas, health check); proxy_runtime changes replicas without a reload.

Every value is checked against a strict grammar before it is written, and
only the checked value (or its canonical form) goes into the text, so no
user string can add a directive, a section or a runtime command. No Django.
"""

from __future__ import annotations

import ipaddress
import re
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


class ProxyConfigError(RemoteError):
    """A refused value; ``field`` names it (an API caller gets a 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _require_match(field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ProxyConfigError(field, f"must be {what}, got {value!r}")
    return value


def require_name(field: str, value: object) -> str:
    return _require_match(field, value, NAME_PATTERN, "1-63 lower-case letters, digits, hyphens")


def require_path(field: str, value: object) -> str:
    _require_match(field, value, FILE_PATH_PATTERN, "an absolute path")
    if "/../" in value + "/" or "/./" in value + "/" or "//" in value:
        raise ProxyConfigError(field, f"must be a normalised path, got {value!r}")
    return value


def _require_int(field: str, value: object, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ProxyConfigError(
            field, f"must be an integer from {minimum} to {maximum}, got {value!r}"
        )
    return value


def require_ipv4(field: str, value: object) -> str:
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
        require_name(f"{field}.name", self.name)
        require_ipv4(f"{field}.address", self.address)
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
        require_name(f"{field}.name", self.name)
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
    # Where the guest keeps them: guest_proxy.GuestProxy says.
    runtime_socket: str
    state_file: str
    max_connections: int = 4096
    connect_timeout_ms: int = 2000
    client_timeout_ms: int = 30000
    server_timeout_ms: int = 30000
    # Old workers of a reload finish their requests for at most this long.
    hard_stop_after_ms: int = 30000

    def validate(self) -> ProxyConfig:
        _require_tuple("bind_addresses", self.bind_addresses, str, minimum=1)
        for index, address in enumerate(self.bind_addresses):
            require_ipv4(f"bind_addresses[{index}]", address)
        for field in ("runtime_socket", "state_file"):
            require_path(field, getattr(self, field))
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


def haproxy_argv(
    config_path: str, master_socket: str | None = None, pid_file: str | None = None
) -> list[str]:
    """The command line of a master-worker HAProxy (``-S``: the master's own CLI;
    with ``pid_file`` the master goes to the background, ``-D``, and writes its pid)."""
    argv = ["haproxy", "-W", "-f", require_path("config_path", config_path)]
    if master_socket is not None:
        argv += ["-S", require_path("master_socket", master_socket)]
    if pid_file is not None:
        argv += ["-D", "-p", require_path("pid_file", pid_file)]
    return argv
