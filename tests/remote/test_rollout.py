"""Rollout and rollback on one target, watched over HTTP through the published port."""

import dataclasses
import http.client
import socket
import threading
import time

import pytest

from bench.harness.guest_servers import free_loopback_port
from workers.drivers.guest import (
    HealthCheck,
    HealthCheckFailed,
    InvalidSpec,
    RegistryAuth,
    RolloutFailed,
    ServiceSpec,
    SSHUnreachable,
    list_containers,
    roll_out,
    spread_replicas,
)
from workers.drivers.guest import rollout as rollout_module

pytestmark = pytest.mark.integration

STEPS = ["ship image", "start candidate", "health-check candidate", "switch", "stop old", "prune"]


class HttpWatcher:
    """GETs / on 127.0.0.1:port in a loop and remembers every outcome."""

    def __init__(self, port: int):
        self.port = port
        self.outcomes: list[tuple[float, str | None]] = []  # (time, body or None)
        self.refused_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get(self) -> str | None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            return response.read().decode() if response.status == 200 else None
        except ConnectionRefusedError:
            self.refused_at.append(time.monotonic())
            return None
        except OSError:
            return None
        finally:
            connection.close()

    def _run(self):
        while not self._stop.is_set():
            self.outcomes.append((time.monotonic(), self._get()))
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def longest_outage(self) -> float:
        """Longest time from a failed request to the next successful one."""
        longest, failing_since = 0.0, None
        for moment, body in self.outcomes:
            if body is None and failing_since is None:
                failing_since = moment
            elif body is not None and failing_since is not None:
                longest = max(longest, moment - failing_since)
                failing_since = None
        return longest

    def refused_window(self) -> float:
        """From the first refused connection to the last one."""
        return self.refused_at[-1] - self.refused_at[0] if self.refused_at else 0.0

    def bodies(self) -> set[str]:
        return {body for _, body in self.outcomes if body is not None}


def get_body(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


@pytest.fixture
def web(web_images):
    port = free_loopback_port()
    spec = ServiceSpec(
        name="web",
        image=web_images[0],
        service_id="svc-web",
        environment_id="env-1",
        ports={port: 8080},
        publish_address="127.0.0.1",
        health=HealthCheck.http("/", 8080, interval=0.1, timeout=2, retries=30),
    )
    return spec, port


def serving(engine, service_id):
    return sorted(
        (c.release_id, c.role, c.state) for c in list_containers(engine, service_id=service_id)
    )


def test_rollout_switches_with_a_short_refused_window(
    clean_host_engine, connection, web, web_images, local_engine
):
    spec, port = web
    first = roll_out(connection, spec, "r1", local_engine=local_engine)
    assert [s.name for s in first.steps] == STEPS
    assert get_body(port) == "release one\n"

    with HttpWatcher(port) as watcher:
        time.sleep(0.2)
        second = roll_out(
            connection,
            dataclasses.replace(spec, image=web_images[1]),
            "r2",
            local_engine=local_engine,
        )
        time.sleep(0.2)
    outage = watcher.longest_outage()
    print(
        f"switch (stop old + start new) {second.switch_seconds * 1000:.0f} ms, "
        f"connections refused for {watcher.refused_window() * 1000:.0f} ms, "
        f"no answer for {outage * 1000:.0f} ms, {len(watcher.outcomes)} requests"
    )
    assert watcher.bodies() == {"release one\n", "release two\n"}
    assert watcher.refused_window() <= second.switch_seconds
    assert outage < 10  # a bound a loaded machine meets; a rollout down for its health wait fails
    assert get_body(port) == "release two\n"
    assert serving(clean_host_engine, "svc-web") == [("r2", "serving", "running")]

    # Idempotent: the same release again changes nothing.
    again = roll_out(
        connection, dataclasses.replace(spec, image=web_images[1]), "r2", local_engine=local_engine
    )
    assert again.push.bytes_sent == 0
    assert [s.name for s in again.steps] == ["ship image", "start", "stop old", "prune"]
    assert "skipped" in again.steps[1].detail
    assert serving(clean_host_engine, "svc-web") == [("r2", "serving", "running")]


def test_unhealthy_candidate_stops_the_rollout_while_old_keeps_serving(
    clean_host_engine, connection, web, local_engine
):
    spec, port = web
    roll_out(connection, spec, "r1", local_engine=local_engine)
    broken = dataclasses.replace(
        spec,
        command=("sh", "-c", "echo cannot bind; sleep 60"),
        health=HealthCheck.http("/", 8080, interval=0.1, timeout=1, retries=5),
    )
    with HttpWatcher(port) as watcher, pytest.raises(RolloutFailed) as caught:
        roll_out(connection, broken, "r2", local_engine=local_engine)
    failure = caught.value
    assert failure.step == "health-check candidate"
    assert failure.serving_release == "r1"
    assert "cannot bind" in failure.health.logs_tail
    assert watcher.longest_outage() == 0 and watcher.bodies() == {"release one\n"}
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")]


def test_unhealthy_new_serving_container_rolls_back(
    clean_host_engine, connection, web, web_images, local_engine, monkeypatch
):
    spec, port = web
    roll_out(connection, spec, "r1", local_engine=local_engine)

    # Fault injection: the candidate passes, the switched-in container fails
    # (e.g. the host port misbehaves), which a real image cannot stage here.
    real_wait_healthy = rollout_module.wait_healthy

    def failing_after_switch(ssh, engine, container_id, health, deadline=None):
        role = engine.api.inspect_container(container_id)["Config"]["Labels"]
        if role["io.strata.role"] == "serving":
            raise HealthCheckFailed(container_id[:12], "injected", "", "")
        return real_wait_healthy(ssh, engine, container_id, health, deadline)

    monkeypatch.setattr(rollout_module, "wait_healthy", failing_after_switch)
    with pytest.raises(RolloutFailed) as caught:
        roll_out(
            connection,
            dataclasses.replace(spec, image=web_images[1]),
            "r2",
            local_engine=local_engine,
        )
    assert caught.value.step == "switch" and caught.value.serving_release == "r1"
    assert get_body(port) == "release one\n"
    assert ("r1", "serving", "running") in serving(clean_host_engine, "svc-web")
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")]


def test_rollout_without_ports_starts_new_beside_old(
    clean_host_engine, connection, web_images, local_engine
):
    spec = ServiceSpec(
        name="worker",
        image=web_images[0],
        service_id="svc-worker",
        environment_id="env-1",
        replicas=2,
        health=HealthCheck.tcp(8080, interval=0.1, retries=30),
    )
    first = roll_out(connection, spec, "r1", local_engine=local_engine)
    assert [s.name for s in first.steps] == [
        "ship image",
        "start new",
        "health-check new",
        "stop old",
        "prune",
    ]
    assert serving(clean_host_engine, "svc-worker") == [("r1", "serving", "running")] * 2

    broken = dataclasses.replace(
        spec,
        image=web_images[1],
        command=("sleep", "60"),
        health=HealthCheck.tcp(8080, interval=0.1, retries=3),
    )
    with pytest.raises(RolloutFailed) as caught:
        roll_out(connection, broken, "r2", local_engine=local_engine)
    assert caught.value.step == "health-check new" and caught.value.serving_release == "r1"
    assert serving(clean_host_engine, "svc-worker") == [("r1", "serving", "running")] * 2

    roll_out(
        connection,
        dataclasses.replace(spec, image=web_images[1]),
        "r2",
        local_engine=local_engine,
        replicas=1,
    )
    assert serving(clean_host_engine, "svc-worker") == [("r2", "serving", "running")]


def test_taken_host_port_fails_the_switch_and_leaves_nothing_running(
    clean_host_engine, connection, web, local_engine
):
    spec, port = web
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(RolloutFailed) as caught:
            roll_out(connection, spec, "r1", local_engine=local_engine)
    assert caught.value.step == "switch" and caught.value.serving_release is None
    assert "engine refused" in caught.value.reason
    assert list_containers(clean_host_engine, service_id="svc-web") == []


def test_rollout_after_the_link_dropped_reconnects(
    clean_host_engine, connection, web, local_engine
):
    spec, port = web
    connection.docker().ping()
    connection.transport().close()
    roll_out(connection, spec, "r1", local_engine=local_engine)
    assert get_body(port) == "release one\n"


def test_link_dropping_mid_rollout_is_transient(
    clean_host_engine, connection, web, local_engine, monkeypatch
):
    spec, _ = web
    real_start = rollout_module.start_container

    def start_then_drop(engine, *args, **kwargs):
        container_id = real_start(engine, *args, **kwargs)
        connection.transport().close()  # fault injection: the SSH link drops
        return container_id

    monkeypatch.setattr(rollout_module, "start_container", start_then_drop)
    with pytest.raises(SSHUnreachable) as caught:
        roll_out(connection, spec, "r1", local_engine=local_engine)
    assert caught.value.transient
    monkeypatch.undo()
    roll_out(connection, spec, "r1", local_engine=local_engine)  # the retry converges
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")]


def test_ports_allow_one_replica_per_target(connection, web):
    spec, _ = web
    with pytest.raises(InvalidSpec) as caught:
        roll_out(connection, spec, "r1", replicas=2)
    assert caught.value.field == "replicas"


def test_failed_ship_is_reported_as_a_rollout_failure(
    clean_host_engine, connection, web, local_engine
):
    spec, _ = web
    with pytest.raises(RolloutFailed) as caught:
        roll_out(
            connection,
            dataclasses.replace(spec, image="strata-test/absent:1"),
            "r1",
            local_engine=local_engine,
        )
    assert caught.value.step == "ship image" and caught.value.serving_release is None


def test_failed_pull_is_reported_as_a_rollout_failure(clean_host_engine, connection, web):
    spec, _ = web
    with pytest.raises(RolloutFailed) as caught:
        roll_out(
            connection,
            dataclasses.replace(spec, image="127.0.0.1:9/team/app:1"),
            "r1",
            registry_auth=RegistryAuth("deployer", "s3cret-token"),
        )
    assert caught.value.step == "ship image" and "s3cret-token" not in str(caught.value)
    assert list_containers(clean_host_engine, service_id="svc-web") == []


def test_engine_error_while_starting_new_replicas_rolls_back(
    clean_host_engine, connection, web_images, local_engine
):
    spec = ServiceSpec(
        name="worker",
        image=web_images[0],
        service_id="svc-worker",
        environment_id="env-1",
        health=HealthCheck.tcp(8080, interval=0.1),
    )
    roll_out(connection, spec, "r1", local_engine=local_engine)
    # A network that does not exist: the engine refuses to start the container.
    broken = dataclasses.replace(spec, image=web_images[1], network="no-such-network")
    with pytest.raises(RolloutFailed) as caught:
        roll_out(connection, broken, "r2", local_engine=local_engine)
    assert caught.value.step == "start new" and "engine refused" in caught.value.reason
    assert serving(clean_host_engine, "svc-worker") == [("r1", "serving", "running")]


@pytest.mark.parametrize(
    ("replicas", "targets", "current", "expected"),
    [
        (0, ["a", "b"], None, {"a": 0, "b": 0}),
        (4, ["a", "b", "c"], None, {"a": 2, "b": 1, "c": 1}),
        (4, ["a", "b", "c"], {"c": 2}, {"a": 1, "b": 1, "c": 2}),
        (6, ["a", "b", "c"], None, {"a": 2, "b": 2, "c": 2}),
        (1, ["a", "b"], {"b": 1}, {"a": 0, "b": 1}),
    ],
)
def test_spread_replicas(replicas, targets, current, expected):
    assert spread_replicas(replicas, targets, current=current) == expected


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((3, ["a", "b"]), {"max_per_target": 1}, "replicas"),
        ((-1, ["a"]), {}, "replicas"),
        ((1, []), {}, "targets"),
        ((1, ["a", "a"]), {}, "targets"),
    ],
)
def test_spread_replicas_rejects_impossible_requests(args, kwargs, field):
    with pytest.raises(InvalidSpec) as caught:
        spread_replicas(*args, **kwargs)
    assert caught.value.field == field
