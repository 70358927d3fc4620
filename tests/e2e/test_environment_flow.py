"""The whole product path on real parts: Celery worker, Redis, PostgreSQL,
libvirt with real TCG guests, Docker inside them over pinned SSH.

A dev environment with one VM is created, a web service deployed and reached
over HTTP through its loopback forward, a second release rolled out through
the guest's HAProxy under load with no failed request, a broken third one
rolled back, the service scaled to three replicas on its one VM; an internal
service is promoted to a staging environment and scaled to two replicas; both
environments are destroyed and nothing is left in libvirt, the data directory
or the host's Docker.
"""

import urllib.request

import pytest
from django.conf import settings

from bench.harness.proxy_servers import Load
from cloud.models import Container, Deployment, PortForward, Release, VirtualMachine
from cloud.services import deployments, environments
from tests.e2e.conftest import job_report, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT = 900
WEB = {"ports": [8080], "healthcheck": {"type": "http", "path": "/", "port": 8080, "retries": 60}}


def succeeded(job):
    job = wait_for_job(job, JOB_TIMEOUT)
    assert job.state == "succeeded", (job.error, job_report(job))
    return job


def http_get(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:  # noqa: S310
        return response.read().decode().strip()


def test_environment_lifecycle(
    make_team, worker_factory, strata_host, web_images, e2e_hypervisor
):
    """Finding 18: the whole path, then nothing left in libvirt, the data directory,
    the database or (checked by the web_images fixture) the host's Docker."""
    worker_factory(f"strata,{strata_host.queue}")
    team, user = make_team("e2e", "admin")
    v1, v2 = web_images
    made_uuids = []

    try:
        dev_job = environments.create_environment(
            user=user, team=team, name="dev", kind="dev", vm_count=1, flavor="small"
        )
        dev = succeeded(dev_job).environment
        dev_vm = VirtualMachine.objects.get(environment=dev)
        made_uuids.append(str(dev_vm.uuid))
        assert dev_vm.state == "running" and dev_vm.ssh_port

        def deploy_web(image_ref, **extra):
            return deployments.deploy(
                user=user,
                team=team,
                env_id=dev.pk,
                service_name="web",
                image=image_ref,
                **{**WEB, **extra},
            )

        succeeded(deploy_web(v1))
        port = PortForward.objects.get(vm=dev_vm, guest_port=8080).host_port
        assert http_get(port) == "release one"

        with Load(port, rate=20, max_seconds=JOB_TIMEOUT) as load:
            succeeded(deploy_web(v2))
        assert load.result.failed == 0, load.result.errors
        assert {body.strip() for body in load.result.answered_by} == {"release one", "release two"}
        assert http_get(port) == "release two"

        broken = wait_for_job(
            deploy_web(
                v2, command=["sleep", "3600"], healthcheck={**WEB["healthcheck"], "retries": 5}
            ),
            JOB_TIMEOUT,
        )
        assert broken.state == "failed" and "rolled back" in broken.error
        assert Deployment.objects.get(pk=broken.params["deployment"]).state == "rolled_back"
        assert http_get(port) == "release two"

        succeeded(
            deployments.scale(user=user, team=team, env_id=dev.pk, service_name="web", replicas=3)
        )
        web = Container.objects.filter(vm=dev_vm, service__name="web", state="running")
        assert web.count() == 3
        assert {http_get(port) for _ in range(6)} == {"release two"}

        succeeded(
            deployments.deploy(
                user=user,
                team=team,
                env_id=dev.pk,
                service_name="api",
                image=v1,
                healthcheck={"type": "http", "path": "/", "port": 8080},
            )
        )

        staging_job = environments.create_environment(
            user=user, team=team, name="staging", kind="staging", vm_count=1, flavor="small"
        )
        staging = succeeded(staging_job).environment
        made_uuids.append(str(VirtualMachine.objects.get(environment=staging).uuid))
        succeeded(deployments.promote(user=user, team=team, env_id=dev.pk, service_name="api"))
        dev_release = Release.objects.filter(service__environment=dev, service__name="api").get()
        staged = Release.objects.get(service__environment=staging, service__name="api")
        assert (
            staged.image_digest == dev_release.image_digest and staged.promoted_from == dev_release
        )

        succeeded(
            deployments.scale(
                user=user, team=team, env_id=staging.pk, service_name="api", replicas=2
            )
        )
        assert staged.containers.filter(state="running").count() == 2

        for env in (dev, staging):
            succeeded(environments.destroy_environment(user=user, team=team, env_id=env.pk))
    finally:
        hv = e2e_hypervisor
        leftovers = [d.name for d in hv.guests.list() if d.uuid in made_uuids]
        volumes = [
            v.name for v in hv.storage.list_volumes() if any(u in v.name for u in made_uuids)
        ]
        for vm_uuid in made_uuids:
            hv.guests.destroy(f"strata-{vm_uuid}", vm_uuid)  # clean up even when the test failed
    assert not leftovers and not volumes
    console = settings.STRATA_DATA_DIR / "console"
    assert not [p for p in console.glob("*.log") if any(u in p.name for u in made_uuids)]
    assert not VirtualMachine.objects.filter(uuid__in=made_uuids).exists()
    assert not PortForward.objects.exists()
