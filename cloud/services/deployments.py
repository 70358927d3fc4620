"""Releases of a team's services: deploy, promote, scale, roll back.

A deploy writes the service's desired spec, freezes it into a new immutable
Release, and starts one job per VM that rolls the release out there (ship
image, start, health-check, switch, stop old, prune).  Promote deploys the
exact release of one environment (same image digest, same spec) to the next
kind; rollback deploys the release before the current one.
"""

import fnmatch
import posixpath
import re

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from cloud.models import (
    Deployment,
    DeploymentState,
    DeploymentTarget,
    Environment,
    ExternalRegistry,
    Job,
    RegistryImage,
    Release,
    Service,
    VirtualMachine,
    VMState,
)
from tenants.models import AuditEvent, slug_name
from workers.drivers.guest import InvalidSpec, spread_replicas
from workers.drivers.guest.containers import HEALTH_LIMITS
from workers.drivers.guest.proxy_config import HEALTH_PATH_PATTERN as PROXY_HEALTH_PATH
from workers.drivers.guest.references import ImageReference, parse_reference
from workers.drivers.hypervisor.spec import SSH_GUEST_PORT
from workers.drivers.registry import (
    ImageNotInRegistry,
    LoginRefused,
    ManifestInvalid,
    RegistryDown,
)
from workers.jobs import engine as jobs
from workers.jobs.registry import registry_repository, registry_source

from .access import require_act
from .environments import get_environment, take_environment_lock
from .errors import ValidationError
from .secrets import require_resolvable

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
NEXT_KIND = {"dev": "staging", "staging": "prod"}
# The service fields a deploy may name; those it does not name are kept.
SPEC_FIELDS = (
    "image",
    "command",
    "env",
    "secret_env",
    "ports",
    "volumes",
    "cpu_limit",
    "memory_limit_mb",
    "restart_policy",
    "healthcheck",
)
MAX_PORTS = 10
MAX_VOLUMES = 10
MAX_REPLICAS = 100
MAX_ENTRIES = 100  # env variables, command arguments
MAX_TEXT = 32 * 1024  # one env value or argument
# A named volume (never a host path) and where it is mounted in the container.
VOLUME = re.compile(r"(?P<name>[a-z0-9][a-z0-9_.-]{0,62}):(?P<path>/[A-Za-z0-9_./-]{0,200})")
# A volume over these would hide the kernel's files from the container.
KERNEL_MOUNTS = ("/proc", "/sys", "/dev")
HEALTH_PATH = re.compile(r"/[\x21-\x7e]{0,200}")
HEALTH_KINDS = ("http", "tcp", "command")
HEALTH_KEYS = {
    "http": {"type", "path", "port"},
    "tcp": {"type", "port"},
    "command": {"type", "command"},
}
HEALTH_TIMINGS = tuple((key, low, high) for key, (low, high) in HEALTH_LIMITS.items())


def _port(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _number(value, low, high) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _text(value) -> bool:
    """A string PostgreSQL and a container's environment can hold as sent:
    no NUL, no lone surrogate, not huge."""
    if not isinstance(value, str) or "\0" in value or len(value) > MAX_TEXT:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _texts(values) -> bool:
    return isinstance(values, list) and len(values) <= MAX_ENTRIES and all(map(_text, values))


def _names_map(mapping, value_ok) -> bool:
    """A dict of environment variable NAMES to values ``value_ok`` accepts."""
    return (
        isinstance(mapping, dict)
        and len(mapping) <= MAX_ENTRIES
        and all(
            isinstance(k, str) and ENV_NAME.fullmatch(k) and value_ok(v) for k, v in mapping.items()
        )
    )


def _is_name(value) -> bool:
    try:
        slug_name(value if isinstance(value, str) else "")
    except ValidationError:
        return False
    return True


def _volume(value) -> bool:
    """NAME:/path with the path normalised (no "..", ".", "//" or trailing "/"),
    not the container's root and not among the kernel's files."""
    match = VOLUME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return False
    path = match["path"]
    return (
        posixpath.normpath(path) == path
        and "//" not in path
        and path != "/"
        and not any(path == top or path.startswith(top + "/") for top in KERNEL_MOUNTS)
    )


def _health_errors(health: dict) -> list[str]:
    """What is wrong with a healthcheck dict whose type is known."""
    kind = health["type"]
    problems = []
    unknown = set(health) - HEALTH_KEYS[kind] - {key for key, _, _ in HEALTH_TIMINGS}
    if unknown:
        problems.append(f"{kind} checks take no {', '.join(sorted(map(str, unknown)))}")
    if kind in ("http", "tcp") and not _port(health.get("port")):
        problems.append("port must be a TCP port")
    if kind == "http" and not (
        isinstance(health.get("path"), str) and HEALTH_PATH.fullmatch(health["path"])
    ):
        problems.append("path must start with / and hold no spaces")
    if kind == "command" and not (_texts(health.get("command")) and health["command"]):
        problems.append("command must be a non-empty list of strings")
    for key, low, high in HEALTH_TIMINGS:
        whole = key != "retries" or isinstance(health.get(key), int)
        if key in health and not (whole and _number(health[key], low, high)):
            problems.append(
                f"{key} must be {'a whole number ' if key == 'retries' else ''}"
                f"from {low:g} to {high:g}"
            )
    return problems


def allowed_image(text, team) -> ImageReference:
    """The reference, if well formed and one the team may run: its own
    ``<team>/...`` images (of the manager's engine, or of its namespace in
    Strata's registry), any image of a registry it registered, or those the
    operator's allow-list admits."""
    reference = parse_reference(text)
    canonical = str(reference)
    source = registry_source(reference, team.pk)
    own = reference.path.startswith(f"{team.name}/") and (
        not reference.host or registry_repository(reference) is not None
    )
    external = source is not None and source.login is not None
    if (
        not own
        and not external
        and not any(
            fnmatch.fnmatchcase(canonical, pattern) for pattern in settings.STRATA_IMAGE_ALLOWLIST
        )
    ):
        register = f", or register {reference.host} as a team registry" if reference.host else ""
        raise InvalidSpec(
            "image",
            f"{canonical} is not allowed for this team (use {team.name}/... or "
            f"{settings.STRATA_REGISTRY_ADDR}/{team.name}/... images{register})",
        )
    return reference


def registry_digest(image: str, team) -> str:
    """The manifest digest of an image of a registry (Strata's or one the team
    registered), resolved now and once: the release keeps it, and every VM and
    every promotion runs it.

    "" for an image of the manager's engine (the deploy job pins its ID), or
    when the registry does not answer: the job's "resolve image" step asks
    again, with retries.  The repository's image records in Strata's registry
    stay locked until the release is committed, as does the team's external
    registry row, so neither can be deleted while a release comes to pin them."""
    reference = parse_reference(image)
    source = registry_source(reference, team.pk)
    if source is None:
        return ""
    # Locked like the rows a delete locks, so neither the image nor the
    # registry it comes from goes while a release comes to pin it.
    if source.login is None:
        locked = RegistryImage.objects.filter(repository=source.repository)
        list(locked.select_for_update(no_key=True))
    elif not ExternalRegistry.objects.select_for_update(no_key=True).filter(
        team=team, host=source.addr
    ):
        raise ValidationError({"image": [f"{source.addr} was removed from the team's registries"]})
    try:
        return source.resolve_digest(reference.digest or reference.tag)
    except RegistryDown:
        return ""
    except (ImageNotInRegistry, ManifestInvalid) as exc:
        raise ValidationError({"image": [f"not in {source.name}: {exc}"]}) from exc
    except LoginRefused as exc:
        raise ValidationError({"image": [str(exc)]}) from exc


def validate_spec(spec: dict, team) -> dict:
    """The service spec, checked field by field; ValidationError names each bad field."""
    errors: dict[str, list[str]] = {}

    def bad(field, message):
        errors.setdefault(field, []).append(message)

    try:
        image = str(allowed_image(spec.get("image"), team))
    except InvalidSpec as exc:
        bad("image", str(exc).removeprefix("image: "))
    command = spec.get("command", [])
    if not _texts(command):
        bad("command", f"must be a list of at most {MAX_ENTRIES} strings (no NUL)")
    secret_env = spec.get("secret_env", {})
    if not _names_map(secret_env, _is_name):
        # Whether the names resolve depends on the target's scope: _roll_out checks.
        bad("secret_env", "must map NAMES to the names of the team's secrets")
    env = spec.get("env", {})
    if not _names_map(env, _text):
        bad("env", f"must map at most {MAX_ENTRIES} NAMES (letters, digits, _) to string values")
    ports = spec.get("ports", [])
    if not isinstance(ports, list) or len(ports) > MAX_PORTS or not all(_port(p) for p in ports):
        bad("ports", f"must be a list of at most {MAX_PORTS} TCP ports (1-65535)")
    elif SSH_GUEST_PORT in ports:
        bad("ports", f"port {SSH_GUEST_PORT} is the VM's SSH port and cannot be published")
    elif len(set(ports)) != len(ports):
        bad("ports", "must not repeat a port")
    volumes = spec.get("volumes", [])
    if (
        not isinstance(volumes, list)
        or len(volumes) > MAX_VOLUMES
        or not all(_volume(v) for v in volumes)
    ):
        bad(
            "volumes",
            "must be a list of NAME:/absolute/path (named volumes only, no host paths,"
            " not at / or under /proc, /sys, /dev)",
        )
    elif len({v.split(":", 1)[0] for v in volumes}) != len(volumes):
        bad("volumes", "must not repeat a volume name")
    if not _number(spec.get("cpu_limit", 1.0), 0.01, 64):
        bad("cpu_limit", "must be a number of CPUs from 0.01 to 64")
    if (
        not isinstance(spec.get("memory_limit_mb", 256), int)
        or not 6 <= spec.get("memory_limit_mb", 256) <= 65536
    ):
        bad("memory_limit_mb", "must be a whole number of MiB from 6 to 65536")
    if spec.get("restart_policy", "unless-stopped") not in Service.RestartPolicy.values:
        bad("restart_policy", f"must be one of {', '.join(Service.RestartPolicy.values)}")
    health = spec.get("healthcheck", {})
    if not isinstance(health, dict):
        bad("healthcheck", "must be an object ({} for none)")
    elif health and health.get("type") not in HEALTH_KINDS:
        bad("healthcheck", f"type must be one of {', '.join(HEALTH_KINDS)}")
    elif health:
        for problem in _health_errors(health):
            bad("healthcheck", problem)
    if (
        "healthcheck" not in errors
        and ports
        and health.get("type") == "http"
        and not PROXY_HEALTH_PATH.fullmatch(health["path"])
    ):
        # The guest's HAProxy, which owns published ports, checks the same path.
        bad("healthcheck", "behind published ports the path holds only letters, digits, . _ ~ / -")
    if errors:
        raise ValidationError(errors)
    return {
        "image": image,
        "command": command,
        "env": env,
        # Names only: the values are read from the encrypted secrets at deploy time.
        "secret_env": secret_env,
        "ports": ports,
        "volumes": volumes,
        "cpu_limit": float(spec.get("cpu_limit", 1.0)),
        "memory_limit_mb": spec.get("memory_limit_mb", 256),
        "restart_policy": spec.get("restart_policy", "unless-stopped"),
        "healthcheck": health,
    }


def _validate_replicas(replicas) -> int:
    if (
        isinstance(replicas, bool)
        or not isinstance(replicas, int)
        or not 0 <= replicas <= MAX_REPLICAS
    ):
        raise ValidationError({"replicas": [f"must be a whole number from 0 to {MAX_REPLICAS}"]})
    return replicas


def _running_vms(env: Environment) -> list[VirtualMachine]:
    vms = list(
        VirtualMachine.objects.filter(environment=env, state=VMState.RUNNING)
        .select_related("host")
        .order_by("name")
    )
    if not vms:
        raise ValidationError({"environment": [f"{env.name} has no running VM to deploy to"]})
    return vms


def _get_service(env: Environment, name: str) -> Service:
    service = Service.objects.filter(environment=env, name=name).first()
    if service is None:
        # A name in the request's body that names nothing is bad input, like target_env.
        raise ValidationError({"service_name": [f"no service named {name!r} in {env.name}"]})
    return service


def _current_release(service: Service) -> Release | None:
    deployment = (
        Deployment.objects.filter(release__service=service, state=DeploymentState.SUCCEEDED)
        .select_related("release")
        .order_by("-created_at")
        .first()
    )
    return deployment.release if deployment else None


def _roll_out(
    user, env: Environment, release: Release, replicas: int, kind: str, queue_if_busy: bool
) -> Job:
    """The Deployment and its jobs: a parent, and a child per VM with its share."""
    require_resolvable(env, release.spec.get("secret_env", {}))
    vms = _running_vms(env)
    try:
        shares = spread_replicas(replicas, [str(vm.pk) for vm in vms])
    except InvalidSpec as exc:
        raise ValidationError({"replicas": [str(exc)]}) from exc
    deployment = Deployment.objects.create(environment=env, release=release)
    DeploymentTarget.objects.bulk_create(
        DeploymentTarget(deployment=deployment, vm=vm) for vm in vms
    )
    parent = jobs.create_job(
        team=env.team,
        kind="deploy",
        requested_by=user,
        environment=env,
        params={
            "deployment": deployment.pk,
            "service": release.service.name,
            "release": release.version,
            "replicas": replicas,
            "operation": kind,
        },
    )
    for vm in vms:
        jobs.create_job(
            team=env.team,
            kind="deploy_vm",
            requested_by=user,
            parent=parent,
            environment=env,
            vm=vm,
            queue=vm.host.queue,
            params={"deployment": deployment.pk, "replicas": shares[str(vm.pk)]},
        )
    if take_environment_lock(env, parent, queue_if_busy):
        jobs.start(parent)
    return parent


def _new_release(service: Service, spec: dict, user, *, digest="", promoted_from=None) -> Release:
    version = (service.releases.aggregate(v=Max("version"))["v"] or 0) + 1
    return Release.objects.create(
        service=service,
        version=version,
        spec=spec,
        image_digest=digest,
        promoted_from=promoted_from,
        created_by=user,
    )


def deploy(*, user, team, env_id, service_name, replicas=None, queue_if_busy=False, **spec) -> Job:
    """A new release of the service; every field the call leaves out keeps the
    service's current value (a new service starts from the defaults)."""
    env = get_environment(user, team, env_id)
    require_act(user, team, env.kind)
    try:
        slug_name(service_name if isinstance(service_name, str) else "")
    except ValidationError as exc:
        raise ValidationError({"service_name": exc.messages}) from exc
    with transaction.atomic():
        # Locked, so two deploys of one service each merge onto what the other wrote.
        # Only the service's row: its default ordering joins the environment and
        # team, whose rows a plain FOR UPDATE would lock too, ahead of take_environment_lock.
        current = (
            Service.objects.select_for_update(of=("self",), no_key=True)
            .filter(environment=env, name=service_name)
            .first()
        )
        if current is not None:
            spec = {**{name: getattr(current, name) for name in SPEC_FIELDS}, **spec}
            replicas = current.replicas if replicas is None else replicas
        clean = validate_spec(spec, team)
        replicas = _validate_replicas(1 if replicas is None else replicas)
        service, _ = Service.objects.update_or_create(
            environment=env, name=service_name, defaults={**clean, "replicas": replicas}
        )
        digest = registry_digest(clean["image"], team)
        release = _new_release(service, clean, user, digest=digest)
        job = _roll_out(user, env, release, replicas, "deploy", queue_if_busy)
        AuditEvent.record(
            "service.deploy",
            team=team,
            actor=user,
            target=service,
            release=release.version,
            image=clean["image"],
            digest=digest,
            replicas=replicas,
        )
    return job


def promote(*, user, team, env_id, service_name, target_env=None, queue_if_busy=False) -> Job:
    """Deploy the release running in ``env`` (same digest and spec) to the next kind."""
    source = get_environment(user, team, env_id)
    if source.kind not in NEXT_KIND:
        raise ValidationError({"environment": ["prod is the last stage; nothing to promote to"]})
    next_kind = NEXT_KIND[source.kind]
    candidates = Environment.objects.for_team(team).filter(kind=next_kind)
    if target_env is not None:
        candidates = candidates.filter(name=target_env)
    targets = list(candidates[:2])
    if len(targets) != 1:
        raise ValidationError(
            {
                "target_env": [
                    f"name one {next_kind} environment to promote to"
                    if targets
                    else f"the team has no {next_kind} environment named so"
                ]
            }
        )
    target = targets[0]
    require_act(user, team, target.kind)
    service = _get_service(source, service_name)
    release = _current_release(service)
    if release is None or not release.image_digest:
        raise ValidationError(
            {"service_name": [f"{service_name} has no successful release in {source.name}"]}
        )
    with transaction.atomic():
        target_service, _ = Service.objects.update_or_create(
            environment=target,
            name=service_name,
            defaults={**release.spec, "replicas": service.replicas},
        )
        promoted = _new_release(
            target_service, release.spec, user, digest=release.image_digest, promoted_from=release
        )
        job = _roll_out(user, target, promoted, service.replicas, "promote", queue_if_busy)
        AuditEvent.record(
            "service.promote",
            team=team,
            actor=user,
            target=target_service,
            source=str(source),
            release=promoted.version,
            digest=release.image_digest,
        )
    return job


def scale(*, user, team, env_id, service_name, replicas, queue_if_busy=False) -> Job:
    env = get_environment(user, team, env_id)
    require_act(user, team, env.kind)
    replicas = _validate_replicas(replicas)
    service = _get_service(env, service_name)
    release = _current_release(service)
    if release is None:
        raise ValidationError(
            {"service_name": [f"{service_name} has no successful release to scale"]}
        )
    with transaction.atomic():
        Service.objects.filter(pk=service.pk).update(replicas=replicas)
        job = _roll_out(user, env, release, replicas, "scale", queue_if_busy)
        AuditEvent.record(
            "service.scale",
            team=team,
            actor=user,
            target=service,
            replicas=replicas,
            release=release.version,
        )
    return job


def rollback(*, user, team, env_id, service_name, queue_if_busy=False) -> Job:
    """Deploy again the release that ran before the current one."""
    env = get_environment(user, team, env_id)
    require_act(user, team, env.kind)
    service = _get_service(env, service_name)
    current = _current_release(service)
    previous = (
        Release.objects.filter(
            service=service,
            deployments__state__in=[DeploymentState.SUCCEEDED, DeploymentState.SUPERSEDED],
        )
        .exclude(pk=getattr(current, "pk", None))
        .order_by("-version")
        .first()
    )
    if previous is None:
        raise ValidationError(
            {"service_name": [f"{service_name} has no earlier release to go back to"]}
        )
    with transaction.atomic():
        job = _roll_out(user, env, previous, service.replicas, "rollback", queue_if_busy)
        AuditEvent.record(
            "service.rollback",
            team=team,
            actor=user,
            target=service,
            release=previous.version,
            from_release=getattr(current, "version", None),
        )
    return job
