"""Finding 5: one rollout's health waits are bounded in total, and the spec's
per-check timings are bounded, so one team's release cannot hold a host's worker."""

import time

import pytest

from workers.drivers.guest import HealthCheck, InvalidSpec, RolloutFailed, ServiceSpec, roll_out
from workers.drivers.guest.containers import list_containers

pytestmark = pytest.mark.integration


def never_healthy(image, replicas):
    return ServiceSpec(
        name="slow",
        image=image,
        service_id="svc-slow",
        environment_id="env-1",
        replicas=replicas,
        command=("sleep", "600"),
        # Unbounded, this would wait about 3 x 100 x 1 s.
        health=HealthCheck.exec("false", interval=1, timeout=1, retries=100),
    )


def test_the_rollout_gives_up_when_its_health_budget_is_spent(
    clean_host_engine, connection, web_images, local_engine
):
    """Finding 5: three replicas share one budget; the release is rolled back with the reason."""
    started = time.monotonic()
    with pytest.raises(RolloutFailed) as caught:
        roll_out(
            connection,
            never_healthy(web_images[0], 3),
            "r1",
            local_engine=local_engine,
            health_seconds=3,
        )
    elapsed = time.monotonic() - started
    assert caught.value.step == "health-check new"
    assert caught.value.reason == "not healthy within the rollout's 3 s health budget"
    assert caught.value.health.last_output is not None
    # Ship and start cost a few seconds on a loaded machine; 3 x 100 retries would cost 300.
    assert elapsed < 45
    assert list_containers(clean_host_engine, service_id="svc-slow") == []


@pytest.mark.parametrize(
    "timing, value",
    [("retries", 101), ("interval", 31), ("timeout", 31), ("retries", 0), ("interval", 0)],
)
def test_the_driver_refuses_timings_beyond_the_bounds(timing, value):
    """Finding 5: the driver's own check names the timing."""
    spec = ServiceSpec(
        name="web",
        image="alpha/web:1",
        service_id="s",
        environment_id="e",
        health=HealthCheck.tcp(8080, **{timing: value}),
    )
    with pytest.raises(InvalidSpec) as caught:
        spec.validate()
    assert caught.value.field == f"health.{timing}"
