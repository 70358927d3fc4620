"""Rolling a new release out on one target, in named idempotent steps.

With published ports:
    ship image -> start candidate -> health-check candidate -> switch
    -> stop old -> prune
Without:
    ship image -> start new -> health-check new -> stop old -> prune

Two containers cannot hold one host port, so a service with published ports
first runs the new release as a candidate without them, beside the old one:
a release that never gets healthy is caught while the old one keeps serving.
The switch then stops the old serving container and starts the new one,
created beforehand, on the same host ports: the only window in which the
port refuses connections is that stop + start (``switch_seconds``).  If the
new serving container fails its health check, the old one is started again.
A service without published ports needs no candidate: its new replicas start
beside the old ones, which stop only once the new ones are healthy.
Every step can be re-run after a crash.
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
    ROLE_CANDIDATE,
    ROLE_SERVING,
    ServiceSpec,
    create_container,
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
    RolloutFailed,
    SSHUnreachable,
)
from .images import PushResult, RegistryAuth, pull_image, push_image
from .ssh import SSHConnection

logger = logging.getLogger(__name__)


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
    switch_seconds: float | None = None  # longest stop-old + start-new of a replica


def roll_out(
    ssh: SSHConnection,
    spec: ServiceSpec,
    release_id: str,
    *,
    replicas: int | None = None,
    local_engine: docker.DockerClient | None = None,
    registry_auth: RegistryAuth | None = None,
    health_seconds: float | None = None,
    log: logging.Logger = logger,
) -> RolloutReport:
    """Make ``release_id`` of ``spec`` the one serving on this target.

    ``replicas`` is this target's share (``spec.replicas`` when None).  With
    ``local_engine`` the image is pushed from it registry-less, otherwise
    pulled.  ``health_seconds`` bounds the whole time spent waiting for
    health, over every replica and check, from the first check on: a release
    not healthy by then is rolled back.  Raises RolloutFailed (after rolling
    back), InvalidSpec, or the SSH errors (SSHUnreachable is transient: run
    the rollout again).
    """
    spec.validate()
    validate_release_id(release_id)
    count = spec.replicas if replicas is None else replicas
    if spec.ports and count > 1:
        raise InvalidSpec(
            "replicas", "a service with published ports runs at most one replica per target"
        )
    rollout = _Rollout(ssh, spec, release_id, count, health_seconds, log)
    already_serving = rollout.find_serving()
    rollout.step("ship image", lambda: rollout.ship_image(local_engine, registry_auth))
    if already_serving >= set(range(count)):
        rollout.step("start", lambda: "skipped: release already serving")
    elif not spec.ports:
        rollout.start_beside_old()
    else:
        rollout.start_candidate_then_switch()
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

    def find_serving(self) -> set[int]:
        """Note what serves before; returns the replicas this release already serves."""
        serving = [
            c
            for c in list_containers(self.engine, service_id=self.spec.service_id)
            if c.role == ROLE_SERVING and c.state == "running"
        ]
        others = [c.release_id for c in serving if c.release_id != self.release_id]
        self.previous = self.report.previous_release = next(iter(others), None)
        return {c.replica for c in serving if c.release_id == self.release_id}

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

    def start_beside_old(self) -> None:
        """No published ports: the new replicas start beside the old ones."""
        new_ids: list[str] = []

        def start_new() -> str:
            new_ids.extend(
                start_container(self.engine, self.spec, self.release_id, replica=replica)
                for replica in range(self.count)
            )
            return f"started {len(new_ids)}"

        try:
            self.step("start new", start_new)
            self.step(
                "health-check new",
                lambda: _health_or_remove(self.health, new_ids, self.previous, "health-check new"),
            )
        except RolloutFailed:
            # The old replicas were never stopped: dropping the new ones is the rollback.
            for container in list_containers(
                self.engine, service_id=self.spec.service_id, release_id=self.release_id
            ):
                remove_container(self.engine, container.id)
            raise

    def start_candidate_then_switch(self) -> None:
        """Published ports: a candidate without them proves the release healthy,
        then each replica switches over on the same host ports."""
        candidate = {}

        def start_candidate() -> str:
            candidate["id"] = start_container(
                self.engine, self.spec, self.release_id, role=ROLE_CANDIDATE
            )
            return f"started {candidate['id'][:12]}"

        self.step("start candidate", start_candidate)
        self.step(
            "health-check candidate",
            lambda: _health_or_remove(
                self.health, [candidate["id"]], self.previous, "health-check candidate"
            ),
        )
        try:
            self.step(
                "switch",
                lambda: _switch(
                    self.health, self.release_id, self.count, self.previous, self.report
                ),
            )
        except RolloutFailed:
            remove_container(self.engine, candidate["id"])
            raise


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


def withdraw(ssh: SSHConnection, service_id: str, release_id: str) -> str:
    """Remove every container of ``release_id`` of the service (the way back
    from a first release, when nothing served before it)."""
    engine = ssh.docker()
    ours = list_containers(engine, service_id=service_id, release_id=release_id)
    for container in ours:
        remove_container(engine, container.id)
    return f"removed {len(ours)} container(s) of {release_id}"


def _health_or_remove(health: _HealthClock, container_ids, previous, step_name) -> str:
    """All healthy, or all removed and RolloutFailed (the old ones never stopped)."""
    try:
        outputs = [health.wait(c) for c in container_ids]
    except HealthCheckFailed as exc:
        for container_id in container_ids:
            remove_container(health.engine, container_id)
        raise RolloutFailed(step_name, exc.reason, previous, health=exc) from exc
    return "healthy: " + "; ".join(outputs)


def _switch(health: _HealthClock, release_id, count, previous, report) -> str:
    engine, spec = health.engine, health.spec
    switched: list[tuple[str, list[str]]] = []
    for replica in range(count):
        new_id = create_container(engine, spec, release_id, role=ROLE_SERVING, replica=replica)
        old_ids = [
            c.id
            for c in list_containers(engine, service_id=spec.service_id)
            if c.role == ROLE_SERVING
            and c.replica == replica
            and c.release_id != release_id
            and c.state == "running"
        ]
        started = time.monotonic()
        switched.append((new_id, old_ids))
        try:
            for old_id in old_ids:
                stop_container(engine, old_id)
            engine.api.start(new_id)
        except docker.errors.APIError as exc:  # e.g. the host port is taken
            _roll_back(engine, switched)
            raise RolloutFailed("switch", f"engine refused: {exc.explanation}", previous) from exc
        gap = time.monotonic() - started
        report.switch_seconds = max(report.switch_seconds or 0.0, gap)
        try:
            health.wait(new_id)
        except HealthCheckFailed as exc:
            _roll_back(engine, switched)
            raise RolloutFailed("switch", exc.reason, previous, health=exc) from exc
    return f"{count} replica(s) switched, longest gap {report.switch_seconds or 0:.3f} s"


def _roll_back(engine, switched: list[tuple[str, list[str]]]) -> None:
    for new_id, old_ids in reversed(switched):
        remove_container(engine, new_id)
        for old_id in old_ids:
            engine.api.start(old_id)


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
        if c.role == ROLE_CANDIDATE or (c.state != "running" and not kept(c))
    ]
    for container in leftovers:
        remove_container(engine, container.id)
    return f"removed {len(leftovers)}"
