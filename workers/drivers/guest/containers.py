"""Service containers on a target: spec, start, health, stop, list, logs, stats.

Health checks run on the target itself, over SSH: HTTP and TCP probes enter
the container's network namespace with ``nsenter`` and use bash's /dev/tcp,
so they reach the container's own 127.0.0.1 whether or not a port is
published, and the manager never opens a connection to a container address
(the target may be a VM reachable only through SSH).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import docker

from .errors import CommandTimeout, HealthCheckFailed, InvalidSpec
from .proxy_config import HEALTH_PATH_PATTERN
from .ssh import SSHConnection

LABEL_SERVICE_ID = "io.strata.service-id"
LABEL_RELEASE_ID = "io.strata.release-id"
LABEL_ENVIRONMENT_ID = "io.strata.environment-id"
LABEL_ROLE = "io.strata.role"
LABEL_REPLICA = "io.strata.replica"
# What the guest's HAProxy needs to front the container (guest_proxy reads it):
# its published ports as [listen port, container port] and its health check.
LABEL_PROXY = "io.strata.proxy"

ROLE_SERVING = "serving"
# Replicas publish on the guest's loopback only, on a port the engine picks;
# the guest's HAProxy owns the published ports and forwards to these.
REPLICA_ADDRESS = "127.0.0.1"

RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
LOGS_TAIL_LINES = 50

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HTTP_PATH = re.compile(r"^/[\x21-\x7e]*$")  # printable, no spaces or CR/LF
_MIN_PROBE_SECONDS = 0.1  # a probe given less could not even start bash
_MIN_MEMORY = 6 * 1024 * 1024  # dockerd refuses less
# What one health check may ask for: (lowest, highest) per timing.  A rollout
# also bounds its whole wait (``deadline``), so these only keep specs sane.
HEALTH_LIMITS = {"interval": (0.1, 30), "timeout": (0.1, 30), "retries": (1, 100)}

# Run inside the container's network namespace; arguments arrive as $1.. so
# nothing is interpolated.  Exit 0 healthy, 1 bad answer, 2 refused.
_HTTP_PROBE = r"""
exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 2
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" >&3
IFS= read -r status <&3 || exit 1
printf '%s\n' "$status"
case "$status" in "HTTP/1."?" 2"*|"HTTP/1."?" 3"*) exit 0;; *) exit 1;; esac
"""
_TCP_PROBE = r"""exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 2"""


@dataclass(frozen=True)
class HealthCheck:
    """Exactly one of ``http_path`` (with ``port``), ``tcp`` (``port``) or ``command``."""

    http_path: str | None = None
    port: int | None = None
    command: tuple[str, ...] = ()
    interval: float = 1.0
    timeout: float = 2.0
    retries: int = 30

    @classmethod
    def http(cls, path: str, port: int, **timing) -> HealthCheck:
        return cls(http_path=path, port=port, **timing)

    @classmethod
    def tcp(cls, port: int, **timing) -> HealthCheck:
        return cls(port=port, **timing)

    @classmethod
    def exec(cls, *argv: str, **timing) -> HealthCheck:
        return cls(command=tuple(argv), **timing)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    image: str
    service_id: str
    environment_id: str
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[int, int] = field(default_factory=dict)  # host port -> container port
    # Named volumes only (volume name -> container path): no host paths.
    volumes: Mapping[str, str] = field(default_factory=dict)
    nano_cpus: int | None = None
    memory_bytes: int | None = None
    restart_policy: str = "unless-stopped"
    replicas: int = 1
    health: HealthCheck | None = None
    network: str | None = None  # engine default when None

    def validate(self) -> None:
        """Raises InvalidSpec naming the first bad field."""
        if not _NAME.fullmatch(self.name):
            raise InvalidSpec("name", "lowercase letters, digits and '-', at most 63")
        if not self.image or any(c.isspace() for c in self.image):
            raise InvalidSpec("image", "must be a non-empty image reference")
        for field_name in ("service_id", "environment_id"):
            if not _ID.fullmatch(getattr(self, field_name)):
                raise InvalidSpec(field_name, "letters, digits, '_', '.', '-', at most 64")
        if not all(isinstance(arg, str) for arg in self.command):
            raise InvalidSpec("command", "must be a list of strings")
        for key, value in self.env.items():
            if not _ENV_NAME.fullmatch(key) or not isinstance(value, str) or "\0" in value:
                raise InvalidSpec("env", f"bad variable {key!r}")
        for host_port, container_port in self.ports.items():
            for port in (host_port, container_port):
                if not isinstance(port, int) or not 1 <= port <= 65535:
                    raise InvalidSpec("ports", f"{port!r} is not a TCP port")
        for volume, path in self.volumes.items():
            if not _ID.fullmatch(volume):
                raise InvalidSpec("volumes", f"volume name {volume!r} is invalid")
            if not path.startswith("/") or ".." in path.split("/"):
                raise InvalidSpec("volumes", f"{path!r} must be an absolute path")
        if self.nano_cpus is not None and not 10**7 <= self.nano_cpus <= 256 * 10**9:
            raise InvalidSpec("nano_cpus", "between 0.01 and 256 CPUs (in 1e-9 CPUs)")
        if self.memory_bytes is not None and self.memory_bytes < _MIN_MEMORY:
            raise InvalidSpec("memory_bytes", f"at least {_MIN_MEMORY} bytes")
        if self.restart_policy not in RESTART_POLICIES:
            raise InvalidSpec("restart_policy", f"one of {', '.join(RESTART_POLICIES)}")
        if not isinstance(self.replicas, int) or not 0 <= self.replicas <= 100:
            raise InvalidSpec("replicas", "between 0 and 100")
        if self.network is not None and not _ID.fullmatch(self.network):
            raise InvalidSpec("network", "invalid network name")
        if self.health is not None:
            _validate_health(self.health)
            path = self.health.http_path
            if self.ports and path is not None and not HEALTH_PATH_PATTERN.fullmatch(path):
                # The guest's HAProxy checks the same path; its grammar allows no more.
                raise InvalidSpec("health.http_path", "letters, digits and . _ ~ / - only")


def _validate_health(health: HealthCheck) -> None:
    kinds = sum(
        [
            health.http_path is not None,
            bool(health.command),
            health.http_path is None and not health.command and health.port is not None,
        ]
    )
    if kinds != 1:
        raise InvalidSpec("health", "give exactly one of an HTTP path, a TCP port or a command")
    if health.http_path is not None and not _HTTP_PATH.fullmatch(health.http_path):
        raise InvalidSpec("health.http_path", "an absolute path without spaces")
    if health.port is not None and not 1 <= health.port <= 65535:
        raise InvalidSpec("health.port", f"{health.port!r} is not a TCP port")
    if health.http_path is not None and health.port is None:
        raise InvalidSpec("health.port", "an HTTP check needs the container port")
    for timing, (low, high) in HEALTH_LIMITS.items():
        if not low <= getattr(health, timing) <= high:
            raise InvalidSpec(f"health.{timing}", f"between {low:g} and {high:g}")


def validate_release_id(release_id: str) -> None:
    if not _ID.fullmatch(release_id):
        raise InvalidSpec("release_id", "letters, digits, '_', '.', '-', at most 64")


def container_name(spec: ServiceSpec, release_id: str, role: str, replica: int) -> str:
    return f"strata-{spec.name}-{release_id}-{role}-{replica}"


def proxy_label(spec: ServiceSpec) -> str:
    """The LABEL_PROXY of a service with published ports: the ports and the
    health check (in milliseconds) its guest's HAProxy fronts it with."""
    health = spec.health
    check = None
    if health is not None:
        check = {
            "http_path": health.http_path,
            "port": health.port if not health.command else None,
            "interval_ms": round(health.interval * 1000),
            "timeout_ms": round(health.timeout * 1000),
        }
    ports = sorted([listen, container] for listen, container in spec.ports.items())
    return json.dumps({"service": spec.name, "ports": ports, "check": check}, sort_keys=True)


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    state: str
    image: str
    service_id: str
    release_id: str
    environment_id: str
    role: str
    replica: int
    # Container port -> the loopback port the engine published it on.
    loopback_ports: Mapping[int, int] = field(default_factory=dict)
    proxy: str = ""  # LABEL_PROXY, when the service has published ports


@dataclass(frozen=True)
class ContainerStats:
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int


def create_container(
    engine: docker.DockerClient,
    spec: ServiceSpec,
    release_id: str,
    *,
    role: str = ROLE_SERVING,
    replica: int = 0,
) -> str:
    """Create (not start) the container of ``replica`` of a release; idempotent.

    Published container ports go to engine-chosen ports on the guest's
    loopback, never to the published port itself: the guest's HAProxy holds
    that one, so any number of replicas and releases run side by side.
    """
    spec.validate()
    validate_release_id(release_id)
    name = container_name(spec, release_id, role, replica)
    try:
        return engine.api.inspect_container(name)["Id"]
    except docker.errors.NotFound:
        pass
    restart = {"Name": spec.restart_policy}
    container_ports = sorted(set(spec.ports.values()))
    host_config = engine.api.create_host_config(
        port_bindings={port: (REPLICA_ADDRESS,) for port in container_ports} or None,
        binds={volume: {"bind": path, "mode": "rw"} for volume, path in spec.volumes.items()},
        nano_cpus=spec.nano_cpus,
        mem_limit=spec.memory_bytes,
        restart_policy=restart if spec.restart_policy != "no" else None,
        network_mode=spec.network,
        # busybox-like PID 1s ignore SIGTERM; an init forwards it and reaps.
        init=True,
    )
    labels = {
        LABEL_SERVICE_ID: spec.service_id,
        LABEL_RELEASE_ID: release_id,
        LABEL_ENVIRONMENT_ID: spec.environment_id,
        LABEL_ROLE: role,
        LABEL_REPLICA: str(replica),
    }
    if spec.ports:
        labels[LABEL_PROXY] = proxy_label(spec)
    created = engine.api.create_container(
        spec.image,
        command=list(spec.command) or None,
        name=name,
        environment=dict(spec.env),
        labels=labels,
        host_config=host_config,
        ports=container_ports or None,
    )
    return created["Id"]


def start_container(
    engine: docker.DockerClient,
    spec: ServiceSpec,
    release_id: str,
    *,
    role: str = ROLE_SERVING,
    replica: int = 0,
) -> str:
    """Create and start a release's container (idempotent); returns its ID."""
    container_id = create_container(engine, spec, release_id, role=role, replica=replica)
    engine.api.start(container_id)
    return container_id


def stop_container(engine: docker.DockerClient, container_id: str, timeout: int = 10) -> None:
    try:
        engine.api.stop(container_id, timeout=timeout)
    except docker.errors.NotFound:
        pass


def remove_container(engine: docker.DockerClient, container_id: str) -> None:
    try:
        engine.api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass


def list_containers(
    engine: docker.DockerClient,
    *,
    service_id: str | None = None,
    release_id: str | None = None,
    environment_id: str | None = None,
) -> list[ContainerInfo]:
    """Strata containers on the engine (running or not), filtered by label."""
    labels = [LABEL_SERVICE_ID]
    for label, value in (
        (LABEL_SERVICE_ID, service_id),
        (LABEL_RELEASE_ID, release_id),
        (LABEL_ENVIRONMENT_ID, environment_id),
    ):
        if value is not None:
            labels.append(f"{label}={value}")
    found = []
    for summary in engine.api.containers(all=True, filters={"label": labels}):
        tags = summary["Labels"]
        found.append(
            ContainerInfo(
                id=summary["Id"],
                name=summary["Names"][0].lstrip("/"),
                state=summary["State"],
                image=summary["Image"],
                service_id=tags[LABEL_SERVICE_ID],
                release_id=tags.get(LABEL_RELEASE_ID, ""),
                environment_id=tags.get(LABEL_ENVIRONMENT_ID, ""),
                role=tags.get(LABEL_ROLE, ""),
                replica=int(tags.get(LABEL_REPLICA, "0")),
                loopback_ports={
                    port["PrivatePort"]: port["PublicPort"]
                    for port in summary.get("Ports") or []
                    if port.get("IP") == REPLICA_ADDRESS and "PublicPort" in port
                },
                proxy=tags.get(LABEL_PROXY, ""),
            )
        )
    return found


def container_logs(
    engine: docker.DockerClient,
    container_id: str,
    *,
    tail: int = LOGS_TAIL_LINES,
    since: float | None = None,
) -> str:
    """The last ``tail`` lines of stdout and stderr (``since``: a UNIX time)."""
    raw = engine.api.logs(
        container_id,
        stdout=True,
        stderr=True,
        tail=tail,
        since=int(since) if since is not None else None,
    )
    return raw.decode(errors="replace")


def container_stats(engine: docker.DockerClient, container_id: str) -> ContainerStats:
    """CPU % (of all CPUs, like ``docker stats``) and memory use, from one sample."""
    sample = engine.api.stats(container_id, stream=False)
    cpu, pre = sample["cpu_stats"], sample["precpu_stats"]
    cpu_delta = cpu["cpu_usage"]["total_usage"] - pre.get("cpu_usage", {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or [1])
    percent = cpu_delta / system_delta * online * 100.0 if system_delta > 0 else 0.0
    memory = sample.get("memory_stats", {})
    # Like the docker CLI: page cache the kernel can drop does not count.
    used = memory.get("usage", 0) - memory.get("stats", {}).get("inactive_file", 0)
    return ContainerStats(round(percent, 2), max(used, 0), memory.get("limit", 0))


def probe_once(
    ssh: SSHConnection, engine: docker.DockerClient, container_id: str, health: HealthCheck
) -> tuple[bool, str]:
    """One health probe from the target; (healthy, output)."""
    state = engine.api.inspect_container(container_id)["State"]
    if not state["Running"]:
        return False, f"container not running (exit code {state['ExitCode']})"
    seconds = f"{health.timeout:g}"
    if health.command:
        argv = ["timeout", seconds, "docker", "exec", container_id, *health.command]
    else:
        netns = ["timeout", seconds, "nsenter", "--target", str(state["Pid"]), "--net", "--"]
        if health.http_path is not None:
            argv = [
                *netns,
                "bash",
                "-c",
                _HTTP_PROBE,
                "strata-probe",
                str(health.port),
                health.http_path,
            ]
        else:
            argv = [*netns, "bash", "-c", _TCP_PROBE, "strata-probe", str(health.port)]
    try:
        result = ssh.run(argv, timeout=health.timeout + 5, check=False)
    except CommandTimeout:
        return False, f"probe did not answer within {health.timeout + 5:g} s"
    output = (result.stdout + result.stderr).decode(errors="replace").strip()
    if result.exit_status == 124:
        output = f"timed out after {seconds} s {output}".strip()
    return result.exit_status == 0, output


def wait_healthy(
    ssh: SSHConnection,
    engine: docker.DockerClient,
    container_id: str,
    health: HealthCheck | None,
    deadline: float | None = None,
) -> str:
    """Probe until healthy; returns the last probe output.

    Raises HealthCheckFailed with the last output and the container's log
    tail after ``health.retries`` failures, at once when it stopped, or when
    ``deadline`` (a ``time.monotonic()`` value) comes first: no probe or
    pause runs past it.  Without a health check the container only has to
    be running.
    """
    if health is None:
        state = engine.api.inspect_container(container_id)["State"]
        if state["Running"]:
            return "running"
        output = f"container not running (exit code {state['ExitCode']})"
        raise HealthCheckFailed(
            container_id[:12], output, output, container_logs(engine, container_id)
        )
    output, out_of_time = "", False
    for attempt in range(health.retries):
        if attempt:
            time.sleep(_pause(health.interval, deadline))
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left < _MIN_PROBE_SECONDS:
            out_of_time = True
            break
        probe = dataclasses.replace(health, timeout=min(health.timeout, left))
        healthy, output = probe_once(ssh, engine, container_id, probe)
        if healthy:
            return output
        if output.startswith("container not running"):
            break
    reason = ("out of time: " if out_of_time else "") + (output or "no output")
    raise HealthCheckFailed(
        container_id[:12], reason, output, container_logs(engine, container_id), out_of_time
    )


def _pause(interval: float, deadline: float | None) -> float:
    if deadline is None:
        return interval
    return max(0.0, min(interval, deadline - time.monotonic()))
