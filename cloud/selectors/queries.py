"""Read-only queries the portal shows: summaries for the dashboard, the
environment, VM and job pages.  Team-owned rows come only through ``for_team``;
hosts, flavors and images are the shared catalogue.  Nothing here writes."""

from collections import Counter
from dataclasses import dataclass, field

from django.db.models import Prefetch, Q, Sum

from cloud.models import (
    Container,
    Deployment,
    DeploymentState,
    Environment,
    Host,
    Job,
    JobState,
    JobStep,
    Service,
    VirtualMachine,
    VMState,
)
from cloud.services.deployments import NEXT_KIND
from cloud.services.environments import team_usage
from tenants.models import Quota

ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class Usage:
    """An amount used out of a capacity, for a bar."""

    label: str
    used: float
    capacity: float
    unit: str = ""
    # Where a tick marks a softer limit inside the capacity (a host's physical size).
    mark: float | None = None

    @property
    def percent(self) -> float:
        if self.capacity <= 0:
            return 100.0 if self.used else 0.0
        return min(self.used / self.capacity * 100, 100.0)

    @property
    def mark_percent(self) -> float | None:
        if self.mark is None or self.capacity <= 0:
            return None
        return min(self.mark / self.capacity * 100, 100.0)

    @property
    def level(self) -> str:
        if self.capacity <= 0 or self.used > self.capacity:
            return "over" if self.used else "ok"
        return "high" if self.percent >= 85 else "ok"


# --- dashboard ---------------------------------------------------------------------


@dataclass
class EnvironmentSummary:
    environment: Environment
    vm_states: Counter = field(default_factory=Counter)

    @property
    def vm_count(self) -> int:
        return sum(self.vm_states.values())

    @property
    def health(self) -> str:
        """One word for the badge, worst state first."""
        states = self.vm_states
        if not states:
            return "empty"
        if states[VMState.ERROR] or states[VMState.LOST]:
            return "failing"
        if states[VMState.DELETING]:
            return "deleting"
        if states[VMState.SCHEDULED] or states[VMState.PROVISIONING]:
            return "provisioning"
        if states[VMState.RUNNING] == self.vm_count:
            return "healthy"
        if states[VMState.RUNNING]:
            return "degraded"
        return "stopped"


def environments_by_kind(team) -> list[tuple[str, list[EnvironmentSummary]]]:
    """The team's environments under each kind (dev, staging, prod, in that order)."""
    summaries = {env.pk: EnvironmentSummary(env) for env in Environment.objects.for_team(team)}
    live_vms = VirtualMachine.objects.for_team(team).exclude(state=VMState.DELETED)
    for env_id, state in live_vms.values_list("environment", "state"):
        summaries[env_id].vm_states[state] += 1
    return [
        (kind, [s for s in summaries.values() if s.environment.kind == kind])
        for kind in Environment.Kind.values
    ]


def quota_usage(team) -> list[Usage]:
    quota = Quota.objects.for_team(team).first()
    used = team_usage(team)
    if quota is None:
        return []
    return [
        Usage("VMs", used["vms"], quota.vms),
        Usage("vCPUs", used["vcpus"], quota.vcpus),
        Usage("Memory", used["memory_mb"] / 1024, quota.memory_mb / 1024, "GiB"),
        Usage("Disk", used["disk_gb"], quota.disk_gb, "GiB"),
    ]


@dataclass(frozen=True)
class HostUtilisation:
    host: Host
    cpu: Usage
    memory: Usage


def host_utilisation() -> list[HostUtilisation]:
    """Each host's allocated vCPUs and memory against what its overcommit allows;
    the tick marks the physical size."""
    live = ~Q(vms__state=VMState.DELETED)
    hosts = Host.objects.annotate(
        vcpus=Sum("vms__flavor__vcpus", filter=live),
        memory=Sum("vms__flavor__memory_mb", filter=live),
    )
    return [
        HostUtilisation(
            host,
            Usage("CPU", host.vcpus or 0, host.cpus * host.cpu_overcommit, "vCPU", host.cpus),
            Usage(
                "Memory",
                (host.memory or 0) / 1024,
                host.memory_mb * host.ram_overcommit / 1024,
                "GiB",
                host.memory_mb / 1024,
            ),
        )
        for host in hosts
    ]


def active_jobs(team):
    """Jobs a person started that are still queued or running (not per-VM children)."""
    return (
        Job.objects.for_team(team)
        .filter(parent=None, state__in=ACTIVE_JOB_STATES)
        .select_related("environment", "vm")
        .prefetch_related("children")
    )


# --- environment and VM pages ----------------------------------------------------------


def environment_vms(team, env: Environment):
    containers = Container.objects.select_related("service", "release").order_by("name")
    return (
        VirtualMachine.objects.for_team(team)
        .filter(environment=env)
        .exclude(state=VMState.DELETED)
        .select_related("host", "flavor", "image")
        .prefetch_related(Prefetch("containers", queryset=containers))
    )


@dataclass(frozen=True)
class ServiceRelease:
    service: Service
    current: Deployment | None
    latest: Deployment | None


def service_releases(team, env: Environment) -> list[ServiceRelease]:
    """Each service with the deployment that last succeeded, and the newest one
    (which may still be rolling out or have failed)."""
    rows = []
    for service in Service.objects.for_team(team).filter(environment=env).order_by("name"):
        deployments = (
            Deployment.objects.for_team(team)
            .filter(release__service=service)
            .select_related("release")
        )
        rows.append(
            ServiceRelease(
                service,
                current=deployments.filter(state=DeploymentState.SUCCEEDED)
                .order_by("-created_at")
                .first(),
                latest=deployments.order_by("-created_at").first(),
            )
        )
    return rows


def current_release_ids(team) -> set[int]:
    """The release each of the team's services runs: its last successful deployment's."""
    current: dict[int, int] = {}
    succeeded = (
        Deployment.objects.for_team(team)
        .filter(state=DeploymentState.SUCCEEDED)
        .order_by("created_at")
        .values_list("release__service_id", "release_id")
    )
    for service_id, release_id in succeeded:
        current[service_id] = release_id  # later deployments win
    return set(current.values())


def promotion_targets(team, env: Environment) -> list[str]:
    """Names of the team's environments of the kind after ``env``'s (none after prod)."""
    next_kind = NEXT_KIND.get(env.kind)
    if next_kind is None:
        return []
    return list(
        Environment.objects.for_team(team).filter(kind=next_kind).values_list("name", flat=True)
    )


def holding_job(env: Environment) -> Job | None:
    """The unfinished job that holds the environment's lock, if any."""
    job = env.lock_job
    return job if job is not None and not job.is_finished else None


def vm_snapshots(team, vm: VirtualMachine) -> list[str]:
    """Snapshot names known from the VM's finished snapshot jobs.

    Strata keeps no snapshot rows; the jobs that took and deleted them are the record.
    """
    names: dict[str, None] = {}
    finished = (
        Job.objects.for_team(team)
        .filter(vm=vm, state=JobState.SUCCEEDED, kind__in=["vm_snapshot", "vm_delete_snapshot"])
        .order_by("finished_at")
    )
    for kind, params in finished.values_list("kind", "params"):
        name = params.get("snapshot")
        if kind == "vm_snapshot":
            names[name] = None
        else:
            names.pop(name, None)
    return list(names)


# --- jobs ------------------------------------------------------------------------------


def vm_jobs(team, vm: VirtualMachine, limit: int = 10):
    return Job.objects.for_team(team).filter(vm=vm).order_by("-created_at")[:limit]


def job_steps(team, job: Job):
    return JobStep.objects.for_team(team).filter(job=job)


def job_children(team, job: Job):
    """A parent job's per-VM jobs, with their steps, in VM order."""
    return (
        Job.objects.for_team(team)
        .filter(parent=job)
        .select_related("vm")
        .prefetch_related("steps")
        .order_by("vm__name", "created_at")
    )


def team_jobs(team):
    """All the team's jobs, for the job list to filter (filtersets.JobFilterSet)."""
    return (
        Job.objects.for_team(team)
        .select_related("environment", "vm", "requested_by")
        .prefetch_related("children")
    )
