"""Celery tasks.  They take ids, re-read state, and hold no business rules."""

import socket

from django.utils import timezone

from workers.celery import app


@app.task(name="strata.ping")
def ping(token: str) -> dict:
    """Answer with who ran it: a worker health check and a broker round trip."""
    return {"token": token, "worker": socket.gethostname(), "at": timezone.now().isoformat()}


@app.task(bind=True, name="strata.run_job", max_retries=None)
def run_job(self, job_id: str) -> None:
    """Run or resume one job; the message carries only its id."""
    from workers.jobs import engine as jobs

    try:
        jobs.run(job_id)
    except jobs.RetryLater as later:
        raise self.retry(countdown=later.countdown) from later


@app.task(name="strata.reconcile")
def reconcile() -> int:
    """Beat's entry point: fan out one reconcile per enabled host, on its queue."""
    from cloud.models import Host
    from workers.jobs.reconcile import resend_stuck_jobs

    resend_stuck_jobs()
    hosts = list(Host.objects.exclude(status=Host.Status.DISABLED))
    for host in hosts:
        reconcile_host.apply_async(args=[host.pk], queue=host.queue)
    return len(hosts)


@app.task(name="strata.registry_gc")
def registry_gc() -> int:
    """Beat's entry point: delete the registry's unused old images (blobs are
    freed by ``manage.py registry_gc --blobs``, with the registry stopped)."""
    from cloud.services.registry_gc import collect_unused_images

    return len(collect_unused_images())


@app.task(name="strata.reconcile_host", autoretry_for=(ConnectionError,), retry_backoff=True)
def reconcile_host(host_id: int) -> dict:
    from workers.jobs.reconcile import reconcile_host as run

    return run(host_id)


@app.task(name="strata.build_template")
def build_template(host_id: int, image_id: int, flavor_id: int) -> str:
    """Build a template on its host's queue (the worker runs where the state file goes)."""
    from cloud.models import Flavor, Host, Image
    from workers.jobs.templates import build_template as build

    template = build(
        Host.objects.get(pk=host_id),
        Image.objects.get(pk=image_id),
        Flavor.objects.get(pk=flavor_id),
    )
    return template.name


@app.task(name="strata.container_logs")
def container_logs(container_id: int, tail: int, since: float | None) -> str:
    """A container's log tail, read from its VM's engine (the web layer never SSHes)."""
    from cloud.models import Container
    from workers.drivers.guest import container_logs as read_logs
    from workers.jobs.adapters import connect

    container = Container.objects.select_related("vm").get(pk=container_id)
    return read_logs(connect(container.vm).docker(), container.engine_id, tail=tail, since=since)


@app.task(name="strata.container_stats")
def container_stats(container_id: int) -> dict:
    from dataclasses import asdict

    from cloud.models import Container
    from workers.drivers.guest import container_stats as sample
    from workers.jobs.adapters import connect

    container = Container.objects.select_related("vm").get(pk=container_id)
    return asdict(sample(connect(container.vm).docker(), container.engine_id))
