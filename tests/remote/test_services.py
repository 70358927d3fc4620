"""Service containers on a target: validation, start, health, list, logs, stats."""

import dataclasses

import pytest

from workers.drivers.guest import (
    HealthCheck,
    HealthCheckFailed,
    InvalidSpec,
    ServiceSpec,
    container_logs,
    container_stats,
    list_containers,
    remove_container,
    start_container,
    stop_container,
    wait_healthy,
)
from workers.drivers.guest.containers import (
    LABEL_ENVIRONMENT_ID,
    LABEL_RELEASE_ID,
    LABEL_SERVICE_ID,
)

pytestmark = pytest.mark.integration

FAST = {"interval": 0.2, "timeout": 2.0, "retries": 5}


def web_spec(image_ref, **changes) -> ServiceSpec:
    spec = ServiceSpec(
        name="web",
        image=image_ref,
        service_id="svc-1",
        environment_id="env-1",
        health=HealthCheck.http("/index.html", 8080, **FAST),
        memory_bytes=64 * 1024 * 1024,
        nano_cpus=500_000_000,
    )
    return dataclasses.replace(spec, **changes)


BAD_FIELDS = [
    ({"name": "Web Server"}, "name"),
    ({"name": "-web"}, "name"),
    ({"image": ""}, "image"),
    ({"service_id": "a/b"}, "service_id"),
    ({"env": {"BAD NAME": "x"}}, "env"),
    ({"ports": {0: 8080}}, "ports"),
    ({"ports": {8080: 70000}}, "ports"),
    ({"volumes": {"data": "relative/path"}}, "volumes"),
    ({"volumes": {"../etc": "/data"}}, "volumes"),
    ({"nano_cpus": 5}, "nano_cpus"),
    ({"memory_bytes": 1024}, "memory_bytes"),
    ({"restart_policy": "sometimes"}, "restart_policy"),
    ({"replicas": -1}, "replicas"),
    ({"network": "host net"}, "network"),
    ({"health": HealthCheck()}, "health"),
    ({"health": HealthCheck.http("no-slash", 8080)}, "health.http_path"),
    ({"health": HealthCheck.http("/a b", 8080)}, "health.http_path"),
    # Behind published ports HAProxy checks the path too; its grammar is stricter.
    ({"ports": {8080: 8080}, "health": HealthCheck.http("/h?full=1", 8080)}, "health.http_path"),
    ({"health": HealthCheck(http_path="/")}, "health.port"),
    ({"health": HealthCheck.tcp(0)}, "health.port"),
    ({"health": HealthCheck.tcp(80, timeout=0)}, "health.timeout"),
    ({"health": HealthCheck.tcp(80, retries=0)}, "health.retries"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_FIELDS)
def test_invalid_spec_names_the_field(changes, field):
    with pytest.raises(InvalidSpec) as caught:
        web_spec("img:1", **changes).validate()
    assert caught.value.field == field


def test_release_id_is_validated(clean_host_engine, connection):
    with pytest.raises(InvalidSpec) as caught:
        start_container(connection.docker(), web_spec("img:1"), "r1; rm -rf /")
    assert caught.value.field == "release_id"
    assert not list_containers(clean_host_engine, service_id="svc-1")


def test_container_lifecycle_with_http_health(clean_host_engine, connection, web_images):
    v1, _ = web_images
    engine = connection.docker()
    spec = web_spec(v1, env={"GREETING": "hi"})
    container_id = start_container(engine, spec, "r1")
    assert start_container(engine, spec, "r1") == container_id  # idempotent

    assert wait_healthy(connection, engine, container_id, spec.health).startswith("HTTP/1.")

    [info] = list_containers(engine, service_id="svc-1")
    assert (info.id, info.release_id, info.role, info.state) == (
        container_id,
        "r1",
        "serving",
        "running",
    )
    assert list_containers(engine, release_id="r2") == []
    inspected = clean_host_engine.api.inspect_container(container_id)
    labels = inspected["Config"]["Labels"]
    assert labels[LABEL_SERVICE_ID] == "svc-1" and labels[LABEL_RELEASE_ID] == "r1"
    assert labels[LABEL_ENVIRONMENT_ID] == "env-1"
    assert inspected["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert inspected["HostConfig"]["NanoCpus"] == 500_000_000
    assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert "GREETING=hi" in inspected["Config"]["Env"]

    stats = container_stats(engine, container_id)
    assert 0 < stats.memory_bytes <= stats.memory_limit_bytes == 64 * 1024 * 1024
    assert stats.cpu_percent >= 0

    stop_container(engine, container_id, timeout=5)
    assert list_containers(engine, service_id="svc-1")[0].state == "exited"
    remove_container(engine, container_id)
    remove_container(engine, container_id)  # already gone: no error
    assert list_containers(engine, service_id="svc-1") == []


def test_tcp_and_command_health_checks_pass(clean_host_engine, connection, web_images):
    v1, _ = web_images
    engine = connection.docker()
    spec = web_spec(v1)
    container_id = start_container(engine, spec, "r1")
    wait_healthy(connection, engine, container_id, HealthCheck.tcp(8080, **FAST))
    wait_healthy(
        connection, engine, container_id, HealthCheck.exec("cat", "/www/index.html", **FAST)
    )


def test_failing_http_health_reports_output_and_logs(clean_host_engine, connection, web_images):
    v1, _ = web_images
    engine = connection.docker()
    spec = web_spec(
        v1, command=("sh", "-c", "echo booting on the wrong port; exec httpd -f -p 9090 -h /www")
    )
    container_id = start_container(engine, spec, "r1")
    with pytest.raises(HealthCheckFailed) as caught:
        wait_healthy(connection, engine, container_id, spec.health)
    assert "booting on the wrong port" in caught.value.logs_tail
    assert caught.value.container == container_id[:12]


def test_http_error_status_is_unhealthy(clean_host_engine, connection, web_images):
    v1, _ = web_images
    engine = connection.docker()
    spec = web_spec(v1, health=HealthCheck.http("/missing.html", 8080, **FAST))
    container_id = start_container(engine, spec, "r1")
    with pytest.raises(HealthCheckFailed) as caught:
        wait_healthy(connection, engine, container_id, spec.health)
    assert "404" in caught.value.last_output


def test_failing_command_and_tcp_health(clean_host_engine, connection, web_images):
    v1, _ = web_images
    engine = connection.docker()
    container_id = start_container(engine, web_spec(v1), "r1")
    with pytest.raises(HealthCheckFailed):
        wait_healthy(
            connection,
            engine,
            container_id,
            HealthCheck.exec("cat", "/nope", interval=0.1, retries=2),
        )
    with pytest.raises(HealthCheckFailed):
        wait_healthy(
            connection, engine, container_id, HealthCheck.tcp(9999, interval=0.1, retries=2)
        )


def test_hanging_probe_times_out(clean_host_engine, connection, web_images):
    v1, _ = web_images
    engine = connection.docker()
    container_id = start_container(engine, web_spec(v1), "r1")
    with pytest.raises(HealthCheckFailed) as caught:
        wait_healthy(
            connection,
            engine,
            container_id,
            HealthCheck.exec("sleep", "30", timeout=0.5, retries=1),
        )
    assert "timed out" in caught.value.last_output


def test_exited_container_fails_at_once(clean_host_engine, connection, web_images):
    v1, _ = web_images
    engine = connection.docker()
    spec = web_spec(
        v1,
        command=("sh", "-c", "echo crashed; exit 7"),
        restart_policy="no",
        health=HealthCheck.tcp(8080, interval=1, retries=100),
    )
    container_id = start_container(engine, spec, "r1")
    clean_host_engine.api.wait(container_id, timeout=10)
    with pytest.raises(HealthCheckFailed) as caught:
        wait_healthy(connection, engine, container_id, spec.health)
    assert "exit code 7" in caught.value.reason and "crashed" in caught.value.logs_tail
    with pytest.raises(HealthCheckFailed):
        wait_healthy(connection, engine, container_id, None)


def test_logs_tail_and_since(clean_host_engine, connection, web_images):
    v1, _ = web_images
    engine = connection.docker()
    spec = web_spec(v1, command=("sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; sleep 60"))
    container_id = start_container(engine, spec, "r1")
    wait_healthy(connection, engine, container_id, HealthCheck.exec("true", **FAST))
    assert container_logs(engine, container_id, tail=2).split() == ["line4", "line5"]
    assert container_logs(engine, container_id, since=4102444800) == ""  # year 2100
