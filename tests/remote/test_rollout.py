"""Rollout and rollback on one target, watched over HTTP through the published
port, which the target's HAProxy (run here as the guest would run it) owns."""

import dataclasses
import os
import signal
import socket
from collections import Counter
from pathlib import Path

import pytest

from bench.harness.guest_servers import free_loopback_port
from bench.harness.proxy_servers import Load, get
from workers.drivers.guest import (
    HealthCheck,
    InvalidSpec,
    RegistryAuth,
    RolloutFailed,
    ServiceSpec,
    SSHUnreachable,
    list_containers,
    roll_out,
    spread_replicas,
)
from workers.drivers.guest import guest_proxy as guest_proxy_module
from workers.drivers.guest import rollout as rollout_module
from workers.drivers.guest.rollout import withdraw

pytestmark = pytest.mark.integration

STEPS = [
    "ship image",
    "proxy",
    "start new",
    "health-check new",
    "admit new",
    "drain old",
    "write proxy config",
    "stop old",
    "prune",
]
# Each replica answers its own container's hostname, to see who served.
ANSWER_HOSTNAME = ("sh", "-c", "hostname > /www/index.html && exec httpd -f -p 8080 -h /www")


@pytest.fixture
def web(web_images):
    port = free_loopback_port()
    spec = ServiceSpec(
        name="web",
        image=web_images[0],
        service_id="svc-web",
        environment_id="env-1",
        ports={port: 8080},
        health=HealthCheck.http("/", 8080, interval=0.1, timeout=2, retries=30),
    )
    return spec, port


def serving(engine, service_id):
    return sorted(
        (c.release_id, c.role, c.state) for c in list_containers(engine, service_id=service_id)
    )


def proxy_servers(guest_proxy, connection, spec, port) -> list[str]:
    return sorted(guest_proxy.api(connection).servers(f"{spec.name}-{port}"))


def test_rollout_through_the_proxy_loses_no_request(
    clean_host_engine, connection, web, web_images, local_engine, guest_proxy
):
    spec, port = web
    first = roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    assert [s.name for s in first.steps] == STEPS
    assert first.proxy == "started"
    assert get(port)[1] == "release one\n"

    second_spec = dataclasses.replace(spec, image=web_images[1])
    with Load(port, rate=20) as load:
        load.wait_for_answers(5)
        second = roll_out(
            connection, second_spec, "r2", local_engine=local_engine, proxy=guest_proxy
        )
        load.wait_for_answers(load.result.sent + 5)
    print(f"{load.result.sent} requests at 20/s during the rollout, {load.result.failed} failed")
    assert load.result.failed == 0, load.result.errors
    assert set(load.result.answered_by) == {"release one\n", "release two\n"}
    assert second.proxy == "unchanged" and second.previous_release == "r1"
    assert get(port)[1] == "release two\n"
    assert serving(clean_host_engine, "svc-web") == [("r2", "serving", "running")]
    assert proxy_servers(guest_proxy, connection, spec, port) == ["r2-0"]
    # The file says what the runtime API did: a restart fronts the same replica.
    assert "server r2-0 127.0.0.1:" in Path(guest_proxy.config_path).read_text()
    assert "server r1-0" not in Path(guest_proxy.config_path).read_text()

    # Idempotent: the same release again changes nothing.
    again = roll_out(connection, second_spec, "r2", local_engine=local_engine, proxy=guest_proxy)
    assert again.push.bytes_sent == 0
    assert [s.name for s in again.steps] == [
        "ship image",
        "proxy",
        "start",
        "admit new",
        "drain old",
        "write proxy config",
        "stop old",
        "prune",
    ]
    assert "skipped" in again.steps[2].detail and again.proxy == "unchanged"
    assert serving(clean_host_engine, "svc-web") == [("r2", "serving", "running")]


def test_replicas_on_one_target_all_take_traffic_behind_one_port(
    clean_host_engine, connection, web, local_engine, guest_proxy
):
    spec, port = web
    three = dataclasses.replace(spec, command=ANSWER_HOSTNAME, replicas=3)
    roll_out(connection, three, "r1", local_engine=local_engine, proxy=guest_proxy)
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")] * 3
    assert proxy_servers(guest_proxy, connection, spec, port) == ["r1-0", "r1-1", "r1-2"]
    answers = Counter(get(port)[1] for _ in range(30))
    # Round robin over three healthy replicas: a third each.
    assert sorted(answers.values()) == [10, 10, 10], answers

    # Scaling down on the same release drains the replicas it drops.
    roll_out(connection, three, "r1", replicas=1, local_engine=local_engine, proxy=guest_proxy)
    assert proxy_servers(guest_proxy, connection, spec, port) == ["r1-0"]
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")]


def test_unhealthy_new_release_is_removed_while_old_keeps_serving(
    clean_host_engine, connection, web, local_engine, guest_proxy
):
    spec, port = web
    roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    broken = dataclasses.replace(
        spec,
        command=("sh", "-c", "echo cannot bind; sleep 60"),
        health=HealthCheck.http("/", 8080, interval=0.1, timeout=1, retries=5),
    )
    with Load(port, rate=20) as load, pytest.raises(RolloutFailed) as caught:
        roll_out(connection, broken, "r2", local_engine=local_engine, proxy=guest_proxy)
    failure = caught.value
    assert failure.step == "health-check new"
    assert failure.serving_release == "r1"
    assert "cannot bind" in failure.health.logs_tail
    assert load.result.failed == 0 and set(load.result.answered_by) == {"release one\n"}
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")]
    assert proxy_servers(guest_proxy, connection, spec, port) == ["r1-0"]


def test_a_release_the_proxy_cannot_reach_is_rolled_back(
    clean_host_engine, connection, web, web_images, local_engine, guest_proxy
):
    """Healthy from inside its own network namespace (the probe), but listening
    on the container's loopback only, so HAProxy's own checks never pass: the
    new replica never takes a request and the old one keeps serving."""
    spec, port = web
    roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    unreachable = dataclasses.replace(
        spec,
        image=web_images[1],
        command=("httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"),
    )
    with Load(port, rate=20) as load, pytest.raises(RolloutFailed) as caught:
        roll_out(
            connection,
            unreachable,
            "r2",
            local_engine=local_engine,
            proxy=guest_proxy,
            health_seconds=3,
        )
    assert caught.value.step == "admit new" and caught.value.serving_release == "r1"
    assert "r2-0 did not pass its health check" in caught.value.reason
    assert load.result.failed == 0 and set(load.result.answered_by) == {"release one\n"}
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")]
    assert proxy_servers(guest_proxy, connection, spec, port) == ["r1-0"]


def test_a_killed_proxy_is_restarted_and_reported_by_the_next_rollout(
    clean_host_engine, connection, web, web_images, local_engine, guest_proxy
):
    spec, port = web
    roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    master = int(Path(guest_proxy.directory, "haproxy.pid").read_text().split()[0])
    os.kill(master, signal.SIGKILL)
    assert not guest_proxy.running(connection)
    with pytest.raises(OSError):
        get(port)[1]

    again = roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    assert again.proxy == "restarted: it was not running"
    assert get(port)[1] == "release one\n"
    with Load(port, rate=20) as load:
        load.wait_for_answers(5)
        roll_out(
            connection,
            dataclasses.replace(spec, image=web_images[1]),
            "r2",
            local_engine=local_engine,
            proxy=guest_proxy,
        )
    assert load.result.failed == 0, load.result.errors


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


def test_withdrawing_a_first_release_closes_its_published_port(
    clean_host_engine, connection, web, local_engine, guest_proxy
):
    spec, port = web
    roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    assert withdraw(connection, spec.service_id, "r1", guest_proxy) == (
        "removed 1 container(s) of r1; proxy reloaded"
    )
    assert list_containers(clean_host_engine, service_id="svc-web") == []
    assert f":{port}" not in Path(guest_proxy.config_path).read_text()
    with pytest.raises(ConnectionRefusedError):
        get(port)[1]


def test_a_configuration_haproxy_refuses_is_never_installed(
    clean_host_engine, connection, web, web_images, local_engine, guest_proxy, monkeypatch
):
    spec, port = web
    roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    installed = Path(guest_proxy.config_path).read_text()
    real_render = guest_proxy_module.render_config
    # Fault injection: a configuration HAProxy's own check refuses.
    monkeypatch.setattr(
        guest_proxy_module, "render_config", lambda config: real_render(config) + "bogus 1\n"
    )
    second = dataclasses.replace(spec, image=web_images[1], ports={port: 8080, port + 1: 8080})
    with pytest.raises(RolloutFailed) as caught:
        roll_out(connection, second, "r2", local_engine=local_engine, proxy=guest_proxy)
    assert caught.value.step == "proxy" and caught.value.serving_release == "r1"
    assert "haproxy refused the configuration" in caught.value.reason
    assert Path(guest_proxy.config_path).read_text() == installed
    assert get(port)[1] == "release one\n"
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")]


def test_a_published_port_another_process_holds_fails_before_anything_starts(
    clean_host_engine, connection, web, local_engine, guest_proxy
):
    spec, port = web
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(RolloutFailed) as caught:
            roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    assert caught.value.step == "proxy" and caught.value.serving_release is None
    assert "haproxy did not start" in caught.value.reason
    assert list_containers(clean_host_engine, service_id="svc-web") == []


def test_rollout_after_the_link_dropped_reconnects(
    clean_host_engine, connection, web, local_engine, guest_proxy
):
    spec, port = web
    connection.docker().ping()
    connection.transport().close()
    roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    assert get(port)[1] == "release one\n"


def test_link_dropping_mid_rollout_is_transient(
    clean_host_engine, connection, web, local_engine, monkeypatch, guest_proxy
):
    spec, _ = web
    real_start = rollout_module.start_container

    def start_then_drop(engine, *args, **kwargs):
        container_id = real_start(engine, *args, **kwargs)
        connection.transport().close()  # fault injection: the SSH link drops
        return container_id

    monkeypatch.setattr(rollout_module, "start_container", start_then_drop)
    with pytest.raises(SSHUnreachable) as caught:
        roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    assert caught.value.transient
    monkeypatch.undo()
    # The retry converges.
    roll_out(connection, spec, "r1", local_engine=local_engine, proxy=guest_proxy)
    assert serving(clean_host_engine, "svc-web") == [("r1", "serving", "running")]


def test_a_release_id_haproxy_cannot_name_is_refused_before_anything_runs(connection, web):
    spec, _ = web
    with pytest.raises(InvalidSpec) as caught:
        roll_out(connection, spec, "r_1")
    assert caught.value.field == "release_id"
    with pytest.raises(InvalidSpec):
        roll_out(connection, spec, "R1")  # a server name is a DNS label: lower case


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
        ((-1, ["a"]), {}, "replicas"),
        ((1, []), {}, "targets"),
        ((1, ["a", "a"]), {}, "targets"),
    ],
)
def test_spread_replicas_rejects_impossible_requests(args, kwargs, field):
    with pytest.raises(InvalidSpec) as caught:
        spread_replicas(*args, **kwargs)
    assert caught.value.field == field
