"""Rolling a release out to one VM, and finishing the deployment it belongs to.

The per-VM job reads like Kamal's deploy: resolve the image to its digest,
publish the service's ports, roll out (ship image, start, health-check,
switch, stop old, prune: each logged), then record the containers.

A deployment over several VMs is all or nothing: when one VM's rollout fails,
the VMs where the new release already serves go back to the previous one
(a ``deploy_revert`` job), and each VM's typed outcome is recorded in a
DeploymentTarget, from which the deployment's outcome follows.
"""

import logging
from functools import cache

import docker
from django.conf import settings
from django.db import transaction

from cloud.models import (
    Container,
    Deployment,
    DeploymentState,
    DeploymentTarget,
    Environment,
    Job,
    JobState,
    Release,
    Secret,
)
from tenants.models import AuditEvent
from workers.drivers.guest import (
    HealthCheck,
    InvalidSpec,
    RolloutFailed,
    RolloutReport,
    ServiceSpec,
    list_containers,
    roll_out,
)
from workers.drivers.guest.guest_proxy import RESTARTED
from workers.drivers.guest.references import ImageReference, parse_reference
from workers.drivers.guest.rollout import withdraw
from workers.drivers.registry import ImageNotInRegistry, LoginRefused, ManifestInvalid
from workers.jobs import engine as jobs
from workers.jobs.adapters import connect, domain_spec, forward_port, guest_proxy, hypervisor
from workers.jobs.engine import Plan, Step, StepContext, UserError, register
from workers.jobs.registry import RegistrySource, manager_image_id, registry_source
from workers.jobs.steps.vm import vm_of

Outcome = DeploymentTarget.Outcome


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
        image=vm_image(release),
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


def release_source(release: Release) -> RegistrySource | None:
    team_id = Environment.objects.values_list("team_id", flat=True).get(
        pk=release.service.environment_id
    )
    return registry_source(parse_reference(release.spec["image"]), team_id)


def vm_image(release: Release) -> str:
    """What the VMs run, as the manager's engine names it: the image ID the
    release pinned, or for an image of a registry the ID of its pinned digest
    (pulled into the manager's engine again if it lost it)."""
    source = release_source(release)
    if source is None:
        return release.image_digest
    try:
        return manager_image_id(local_engine(), source, release.image_digest)
    except (ImageNotInRegistry, ManifestInvalid) as exc:
        raise UserError(f"{release.spec['image']} is gone from {source.name}: {exc}") from exc
    except LoginRefused as exc:
        raise UserError(str(exc)) from exc


def resolve_registry_digest(source: RegistrySource, reference: ImageReference) -> str:
    """The digest of an image of a registry; RegistryDown is transient (retried)."""
    try:
        return source.resolve_digest(reference.digest or reference.tag)
    except (ImageNotInRegistry, ManifestInvalid) as exc:
        raise UserError(f"{reference} is not in {source.name}: {exc}") from exc
    except LoginRefused as exc:
        raise UserError(str(exc)) from exc


def resolve_image(ctx: StepContext) -> None:
    """Pin the release to a digest, once (an image of a registry to its
    manifest digest, unless the deploy already did; one of the manager's
    engine to its image ID), then have the manager's engine hold it: the VMs
    receive it from there over SSH, never from a registry."""
    with transaction.atomic():
        release = Release.objects.select_for_update().get(pk=deployment_of(ctx).release_id)
        reference = parse_reference(release.spec["image"])
        source = release_source(release)
        if release.image_digest:
            ctx.log(f"{release.spec['image']} is {release.image_digest}")
        else:
            release.image_digest = (
                resolve_registry_digest(source, reference)
                if source is not None
                else engine_image_id(release.spec["image"])
            )
            Release.objects.filter(pk=release.pk).update(image_digest=release.image_digest)
            ctx.log(f"{release.spec['image']} resolved to {release.image_digest}")
    if source is not None:
        ctx.log(f"the manager's engine holds it as {vm_image(release)}")


def publish_ports(ctx: StepContext) -> None:
    """Forward a loopback port on the host to each published port of the VM."""
    vm, release = vm_of(ctx), deployment_of(ctx).release
    forwards = [forward_port(vm, port) for port in release.spec["ports"]]
    for forward in forwards:
        ctx.log(f"127.0.0.1:{forward.host_port} -> {vm.name}:{forward.guest_port}")
    if not forwards:
        return  # nothing to add to the domain: the hypervisor is left alone
    with hypervisor(vm) as hv:
        # Kept in the definition for the next start, added to the running QEMU now.
        hv.guests.define(domain_spec(vm, hv))
        for forward in forwards:
            hv.guests.add_live_port_forward(str(vm.uuid), forward.host_port, forward.guest_port)


def set_outcome(ctx: StepContext, outcome: str, detail: str = "") -> None:
    DeploymentTarget.objects.update_or_create(
        deployment_id=ctx.job.params["deployment"],
        vm_id=ctx.job.vm_id,
        defaults={"outcome": outcome, "detail": detail},
    )


def run_rollout(ctx: StepContext, vm, release: Release, replicas: int) -> RolloutReport:
    """Roll ``release`` out on ``vm``, every step in the job's log; RolloutFailed
    (after the rollout's own rollback on this VM) is logged and raised."""
    secrets = secret_values(release)
    ctx.secrets.update(secrets.values())  # masked in the job's log and error
    spec = service_spec(release, vm, replicas, secrets)
    try:
        report = roll_out(
            connect(vm),
            spec,
            release_id(release),
            local_engine=local_engine(),
            health_seconds=settings.STRATA_ROLLOUT_HEALTH_SECONDS,
            proxy=guest_proxy(),
            log=logging.getLogger(f"strata.deploy.{ctx.job.pk}"),
        )
    except RolloutFailed as exc:
        detail = exc.health.last_output if exc.health else ""
        logs = exc.health.logs_tail if exc.health else ""
        ctx.log(
            f"rolled back at {exc.step}: {exc.reason}\nlast health output: {detail}\n"
            f"container logs:\n{logs}"
        )
        raise
    for step in report.steps:
        ctx.log(f"{step.name}: {step.detail} ({step.seconds:.2f} s)")
    if report.proxy is not None:
        ctx.log(f"guest proxy: {report.proxy}")
        note_proxy_restart(vm, report.proxy)
    return report


def note_proxy_restart(vm, outcome: str) -> bool:
    """Audit a guest proxy found dead and started again (by a rollout or the reconciler)."""
    if outcome != RESTARTED:
        return False
    AuditEvent.record("proxy.restarted", team=vm.environment.team, target=vm, outcome=outcome)
    return True


def roll_out_release(ctx: StepContext) -> None:
    vm, deployment = vm_of(ctx), deployment_of(ctx)
    release = Release.objects.select_related("service").get(pk=deployment.release_id)
    try:
        report = run_rollout(ctx, vm, release, ctx.job.params["replicas"])
    except RolloutFailed as exc:
        serving = exc.serving_release or "nothing"
        set_outcome(ctx, Outcome.ROLLED_BACK, f"rolled back at {exc.step}: {exc.reason}")
        raise UserError(f"rolled back: {exc.reason}; serving {serving}") from exc
    set_outcome(ctx, Outcome.SUCCEEDED, f"serving {release_id(release)}")
    if report.previous_release:
        ctx.log(f"{report.previous_release} served before")


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
    """The deployment's outcome is its VMs': succeeded everywhere (superseding
    the one before), or else every VM the new release reached goes back."""
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
    for child in job.children.exclude(state=JobState.SUCCEEDED).exclude(vm=None):
        # A VM whose job ended without a rollout outcome: what it serves is not known.
        target, _ = DeploymentTarget.objects.get_or_create(deployment=deployment, vm=child.vm)
        if target.outcome == Outcome.PENDING:
            target.outcome, target.detail = Outcome.FAILED, child.error or child.state
            target.save(update_fields=["outcome", "detail", "updated_at"])
    reached = list(deployment.targets.filter(outcome=Outcome.SUCCEEDED).select_related("vm"))
    if reached:
        revert = start_revert(job, deployment, reached)
        note = f"; putting {len(reached)} VM(s) back (job {revert.pk})"
        Job.objects.filter(pk=job.pk).update(error=job.error + note)
        return
    settle(deployment)


def previous_deployment(deployment: Deployment) -> Deployment | None:
    """The service's last successful deployment: what the environment goes back to."""
    return (
        Deployment.objects.filter(
            release__service=deployment.release.service, state=DeploymentState.SUCCEEDED
        )
        .exclude(pk=deployment.pk)
        .select_related("release")
        .order_by("-created_at")
        .first()
    )


def start_revert(job: Job, deployment: Deployment, reached: list[DeploymentTarget]) -> Job:
    """A job that puts the previous release back on ``reached``; it takes over the
    environment's lock and the jobs waiting for ``job``, so nothing runs between."""
    previous = previous_deployment(deployment)
    shares = {}
    if previous is not None:
        shares = {
            child.vm_id: child.params["replicas"]
            for child in Job.objects.filter(kind="deploy_vm", params__deployment=previous.pk)
        }
    revert = jobs.create_job(
        team=job.team,
        kind="deploy_revert",
        requested_by=job.requested_by,
        environment_id=job.environment_id,
        params={
            "deployment": deployment.pk,
            "release": previous.release_id if previous else None,
        },
    )
    for target in reached:
        jobs.create_job(
            team=job.team,
            kind="revert_vm",
            requested_by=job.requested_by,
            parent=revert,
            environment_id=job.environment_id,
            vm=target.vm,
            queue=target.vm.host.queue,
            params={"deployment": deployment.pk, "replicas": shares.get(target.vm_id, 0)},
        )
    Environment.objects.filter(lock_job=job).update(lock_job=revert)
    Job.objects.filter(waits_for=job).update(waits_for=revert)
    jobs.start(revert)
    return revert


def revert_release(ctx: StepContext) -> None:
    """Put back on this VM what the environment served before the deployment."""
    vm, deployment = vm_of(ctx), deployment_of(ctx)
    previous_id = Job.objects.get(pk=ctx.job.parent_id).params["release"]
    if previous_id is None:
        service_id = str(deployment.release.service_id)
        ctx.log(
            withdraw(connect(vm), service_id, release_id(deployment.release), guest_proxy())
        )
        return
    previous = Release.objects.select_related("service").get(pk=previous_id)
    try:
        run_rollout(ctx, vm, previous, ctx.job.params["replicas"])
    except RolloutFailed as exc:
        raise UserError(f"could not go back to {release_id(previous)}: {exc.reason}") from exc


def finish_revert(job: Job) -> None:
    """Each VM put back is reverted, each other one revert_failed; then the deployment settles."""
    deployment = Deployment.objects.filter(pk=job.params["deployment"]).first()
    if deployment is None:
        return
    previous = Release.objects.filter(pk=job.params["release"]).first()
    back_to = release_id(previous) if previous else "no release (it was the first)"
    for child in job.children.all():
        reverted = child.state == JobState.SUCCEEDED
        DeploymentTarget.objects.filter(deployment=deployment, vm_id=child.vm_id).update(
            outcome=Outcome.REVERTED if reverted else Outcome.REVERT_FAILED,
            detail=f"back to {back_to}" if reverted else child.error or child.state,
        )
    settle(deployment)


def settle(deployment: Deployment) -> None:
    """Rolled back when every VM serves what it served before, else failed; the
    reason says what each VM came to."""
    targets = list(deployment.targets.select_related("vm").order_by("vm__name"))
    unknown = {Outcome.FAILED, Outcome.REVERT_FAILED, Outcome.PENDING}
    state = (
        DeploymentState.FAILED
        if any(t.outcome in unknown for t in targets)
        else DeploymentState.ROLLED_BACK
    )
    reason = "; ".join(f"{t.vm.name}: {t.outcome}: {t.detail}" for t in targets)
    deployment.move_to(state, reason=reason)


register(Plan("deploy", (), on_finish=finish_deployment))
register(
    Plan(
        "revert_vm",
        (Step("go back", revert_release), Step("record containers", record_containers)),
    )
)
register(Plan("deploy_revert", (), on_finish=finish_revert))
