"""Rolling a new release out on one target, in named idempotent steps.

    ship image -> [proxy] -> start new -> health-check new
    -> [admit new -> drain old -> write proxy config] -> stop old -> prune

The new replicas always start beside the old ones, and the old ones stop
only once the new ones are healthy. A service with published ports is
fronted by the guest's HAProxy (guest_proxy), which owns the ports while the
replicas publish on engine-chosen loopback ports: "proxy" makes sure it runs
and fronts the old replicas, "admit new" adds the new replicas held back
until they pass HAProxy's own checks, "drain old" waits for the old ones'
requests to finish before removing them, so a client on the published port
never sees a refused or failed request. A release that never gets healthy
is removed while the old one keeps serving. Every step can be re-run after
a crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker
import requests
from docker.utils import parse_repository_tag

from .containers import (
    ROLE_SERVING,
    ContainerInfo,
    ServiceSpec,
    list_containers,
    remove_container,
    start_container,
    stop_container,
    validate_release_id,
    wait_healthy,
)
from .errors import (
    HealthCheckFailed,
    ImageShipFailed,
    InvalidSpec,
    RemoteError,
    RolloutFailed,
    SSHUnreachable,
)
from .guest_proxy import GuestProxy, server_name
from .images import PushResult, RegistryAuth, pull_image, push_image
from .proxy_config import NAME_PATTERN
from .proxy_runtime import ProxyTimeout, admit_replicas, drain_replicas
from .ssh import SSHConnection

logger = logging.getLogger(__name__)

# How long an old replica may take to finish its requests before they are
# cut (a cut GET is replayed on a new replica by HAProxy).
DRAIN_SECONDS = 30.0
# HAProxy's own checks of new replicas, when the rollout has no health budget.
ADMIT_SECONDS = 60.0


@dataclass(frozen=True)
class StepRecord:
    name: str
    seconds: float
    detail: str


@dataclass
class RolloutReport:
    release_id: str
    previous_release: str | None = None  # what served before, if another release
    steps: list[StepRecord] = field(default_factory=list)
    push: PushResult | None = None
    # What the "proxy" step did: "started", "restarted: it was not running", ...
    proxy: str | None = None


def roll_out(
    ssh: SSHConnection,
    spec: ServiceSpec,
    release_id: str,
    *,
    replicas: int | None = None,
    local_engine: docker.DockerClient | None = None,
    registry_auth: RegistryAuth | None = None,
    health_seconds: float | None = None,
    proxy: GuestProxy | None = None,
    drain_seconds: float = DRAIN_SECONDS,
    log: logging.Logger = logger,
) -> RolloutReport:
    """Make ``release_id`` of ``spec`` the one serving on this target.

    ``replicas`` is this target's share (``spec.replicas`` when None), any
    number of them behind the published ports. With ``local_engine`` the
    image is pushed from it registry-less, otherwise pulled.
    ``health_seconds`` bounds the whole time spent waiting for health, over
    every replica and check, from the first check on: a release not healthy
    by then is rolled back. ``proxy`` says where the guest's HAProxy lives
    (the guest's own paths when None). Raises RolloutFailed (after rolling
    back), InvalidSpec, or the transient errors (SSHUnreachable, the proxy
    gone mid-way): run the rollout again.
    """
    spec.validate()
    validate_release_id(release_id)
    if spec.ports and not NAME_PATTERN.fullmatch(server_name(release_id, 0)):
        raise InvalidSpec("release_id", "behind published ports: letters, digits and '-' only")
    count = spec.replicas if replicas is None else replicas
    rollout = _Rollout(ssh, spec, release_id, count, health_seconds, log)
    already_serving = rollout.find_serving() >= set(range(count))
    rollout.step("ship image", lambda: rollout.ship_image(local_engine, registry_auth))
    proxy = proxy or GuestProxy()
    if spec.ports:
        # Before anything new runs: the proxy fronts what serves now.
        rollout.step("proxy", lambda: rollout.sync_proxy(proxy))
    if already_serving:
        rollout.step("start", lambda: "skipped: release already serving")
    else:
        rollout.start_new()
    if spec.ports:
        rollout.switch_proxy(proxy, drain_seconds)
    engine = rollout.engine
    rollout.step("stop old", lambda: _stop_old(engine, spec, release_id, count))
    rollout.step("prune", lambda: _prune(engine, spec, release_id, count))
    return rollout.report


class _Rollout:
    """One rollout on one target: its named steps, each timed and logged into
    the report, and the release that served before (what a failure keeps)."""

    def __init__(self, ssh, spec: ServiceSpec, release_id: str, count: int, health_seconds, log):
        self.ssh, self.spec, self.release_id = ssh, spec, release_id
        self.count, self.log = count, log
        self.engine = ssh.docker()
        self.report = RolloutReport(release_id)
        self.health = _HealthClock(ssh, self.engine, spec, health_seconds)
        self.previous: str | None = None
        self.serving_before: set[int] = set()  # replicas of this release running before

    def find_serving(self) -> set[int]:
        """Note what serves before; returns the replicas this release already serves."""
        serving = [
            c
            for c in list_containers(self.engine, service_id=self.spec.service_id)
            if c.role == ROLE_SERVING and c.state == "running"
        ]
        others = [c.release_id for c in serving if c.release_id != self.release_id]
        self.previous = self.report.previous_release = next(iter(others), None)
        self.serving_before = {c.replica for c in serving if c.release_id == self.release_id}
        return self.serving_before

    def step(self, name: str, action: Callable[[], str]) -> None:
        started = time.monotonic()
        where = f"{self.spec.name} {self.release_id} on {self.ssh.endpoint}"
        self.log.info("rollout %s: %s ...", where, name)
        try:
            detail = action()
        except docker.errors.APIError as exc:
            raise RolloutFailed(name, f"engine refused: {exc.explanation}", self.previous) from exc
        except requests.exceptions.ConnectionError as exc:
            # The SSH link dropped under the engine client: worth a retry,
            # and every step is safe to run again.
            raise SSHUnreachable(f"{self.ssh.endpoint} during {name}: {exc}") from exc
        except RemoteError as exc:
            if exc.transient or isinstance(exc, RolloutFailed | InvalidSpec):
                raise
            # The proxy refused a configuration or a command.
            raise RolloutFailed(name, str(exc), self.previous) from exc
        record = StepRecord(name, round(time.monotonic() - started, 3), detail)
        self.report.steps.append(record)
        self.log.info("rollout %s: %s: %s (%.2f s)", where, name, detail, record.seconds)

    def ship_image(self, local_engine, registry_auth) -> str:
        try:
            if local_engine is not None:
                push = self.report.push = push_image(local_engine, self.engine, self.spec.image)
                return (
                    f"sent {push.bytes_sent} bytes, skipped "
                    f"{push.layers_skipped}/{push.layers_total} layers"
                )
            repository, tag = parse_repository_tag(self.spec.image)
            pulled = pull_image(self.engine, repository, tag or "latest", registry_auth)
            return "pulled " + pulled
        except ImageShipFailed as exc:
            raise RolloutFailed("ship image", str(exc), self.previous) from exc

    def is_new(self, container: ContainerInfo) -> bool:
        return (
            container.service_id == self.spec.service_id
            and container.release_id == self.release_id
            and container.replica < self.count
        )

    def is_other_service(self, container: ContainerInfo) -> bool:
        return container.service_id != self.spec.service_id

    def sync_proxy(self, proxy: GuestProxy) -> str:
        self.report.proxy = proxy.sync(self.ssh, self.engine, listening=self.spec)
        return self.report.proxy

    def remove_new(self) -> None:
        """The rollback: the old replicas never stopped, the new ones go."""
        for container in list_containers(
            self.engine, service_id=self.spec.service_id, release_id=self.release_id
        ):
            if container.replica not in self.serving_before:
                remove_container(self.engine, container.id)

    def start_new(self) -> None:
        """The new replicas start beside the old ones and must pass the health check."""
        new_ids: list[str] = []

        def start() -> str:
            new_ids.extend(
                start_container(self.engine, self.spec, self.release_id, replica=replica)
                for replica in range(self.count)
                if replica not in self.serving_before
            )
            return f"started {len(new_ids)}"

        try:
            self.step("start new", start)
            self.step(
                "health-check new",
                lambda: _health_or_remove(self.health, new_ids, self.previous, "health-check new"),
            )
        except RolloutFailed:
            self.remove_new()
            raise

    def switch_proxy(self, proxy: GuestProxy, drain_seconds: float) -> None:
        """Admit the new replicas in the guest's HAProxy, then drain the old ones."""
        api = proxy.api(self.ssh)
        ours = list_containers(self.engine, service_id=self.spec.service_id)
        listens = proxy.config(
            c for c in ours if self.is_new(c) and c.state == "running" and c.proxy
        ).services
        admit_seconds = self.health.seconds or ADMIT_SECONDS

        def admit() -> str:
            try:
                for listen in listens:
                    admit_replicas(api, listen, listen.replicas, admit_seconds)
            except ProxyTimeout as exc:
                before = {server_name(self.release_id, r) for r in self.serving_before}
                for listen in listens:
                    for replica in listen.replicas:
                        if replica.name not in before:
                            api.remove_replica(listen.name, replica.name)
                self.remove_new()
                raise RolloutFailed("admit new", str(exc), self.previous) from exc
            return f"{sum(len(listen.replicas) for listen in listens)} replica(s) up in the proxy"

        def drain() -> str:
            drained = 0
            for listen in listens:
                wanted = {replica.name for replica in listen.replicas}
                old = [name for name in api.servers(listen.name) if name not in wanted]
                drain_replicas(api, listen, old, drain_seconds, force=True)
                drained += len(old)
            return f"drained and removed {drained} replica(s)"

        self.step("admit new", admit)
        self.step("drain old", drain)
        self.step(
            "write proxy config",
            lambda: proxy.sync(
                self.ssh,
                self.engine,
                lambda c: self.is_other_service(c) or self.is_new(c),
                reload_for_servers=False,
            ),
        )


class _HealthClock:
    """Health waits of one rollout, sharing one deadline set at the first wait."""

    def __init__(self, ssh, engine, spec: ServiceSpec, seconds: float | None):
        self.ssh, self.engine, self.spec, self.seconds = ssh, engine, spec, seconds
        self.deadline: float | None = None

    def wait(self, container_id: str) -> str:
        if self.seconds is not None and self.deadline is None:
            self.deadline = time.monotonic() + self.seconds
        try:
            return wait_healthy(
                self.ssh, self.engine, container_id, self.spec.health, self.deadline
            )
        except HealthCheckFailed as exc:
            if not exc.out_of_time:
                raise
            reason = f"not healthy within the rollout's {self.seconds:g} s health budget"
            raise HealthCheckFailed(
                exc.container, reason, exc.last_output, exc.logs_tail, out_of_time=True
            ) from exc


def withdraw(
    ssh: SSHConnection, service_id: str, release_id: str, proxy: GuestProxy | None = None
) -> str:
    """Remove every container of ``release_id`` of the service (the way back
    from a first release, when nothing served before it), and its published
    ports from the guest's HAProxy (``proxy``: the guest's own when None)."""
    engine = ssh.docker()
    ours = list_containers(engine, service_id=service_id, release_id=release_id)
    for container in ours:
        remove_container(engine, container.id)
    done = f"removed {len(ours)} container(s) of {release_id}"
    if any(container.proxy for container in ours):
        done += f"; proxy {(proxy or GuestProxy()).sync(ssh, engine)}"
    return done


def _health_or_remove(health: _HealthClock, container_ids, previous, step_name) -> str:
    """All healthy, or all removed and RolloutFailed (the old ones never stopped)."""
    try:
        outputs = [health.wait(c) for c in container_ids]
    except HealthCheckFailed as exc:
        for container_id in container_ids:
            remove_container(health.engine, container_id)
        raise RolloutFailed(step_name, exc.reason, previous, health=exc) from exc
    return "healthy: " + "; ".join(outputs)


def _stop_old(engine, spec, release_id, count) -> str:
    stale = [
        c
        for c in list_containers(engine, service_id=spec.service_id)
        if c.state == "running"
        and c.role == ROLE_SERVING
        and (c.release_id != release_id or c.replica >= count)
    ]
    for container in stale:
        stop_container(engine, container.id)
    return f"stopped {len(stale)}"


def _prune(engine, spec, release_id, count) -> str:
    def kept(c) -> bool:
        return c.release_id == release_id and c.role == ROLE_SERVING and c.replica < count

    leftovers = [
        c
        for c in list_containers(engine, service_id=spec.service_id)
        if c.state != "running" and not kept(c)
    ]
    for container in leftovers:
        remove_container(engine, container.id)
    return f"removed {len(leftovers)}"
