"""Rolling a release out to one VM, and finishing the deployment it belongs to.

The per-VM job reads like Kamal's deploy: resolve the image to its digest,
publish the service's ports, roll out (ship image, start, health-check,
switch, stop old, prune: each logged), then record the containers.
"""

import logging
from functools import cache

import docker
from django.db import transaction

from cloud.models import (
    Container,
    Deployment,
    DeploymentState,
    Job,
    JobState,
    PortForward,
    Release,
    Secret,
)
from workers.hypervisor import find_free_loopback_ports
from workers.jobs import Plan, Step, StepContext, UserError, register
from workers.remote import (
    HealthCheck,
    InvalidSpec,
    RolloutFailed,
    ServiceSpec,
    list_containers,
    roll_out,
)
from workers.remote.references import parse_reference
from workers.steps.vm import connect, domain_spec, hypervisor, vm_of


@cache
def local_engine() -> docker.DockerClient:
    """The manager's own Docker engine, where registry-less images come from."""
    return docker.from_env()


def deployment_of(ctx: StepContext) -> Deployment:
    return Deployment.objects.select_related("release__service", "environment").get(
        pk=ctx.job.params["deployment"]
    )


def release_id(release: Release) -> str:
    return f"v{release.version}"


def secret_values(release: Release) -> dict[str, str]:
    """The release's secret environment, decrypted now (never stored in the spec):
    each name resolved in the scope of the environment it is deployed to."""
    wanted = release.spec.get("secret_env", {})
    values = Secret.objects.resolve(release.service.environment, wanted.values())
    missing = sorted(set(wanted.values()) - set(values))
    if missing:
        raise UserError(f"secrets gone since the release was made: {', '.join(missing)}")
    return {var: values[name] for var, name in wanted.items()}


def service_spec(release: Release, vm, replicas: int, secrets: dict[str, str]) -> ServiceSpec:
    spec = release.spec
    health = spec.get("healthcheck") or {}
    timing = {k: health[k] for k in ("interval", "timeout", "retries") if k in health}
    check = None
    if health.get("type") == "http":
        check = HealthCheck.http(health.get("path", "/"), health["port"], **timing)
    elif health.get("type") == "tcp":
        check = HealthCheck.tcp(health["port"], **timing)
    elif health.get("type") == "command":
        check = HealthCheck.exec(*health["command"], **timing)
    return ServiceSpec(
        name=release.service.name,
        # The digest, not the tag: what was tested is exactly what runs.
        image=release.image_digest,
        service_id=str(release.service_id),
        environment_id=str(vm.environment_id),
        command=tuple(spec["command"]),
        env={**spec["env"], **secrets},
        ports={port: port for port in spec["ports"]},
        # Named per service, so two services never share a volume by accident.
        volumes={
            f"strata-{release.service_id}-{name}": path
            for name, path in (v.split(":", 1) for v in spec.get("volumes", []))
        },
        nano_cpus=int(spec["cpu_limit"] * 1e9),
        memory_bytes=spec["memory_limit_mb"] * 2**20,
        restart_policy=spec["restart_policy"],
        replicas=replicas,
        health=check,
    )


def engine_image_id(text: str) -> str:
    """The id of the image the manager's engine holds under exactly this reference.

    Only a reference that passed the grammar reaches the engine's API, and the
    image found must carry it: the engine would also answer an id prefix.
    """
    try:
        reference = parse_reference(text)
        found = local_engine().api.inspect_image(str(reference))
    except InvalidSpec as exc:
        raise UserError(f"image {text!r} is not a valid reference: {exc}") from exc
    except docker.errors.ImageNotFound:
        found = {}
    names = [*(found.get("RepoTags") or []), *(found.get("RepoDigests") or [])]
    if not any(reference.matches(name) for name in names):
        raise UserError(f"image {str(reference)!r} is not in the manager's Docker engine")
    return found["Id"]


def resolve_image(ctx: StepContext) -> None:
    """Pin the release to the manager engine's image id, once."""
    with transaction.atomic():
        release = Release.objects.select_for_update().get(pk=deployment_of(ctx).release_id)
        if release.image_digest:
            ctx.log(f"{release.spec['image']} is {release.image_digest}")
            return
        image_id = engine_image_id(release.spec["image"])
        Release.objects.filter(pk=release.pk).update(image_digest=image_id)
    ctx.log(f"{release.spec['image']} resolved to {image_id}")


def publish_ports(ctx: StepContext) -> None:
    """Forward a loopback port on the host to each published port of the VM."""
    vm, release = vm_of(ctx), deployment_of(ctx).release
    for port in release.spec["ports"]:
        forward = PortForward.objects.filter(vm=vm, guest_port=port).first()
        if forward is None:
            taken = PortForward.objects.filter(host=vm.host).values_list("host_port", flat=True)
            host_port = find_free_loopback_ports(1, exclude=set(taken))[0]
            forward = PortForward.objects.create(
                host=vm.host, host_port=host_port, vm=vm, guest_port=port
            )
        ctx.log(f"127.0.0.1:{forward.host_port} -> {vm.name}:{port}")
    with hypervisor(vm) as hv:
        # Kept in the definition for the next start, added to the running QEMU now.
        hv.define(domain_spec(vm, hv))
        for forward in PortForward.objects.filter(vm=vm, guest_port__in=release.spec["ports"]):
            hv.add_live_port_forward(str(vm.uuid), forward.host_port, forward.guest_port)


def roll_out_release(ctx: StepContext) -> None:
    vm, deployment = vm_of(ctx), deployment_of(ctx)
    release = Release.objects.select_related("service").get(pk=deployment.release_id)
    secrets = secret_values(release)
    ctx.secrets.update(secrets.values())  # masked in the job's log and error
    spec = service_spec(release, vm, ctx.job.params["replicas"], secrets)
    log = logging.getLogger(f"strata.deploy.{ctx.job.pk}")
    try:
        report = roll_out(
            connect(vm), spec, release_id(release), local_engine=local_engine(), log=log
        )
    except RolloutFailed as exc:
        detail = exc.health.last_output if exc.health else ""
        logs = exc.health.logs_tail if exc.health else ""
        ctx.log(
            f"rolled back at {exc.step}: {exc.reason}\nlast health output: {detail}\n"
            f"container logs:\n{logs}"
        )
        raise UserError(f"rolled back: {exc.reason}; serving {exc.serving_release}") from exc
    for step in report.steps:
        ctx.log(f"{step.name}: {step.detail} ({step.seconds:.2f} s)")
    if report.switch_seconds is not None:
        ctx.log(f"port switch took {report.switch_seconds:.3f} s")


def record_containers(ctx: StepContext) -> None:
    vm, deployment = vm_of(ctx), deployment_of(ctx)
    service = deployment.release.service
    engine = connect(vm).docker()
    running = list_containers(engine, service_id=str(service.pk))
    releases = {release_id(r): r for r in service.releases.all()}
    with transaction.atomic():
        Container.objects.filter(vm=vm, service=service).delete()
        for info in running:
            if info.release_id not in releases or info.role != "serving":
                continue
            Container.objects.create(
                vm=vm,
                service=service,
                release=releases[info.release_id],
                engine_id=info.id,
                name=info.name,
                state="running" if info.state == "running" else "exited",
                health="healthy" if info.state == "running" else "unhealthy",
            )
    ctx.log(f"{len(running)} container(s) of {service.name} on {vm.name}")


register(
    Plan(
        "deploy_vm",
        (
            Step("resolve image", resolve_image),
            Step("publish ports", publish_ports),
            Step("roll out", roll_out_release),
            Step("record containers", record_containers),
        ),
    )
)


def finish_deployment(job: Job) -> None:
    """The deployment's outcome is its jobs': succeeded (superseding the one
    before), rolled back (a health check failed), or failed."""
    deployment = Deployment.objects.filter(pk=job.params["deployment"]).first()
    if deployment is None:
        return  # it went with its environment, destroyed before this job could start
    if deployment.state == DeploymentState.PENDING:
        deployment.move_to(DeploymentState.ROLLING_OUT)
    if job.state == JobState.SUCCEEDED:
        Deployment.objects.filter(
            release__service=deployment.release.service, state=DeploymentState.SUCCEEDED
        ).exclude(pk=deployment.pk).update(state=DeploymentState.SUPERSEDED)
        deployment.move_to(DeploymentState.SUCCEEDED)
        return
    rolled_back = "rolled back" in job.error
    deployment.move_to(
        DeploymentState.ROLLED_BACK if rolled_back else DeploymentState.FAILED, reason=job.error
    )


register(Plan("deploy", (), on_finish=finish_deployment))
