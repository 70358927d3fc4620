"""Read-only queries the portal shows: summaries for the dashboard, the
environment, VM and job pages.  Team-owned rows come only through ``for_team``;
hosts, flavors and images are the shared catalogue.  Nothing here writes."""

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Prefetch, Q, Sum
from django.utils import timezone

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
    VMSample,
    VMState,
)
from cloud.services.deployments import NEXT_KIND
from cloud.services.environments import team_usage
from tenants.models import Quota

ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
CONSOLE_TAIL_BYTES = 16 * 1024
# Terminal escape sequences and control characters other than newline and tab:
# a guest writes them to its serial console, a browser would show them as junk.
_TERMINAL_NOISE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


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


def job_progress(job: Job) -> int:
    """A parent job has no steps of its own: its progress is its children's mean."""
    children = list(job.children.all())
    if not children:
        return job.progress
    return sum(100 if c.is_finished else c.progress for c in children) // len(children)


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


def console_log_path(vm: VirtualMachine) -> Path:
    # The path workers.drivers.hypervisor.driver.Hypervisor.console_log_path gives for
    # the data directory the workers open the hypervisor with.
    return Path(settings.STRATA_DATA_DIR) / "console" / f"{vm.domain_name}.log"


def console_tail(vm: VirtualMachine) -> str | None:
    """The end of the VM's serial console log, or None when this server has no log
    for it (not booted yet, or on another machine)."""
    path = console_log_path(vm)
    try:
        with path.open("rb") as log:
            size = log.seek(0, 2)
            log.seek(max(size - CONSOLE_TAIL_BYTES, 0))
            tail = log.read()
    except OSError:
        return None
    text = tail.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if size > CONSOLE_TAIL_BYTES:
        text = text.partition("\n")[2]  # the first line was cut in half
    return _TERMINAL_NOISE.sub("", text)


# --- VM metrics --------------------------------------------------------------------

METRICS_WINDOW = timedelta(hours=1)
CHART_WIDTH, CHART_HEIGHT = 300, 80


def chart_segments(
    points: list[tuple[float, float]],
    *,
    x_span: float,
    y_max: float,
    gap: float,
    width: float = CHART_WIDTH,
    height: float = CHART_HEIGHT,
) -> list[str]:
    """SVG ``polyline`` point lists for a time series, one per unbroken run.

    ``points`` are (x, y) with x in seconds from the window's start, sorted;
    x maps 0..x_span onto 0..width and y maps 0..y_max onto height..0 (SVG's
    y grows downwards).  Two points further apart than ``gap`` seconds are not
    joined: the VM was off, or nothing sampled it.  A run of one point is
    returned as a zero-length line, which a round line cap draws as a dot.
    """
    if not points:
        return []
    x_span = x_span if x_span > 0 else 1.0
    y_max = y_max if y_max > 0 else 1.0
    segments: list[list[str]] = []
    last_x = None
    for x, y in points:
        px = min(max(x / x_span, 0.0), 1.0) * width
        py = height - min(max(y / y_max, 0.0), 1.0) * height
        point = f"{px:.1f},{py:.1f}"
        if last_x is None or x - last_x > gap:
            segments.append([point])
        else:
            segments[-1].append(point)
        last_x = x
    return [" ".join(run if len(run) > 1 else run * 2) for run in segments]


@dataclass
class Chart:
    label: str
    unit: str
    latest: float
    low: float
    peak: float
    axis_max: float
    segments: list[str]

    @property
    def summary(self) -> str:
        return (
            f"{self.label} over the last hour: now {self.latest:g} {self.unit}, "
            f"lowest {self.low:g}, highest {self.peak:g}"
        )


def vm_charts(team, vm: VirtualMachine, now: datetime | None = None) -> list[Chart]:
    """CPU % and memory MiB of the VM over the last hour; empty under 2 samples."""
    now = now or timezone.now()
    start = now - METRICS_WINDOW
    rows = list(
        VMSample.objects.for_team(team)
        .filter(vm=vm, at__gte=start, at__lte=now)
        .order_by("at")
        .values_list("at", "cpu_percent", "memory_mib")
    )
    if len(rows) < 2:
        return []
    # Missing more than two beats of the reconciler is a gap in the line.
    gap = max(settings.STRATA_RECONCILE_SECONDS * 2.5, 60)
    span = METRICS_WINDOW.total_seconds()
    charts = []
    for label, unit, column, axis_floor in (("CPU", "%", 1, 1.0), ("Memory", "MiB", 2, 1.0)):
        values = [round(float(row[column]), 1) for row in rows]
        axis_max = max(max(values), axis_floor)
        if unit == "%":
            axis_max = min(max(axis_max, 10.0), 100.0)
        points = [
            ((row[0] - start).total_seconds(), v) for row, v in zip(rows, values, strict=True)
        ]
        charts.append(
            Chart(
                label=label,
                unit=unit,
                latest=values[-1],
                low=min(values),
                peak=max(values),
                axis_max=axis_max,
                segments=chart_segments(points, x_span=span, y_max=axis_max, gap=gap),
            )
        )
    return charts


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


def job_kinds(team) -> list[str]:
    return list(
        Job.objects.for_team(team).order_by("kind").values_list("kind", flat=True).distinct()
    )


def team_jobs(team, *, state: str = "", kind: str = ""):
    jobs = Job.objects.for_team(team).filter(parent=None)
    if state:
        jobs = jobs.filter(state=state)
    if kind:
        jobs = jobs.filter(kind=kind)
    return jobs.select_related("environment", "vm", "requested_by").prefetch_related("children")
