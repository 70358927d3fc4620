"""Environment operations: create, destroy, and the VM actions inside one.

Each checks the caller's role, validates its input (a ValidationError names
the field), takes the team's quota and the environment's lock with row locks
inside one transaction, writes the desired state and the Job, audits, and
enqueues the job's tasks on commit.  Nothing here waits for a VM.
"""

from django.db import IntegrityError, transaction
from django.db.models import Count, Sum

from cloud.models import Environment, Flavor, Host, Image, Job, VirtualMachine, VMState
from tenants.models import AuditEvent, Quota, slug_name
from workers.jobs import engine as jobs

from . import segments
from .access import require_act, team_row
from .errors import Busy, QuotaExceeded, ValidationError
from .scheduler import HostState, NoValidHost, Request, Scheduler

MAX_VMS_PER_REQUEST = 20


def _live_vms():
    return VirtualMachine.objects.exclude(state=VMState.DELETED)


def get_environment(user, team, env_id) -> Environment:
    """The team's environment, or NotFound (also for other teams' environments)."""
    return team_row(user, team, Environment.objects, env_id, "environment")


RESOURCES = ("vcpus", "memory_mb", "disk_gb")


def resize_reservations(vms) -> dict[int, dict[str, int]]:
    """What unfinished resizes hold beyond each VM's current flavor, by VM id.

    A resize reserves its flavor from the request until its job ends: until
    then the VM may end up with either flavor, so it counts as the larger of
    the two in each resource (and of all its pending flavors, if several are
    queued).  A failed or cancelled resize stops counting when its job ends.
    """
    pending = (
        Job.objects.filter(kind="vm_resize", vm__in=vms)
        .exclude(state__in=Job.machine.final_states)
        .select_related("vm__flavor")
    )
    names = [job.params.get("flavor") for job in pending]
    targets = {flavor.name: flavor for flavor in Flavor.objects.filter(name__in=names)}
    extra: dict[int, dict[str, int]] = {}
    for job in pending:
        target, current = targets.get(job.params.get("flavor")), job.vm.flavor
        if target is None:
            continue
        held = extra.setdefault(job.vm_id, dict.fromkeys(RESOURCES, 0))
        for resource in RESOURCES:
            grown = getattr(target, resource) - getattr(current, resource)
            held[resource] = max(held[resource], grown)
    return extra


def _add_reserved(totals: dict, held: dict[str, int]) -> None:
    for resource in RESOURCES:
        totals[resource] = totals.get(resource, 0) + held[resource]


def team_usage(team) -> dict[str, int]:
    """The team's VMs and their resources, counting what pending resizes reserve."""
    vms = _live_vms().for_team(team)
    totals = vms.aggregate(
        vms=Count("id"),
        vcpus=Sum("flavor__vcpus"),
        memory_mb=Sum("flavor__memory_mb"),
        disk_gb=Sum("flavor__disk_gb"),
    )
    usage = {k: v or 0 for k, v in totals.items()}
    for held in resize_reservations(vms).values():
        _add_reserved(usage, held)
    return usage


def _check_quota(team, field: str, **wanted: int) -> None:
    """Refuse (naming ``field``) unless the team's quota has room for ``wanted``."""
    # The row lock serialises concurrent requests of one team: each sees the
    # usage committed by the one before it.
    quota = Quota.objects.select_for_update().get(team=team)
    used = team_usage(team)
    over = [
        f"{resource}: {used[resource]} used + {need} requested > quota {getattr(quota, resource)}"
        for resource, need in wanted.items()
        # What is not asked for is not refused, even where the team is over its quota.
        if need > 0 and used[resource] + need > getattr(quota, resource)
    ]
    if over:
        raise QuotaExceeded({field: ["team quota exceeded: " + "; ".join(over)]})


def _host_states(hosts=None) -> list[HostState]:
    """The hosts (all, or the queryset ``hosts``) with what their live VMs use and reserve."""
    # Locking the hosts makes two concurrent placements or resizes see each other's VMs.
    hosts = list(
        (Host.objects.all() if hosts is None else hosts).select_for_update().order_by("pk")
    )
    live = _live_vms().filter(host__in=hosts)
    usage = {
        row["host"]: row
        for row in live.values("host").annotate(
            vcpus=Sum("flavor__vcpus"), memory_mb=Sum("flavor__memory_mb")
        )
    }
    reserved = resize_reservations(live)
    for vm_id, host_id in live.filter(pk__in=reserved).values_list("pk", "host"):
        _add_reserved(usage.setdefault(host_id, {"host": host_id}), reserved[vm_id])
    env_counts: dict[int, dict] = {}
    for row in live.values("host", "environment").annotate(n=Count("id")):
        env_counts.setdefault(row["host"], {})[row["environment"]] = row["n"]
    states = []
    for host in hosts:
        state = HostState(
            name=str(host.pk),
            cpus=host.cpus,
            memory_mb=host.memory_mb,
            cpu_overcommit=host.cpu_overcommit,
            ram_overcommit=host.ram_overcommit,
            enabled=host.status == Host.Status.ENABLED,
            used_vcpus=usage.get(host.pk, {}).get("vcpus") or 0,
            used_memory_mb=usage.get(host.pk, {}).get("memory_mb") or 0,
        )
        state.env_vms.update(env_counts.get(host.pk, {}))
        states.append(state)
    return states


def _validate_create(name, kind, vm_count, flavor, image) -> tuple[Flavor, Image]:
    errors: dict[str, list[str]] = {}
    try:
        slug_name(name if isinstance(name, str) else "")
    except ValidationError as exc:
        errors["name"] = exc.messages
    if kind not in Environment.Kind.values:
        errors["kind"] = [f"must be one of {', '.join(Environment.Kind.values)}"]
    if (
        isinstance(vm_count, bool)
        or not isinstance(vm_count, int)
        or not (1 <= vm_count <= MAX_VMS_PER_REQUEST)
    ):
        errors["vm_count"] = [f"must be a whole number from 1 to {MAX_VMS_PER_REQUEST}"]
    flavor_obj = (
        flavor if isinstance(flavor, Flavor) else Flavor.objects.filter(name=flavor).first()
    )
    if flavor_obj is None:
        errors["flavor"] = [f"no flavor named {flavor!r}"]
    image_obj = image if isinstance(image, Image) else Image.objects.filter(name=image).first()
    if image_obj is None:
        errors["image"] = [f"no image named {image!r}"]
    if errors:
        raise ValidationError(errors)
    return flavor_obj, image_obj


def take_environment_lock(env: Environment, job: Job, queue_if_busy: bool) -> bool:
    """Make ``job`` the holder of ``env``'s lock; True if it may start now."""
    # FOR NO KEY UPDATE, like the engine's locks: it serialises the requests and
    # workers that change the lock, not the foreign-key checks of rows naming it.
    env = Environment.objects.select_for_update(no_key=True).get(pk=env.pk)
    holder = env.lock_job
    if holder is not None and not holder.is_finished:
        if not queue_if_busy:
            raise Busy(holder)
        job.waits_for = holder
        job.save(update_fields=["waits_for"])
        return False
    Environment.objects.filter(pk=env.pk).update(lock_job=job)
    return True


def _vm_jobs(parent: Job, kind: str, vms) -> None:
    for vm in vms:
        jobs.create_job(
            team=parent.team,
            kind=kind,
            requested_by=parent.requested_by,
            parent=parent,
            environment=parent.environment,
            vm=vm,
            queue=vm.host.queue,
        )


def create_environment(
    *, user, team, name, kind, vm_count=1, flavor="small", image="debian-12", egress=None
) -> Job:
    """Create an environment of ``vm_count`` VMs on a segment of its own (when
    STRATA_SUBNET_POOL is set); returns the job that provisions it."""
    flavor, image = _validate_create(name, kind, vm_count, flavor, image)
    egress = segments.validate_egress(egress)
    require_act(user, team, kind)
    with transaction.atomic():
        _check_quota(
            team,
            "vm_count",
            vms=vm_count,
            vcpus=vm_count * flavor.vcpus,
            memory_mb=vm_count * flavor.memory_mb,
            disk_gb=vm_count * flavor.disk_gb,
        )
        try:
            with transaction.atomic():
                env = Environment.objects.create(
                    team=team, name=name, kind=kind, created_by=user, egress=egress
                )
        except IntegrityError as exc:
            raise ValidationError({"name": [f"an environment named {name!r} exists"]}) from exc
        scheduler = Scheduler(_host_states())
        hosts = {str(h.pk): h for h in Host.objects.all()}
        try:
            placed = [
                scheduler.place(Request(flavor.vcpus, flavor.memory_mb, image.name, kind, env.pk))
                for _ in range(vm_count)
            ]
        except NoValidHost as exc:
            raise ValidationError({"vm_count": [str(exc)]}) from exc
        segments.allocate_environment_subnet(env)
        vms = [
            VirtualMachine(
                environment=env,
                name=f"{name}-{i}",
                host=hosts[state.name],
                flavor=flavor,
                image=image,
            )
            for i, state in enumerate(placed, start=1)
        ]
        segments.address_vms(env, vms)
        for vm in vms:
            vm.save()
        parent = jobs.create_job(
            team=team,
            kind="create_environment",
            requested_by=user,
            environment=env,
            params={"vm_count": vm_count},
        )
        take_environment_lock(env, parent, queue_if_busy=False)
        _vm_jobs(parent, "provision_vm", vms)
        AuditEvent.record(
            "environment.create",
            team=team,
            actor=user,
            target=env,
            kind=kind,
            vm_count=vm_count,
            flavor=flavor.name,
            image=image.name,
        )
        jobs.start(parent)
    return parent


def destroy_environment(*, user, team, env_id, queue_if_busy=False) -> Job:
    env = get_environment(user, team, env_id)
    require_act(user, team, env.kind)
    with transaction.atomic():
        parent = jobs.create_job(
            team=team, kind="destroy_environment", requested_by=user, environment=env
        )
        may_start = take_environment_lock(env, parent, queue_if_busy)
        _vm_jobs(parent, "destroy_vm", _live_vms().filter(environment=env).select_related("host"))
        AuditEvent.record("environment.destroy", team=team, actor=user, target=env)
        if may_start:
            jobs.start(parent)
    return parent


# --- operations on one VM -------------------------------------------------------------

# The VM states each action may start from.
VM_ACTIONS = {
    "start": {VMState.STOPPED, VMState.ERROR},
    "stop": {VMState.RUNNING, VMState.ERROR},
    "reboot": {VMState.RUNNING},
    "snapshot": {VMState.RUNNING, VMState.STOPPED},
    "revert": {VMState.RUNNING, VMState.STOPPED},
    "delete_snapshot": {VMState.RUNNING, VMState.STOPPED},
    "resize": {VMState.STOPPED},
}


def get_vm(user, team, vm_id) -> VirtualMachine:
    rows = VirtualMachine.objects.select_related("environment", "host")
    return team_row(user, team, rows, vm_id, "VM")


def _validate_vm_action(vm: VirtualMachine, action: str, params: dict) -> dict:
    if action not in VM_ACTIONS:
        raise ValidationError({"action": [f"must be one of {', '.join(VM_ACTIONS)}"]})
    if vm.state not in VM_ACTIONS[action]:
        allowed = ", ".join(sorted(VM_ACTIONS[action]))
        raise ValidationError({"action": [f"cannot {action} a VM that is {vm.state} ({allowed})"]})
    clean = {}
    if action in {"snapshot", "revert", "delete_snapshot"}:
        name = params.get("snapshot")
        try:
            slug_name(name if isinstance(name, str) else "")
        except ValidationError as exc:
            raise ValidationError({"snapshot": exc.messages}) from exc
        clean["snapshot"] = name
    if action == "resize":
        clean["flavor"] = _validate_resize(vm, params.get("flavor")).name
    return clean


def _validate_resize(vm: VirtualMachine, name) -> Flavor:
    flavor = Flavor.objects.filter(name=name).first() if isinstance(name, str) else None
    if flavor is None:
        raise ValidationError({"flavor": [f"no flavor named {name!r}"]})
    if flavor == vm.flavor:
        raise ValidationError({"flavor": [f"the VM has flavor {flavor.name} already"]})
    if flavor.disk_gb != vm.flavor.disk_gb:
        # Resizing changes vCPUs and memory; the VM's disk keeps its size.
        raise ValidationError(
            {
                "flavor": [
                    f"flavor {flavor.name} has a {flavor.disk_gb} GiB disk and this VM's is "
                    f"{vm.flavor.disk_gb} GiB: resize keeps the disk, pick a flavor with "
                    "the same disk size"
                ]
            }
        )
    return flavor


def _reserve_resize(team, vm: VirtualMachine, flavor: Flavor) -> None:
    """Count ``flavor`` against the team's quota and the VM's host until the job ends.

    Refuses (naming ``flavor``) when either has no room for what the resize adds
    to what the VM already holds (its flavor and any resize queued before).
    """
    # Quota row first, then the host row: the order create_environment takes them in.
    Quota.objects.select_for_update().get(team=team)
    current = Flavor.objects.get(pk=VirtualMachine.objects.get(pk=vm.pk).flavor_id)
    held = resize_reservations(VirtualMachine.objects.filter(pk=vm.pk)).get(vm.pk, {})
    grows = {
        resource: max(
            getattr(flavor, resource) - getattr(current, resource) - held.get(resource, 0), 0
        )
        for resource in RESOURCES
    }
    _check_quota(team, "flavor", **grows)
    (host,) = _host_states(Host.objects.filter(pk=vm.host_id))
    if (grows["vcpus"] or grows["memory_mb"]) and not host.fits(grows["vcpus"], grows["memory_mb"]):
        raise ValidationError(
            {
                "flavor": [
                    f"host {vm.host.name} has no room for {flavor.name}: "
                    f"{host.used_vcpus} of {host.vcpu_limit} vCPUs and {host.used_memory_mb} "
                    f"of {host.memory_limit_mb} MiB taken (with its overcommit), "
                    f"the resize adds {grows['vcpus']} vCPUs and {grows['memory_mb']} MiB"
                ]
            }
        )


def vm_action(*, user, team, vm_id, action, queue_if_busy=False, **params) -> Job:
    vm = get_vm(user, team, vm_id)
    require_act(user, team, vm.environment.kind)
    clean = _validate_vm_action(vm, action, params)
    with transaction.atomic():
        if action == "resize":
            _reserve_resize(team, vm, Flavor.objects.get(name=clean["flavor"]))
        job = jobs.create_job(
            team=team,
            kind=f"vm_{action}",
            requested_by=user,
            environment=vm.environment,
            vm=vm,
            queue=vm.host.queue,
            params=clean,
        )
        may_start = take_environment_lock(vm.environment, job, queue_if_busy)
        AuditEvent.record(f"vm.{action}", team=team, actor=user, target=vm, **clean)
        if may_start:
            jobs.start(job)
    return job
