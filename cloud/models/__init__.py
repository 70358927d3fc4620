"""The core domain: hypervisor hosts, images, flavors, and each team's
environments with their VMs, services, releases, containers and jobs.

Rows hold the desired state; jobs converge the real world toward it.
"""

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from cloud.models.crypto import EncryptedTextField
from cloud.models.states import (
    DEPLOYMENT_MACHINE,
    JOB_MACHINE,
    VM_MACHINE,
    DeploymentState,
    JobState,
    StateMachine,
    VMState,
    state_check,
)
from tenants.models import Team, TeamScopedQuerySet, scoped_queryset, slug_name

port_number = [MinValueValidator(1), MaxValueValidator(65535)]
sha256_hex = RegexValidator(r"\A[0-9a-f]{64}\Z", "A sha256 is 64 lowercase hex digits.")


class StatefulModel(models.Model):
    """A model whose ``state`` moves only along its machine's edges."""

    machine: StateMachine

    class Meta:
        abstract = True

    def move_to(self, target: str, save: bool = True, **fields) -> None:
        self.machine.check(self.state, target)
        self.state = target
        for name, value in fields.items():
            setattr(self, name, value)
        if save:
            self.save(update_fields=["state", *fields, *self._touch_fields()])

    def _touch_fields(self) -> list[str]:
        return ["updated_at"] if any(f.name == "updated_at" for f in self._meta.fields) else []


# --- shared catalogue (operator-owned) ---------------------------------------------


def default_virt_type() -> str:
    return settings.STRATA_VIRT_TYPE


def default_cpu_mode() -> str:
    return settings.STRATA_CPU_MODEL


VIRT_TYPE_CHOICES = [("kvm", "KVM"), ("qemu", "QEMU TCG (emulated)")]
cpu_mode_name = RegexValidator(
    r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z",
    "host-passthrough, or a CPU model name: letters, digits, _ . - (at most 64).",
)


class HostStatus(models.TextChoices):
    ENABLED = "enabled"
    DISABLED = "disabled"
    DRAINING = "draining"


class Host(models.Model):
    Status = HostStatus

    name = models.CharField(max_length=40, unique=True, validators=[slug_name])
    libvirt_uri = models.CharField(max_length=255)
    # What the host can do, detected at registration and on every reconcile.
    detected_virt_type = models.CharField(
        max_length=4, choices=VIRT_TYPE_CHOICES, blank=True, default="", editable=False
    )
    virt_type_reason = models.TextField(blank=True, default="", editable=False)
    virt_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    virt_type_override = models.CharField(
        max_length=4,
        choices=VIRT_TYPE_CHOICES,
        blank=True,
        default="",
        help_text="Blank: use the detected type.",
    )
    cpu_mode = models.CharField(
        max_length=64,
        default=default_cpu_mode,
        validators=[cpu_mode_name],
        help_text="The guest CPU on KVM: host-passthrough, or a libvirt CPU model name.",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ENABLED)
    cpus = models.PositiveIntegerField(help_text="physical CPUs")
    memory_mb = models.PositiveIntegerField()
    disk_gb = models.PositiveIntegerField(default=0)
    cpu_overcommit = models.FloatField(default=4.0, validators=[MinValueValidator(1.0)])
    ram_overcommit = models.FloatField(default=1.0, validators=[MinValueValidator(1.0)])
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cpu_overcommit__gte=1.0, ram_overcommit__gte=1.0),
                name="host_overcommit_at_least_one",
            ),
            state_check("status", HostStatus, "host_status_valid"),
            models.CheckConstraint(
                condition=models.Q(virt_type_override__in=["", "kvm", "qemu"]),
                name="host_virt_type_override_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(detected_virt_type__in=["", "kvm", "qemu"]),
                name="host_detected_virt_type_valid",
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def virt_type(self) -> str:
        """The domain type used on this host: the operator's override, else the
        detected type, else STRATA_VIRT_TYPE for a host not detected yet."""
        return self.virt_type_override or self.detected_virt_type or default_virt_type()

    @virt_type.setter
    def virt_type(self, value: str) -> None:
        # Setting a type by hand (Host(virt_type=...), register_host) is an override.
        self.virt_type_override = value

    @property
    def queue(self) -> str:
        """The Celery queue served by the worker on (or near) this host."""
        return f"host.{self.name}"


class ImageFormat(models.TextChoices):
    QCOW2 = "qcow2"
    RAW = "raw"


class ImageSource(models.TextChoices):
    BUILT = "built"
    IMPORTED = "imported"


class Image(models.Model):
    Format = ImageFormat

    Source = ImageSource

    name = models.CharField(max_length=40, unique=True, validators=[slug_name])
    os = models.CharField(max_length=40, blank=True)
    format = models.CharField(max_length=8, choices=Format.choices, default=Format.QCOW2)
    sha256 = models.CharField(max_length=64, validators=[sha256_hex])
    path = models.CharField(max_length=500)
    kernel_path = models.CharField(max_length=500, blank=True)
    initrd_path = models.CharField(max_length=500, blank=True)
    kernel_cmdline = models.CharField(max_length=500, blank=True)
    virtual_size_bytes = models.PositiveBigIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    source = models.CharField(max_length=10, choices=Source.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            state_check("format", ImageFormat, "image_format_valid"),
            state_check("source", ImageSource, "image_source_valid"),
        ]

    def __str__(self):
        return self.name


class Flavor(models.Model):
    name = models.CharField(max_length=40, unique=True, validators=[slug_name])
    vcpus = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    memory_mb = models.PositiveIntegerField(
        validators=[MinValueValidator(128), MaxValueValidator(512 * 1024)]
    )
    disk_gb = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(4096)]
    )

    class Meta:
        ordering = ["vcpus", "memory_mb", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(vcpus__gte=1, memory_mb__gte=128, disk_gb__gte=1),
                name="flavor_sizes_positive",
            )
        ]

    def __str__(self):
        return f"{self.name} ({self.vcpus} vCPU, {self.memory_mb} MiB, {self.disk_gb} GiB)"


# --- team-owned --------------------------------------------------------------------


class EnvironmentKind(models.TextChoices):
    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


class Environment(models.Model):
    Kind = EnvironmentKind

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="environments")
    name = models.CharField(max_length=40, validators=[slug_name])
    kind = models.CharField(max_length=10, choices=Kind.choices)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The job that holds this environment: operations on one environment run one
    # at a time.  A lock whose job has finished is free, so no crash leaves it stuck.
    lock_job = models.ForeignKey(
        "Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["team", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "name"], name="environment_name_unique_in_team"
            ),
            state_check("kind", EnvironmentKind, "environment_kind_valid"),
        ]

    def __str__(self):
        return f"{self.team.name}/{self.name}"


class VirtualMachine(StatefulModel):
    machine = VM_MACHINE

    # Also the libvirt domain UUID, so a re-run job finds what an earlier run made.
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="vms")
    name = models.CharField(max_length=40, validators=[slug_name])
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="vms"
    )
    flavor = models.ForeignKey(Flavor, on_delete=models.PROTECT)
    image = models.ForeignKey(Image, on_delete=models.PROTECT)
    state = models.CharField(max_length=12, choices=VMState.choices, default=VMState.SCHEDULED)
    ssh_host = models.CharField(max_length=255, blank=True)
    ssh_port = models.PositiveIntegerField(null=True, blank=True, validators=port_number)
    host_key_public = models.TextField(blank=True, help_text="pinned before first boot")
    host_key_private = EncryptedTextField(blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = scoped_queryset("environment__team").as_manager()

    class Meta:
        ordering = ["environment", "name"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "name"], name="vm_name_unique_in_env"),
            state_check("state", VMState, "vm_state_valid"),
        ]

    def __str__(self):
        return f"{self.environment}/{self.name}"

    @property
    def domain_name(self) -> str:
        return f"strata-{self.uuid}"


class PortForward(models.Model):
    """A loopback port on a host forwarded into a guest (``user`` networking)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE)
    host_port = models.PositiveIntegerField(validators=port_number)
    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="forwards")
    guest_port = models.PositiveIntegerField(validators=port_number)

    objects = scoped_queryset("vm__environment__team").as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["host", "host_port"], name="host_port_used_once"),
            models.UniqueConstraint(fields=["vm", "guest_port"], name="guest_port_forwarded_once"),
            models.CheckConstraint(
                condition=models.Q(host_port__gte=1, host_port__lte=65535)
                & models.Q(guest_port__gte=1, guest_port__lte=65535),
                name="forward_ports_in_range",
            ),
        ]

    def __str__(self):
        return f"127.0.0.1:{self.host_port} -> {self.vm}:{self.guest_port}"


class VMSample(models.Model):
    """One CPU and memory reading of a running VM, taken by the reconciler.

    ``cpu_time_ns`` is the domain's cumulative CPU time, kept so the next
    sample's ``cpu_percent`` is an exact delta; the first sample has 0.
    """

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(db_index=True, default=timezone.now)
    cpu_percent = models.FloatField(validators=[MinValueValidator(0)])
    cpu_time_ns = models.PositiveBigIntegerField()
    memory_mib = models.PositiveIntegerField()

    objects = scoped_queryset("vm__environment__team").as_manager()

    class Meta:
        ordering = ["vm", "at"]
        indexes = [models.Index(fields=["vm", "at"], name="vmsample_vm_at")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cpu_percent__gte=0), name="vmsample_cpu_percent_not_negative"
            ),
        ]

    def __str__(self):
        return f"{self.vm} at {self.at:%Y-%m-%d %H:%M:%S}"


class SecretQuerySet(TeamScopedQuerySet):
    def usable_in(self, environment: "Environment"):
        """The secrets a deploy into ``environment`` may use: its kind's, and its own."""
        return self.filter(team=environment.team_id, scope=environment.kind).filter(
            models.Q(environment__isnull=True) | models.Q(environment=environment)
        )

    def resolve(self, environment: "Environment", names) -> dict[str, str]:
        """name -> value in ``environment``: its own secret wins over its kind's."""
        rows = self.usable_in(environment).filter(name__in=set(names))
        # Kind-wide rows first, so the environment's own value overwrites them.
        ordered = sorted(
            rows.values_list("environment_id", "name", "value"), key=lambda row: row[0] is not None
        )
        return {name: value for _, name, value in ordered}


class Secret(models.Model):
    """A team's named secret (an env value or registry credentials), encrypted at rest.

    Scoped to an environment kind, or to one environment of that kind: a deploy
    uses only the secrets of its environment's scope, and only who may act on
    that kind may write them.  The scope is part of the identity, so the same
    name holds a dev value and a prod value.
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="secrets")
    # The most guarded kind unless said otherwise: only admins act on prod.
    scope = models.CharField(
        max_length=10, choices=EnvironmentKind.choices, default=EnvironmentKind.PROD
    )
    environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.CASCADE, related_name="secrets"
    )
    name = models.CharField(max_length=40, validators=[slug_name])
    value = EncryptedTextField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SecretQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["team", "scope", "name"],
                condition=models.Q(environment__isnull=True),
                name="secret_name_unique_in_scope",
            ),
            models.UniqueConstraint(
                fields=["environment", "name"],
                condition=models.Q(environment__isnull=False),
                name="secret_name_unique_in_environment",
            ),
            state_check("scope", EnvironmentKind, "secret_scope_valid"),
        ]

    def __str__(self):
        where = self.environment.name if self.environment_id else self.scope
        return f"{self.team.name}/{where}/{self.name}"


class ServiceRestartPolicy(models.TextChoices):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


class Service(models.Model):
    """The desired container spec of one service in one environment."""

    RestartPolicy = ServiceRestartPolicy

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="services")
    name = models.CharField(max_length=40, validators=[slug_name])
    image = models.CharField(max_length=255)
    command = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True, help_text="plain values")
    secret_env = models.JSONField(default=dict, blank=True, help_text="VAR -> secret name")
    ports = models.JSONField(default=list, blank=True, help_text="container ports to publish")
    volumes = models.JSONField(default=list, blank=True)
    cpu_limit = models.FloatField(default=1.0, validators=[MinValueValidator(0.01)])
    memory_limit_mb = models.PositiveIntegerField(default=256, validators=[MinValueValidator(6)])
    restart_policy = models.CharField(
        max_length=16, choices=RestartPolicy.choices, default=RestartPolicy.UNLESS_STOPPED
    )
    replicas = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(100)])
    healthcheck = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = scoped_queryset("environment__team").as_manager()

    class Meta:
        ordering = ["environment", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "name"], name="service_name_unique_in_env"
            ),
            models.CheckConstraint(
                condition=models.Q(cpu_limit__gt=0, memory_limit_mb__gt=0, replicas__gte=0),
                name="service_limits_positive",
            ),
            state_check("restart_policy", ServiceRestartPolicy, "service_restart_policy_valid"),
        ]

    def __str__(self):
        return f"{self.environment}/{self.name}"


class Release(models.Model):
    """An immutable snapshot of a service spec, pinned to an image digest."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="releases")
    version = models.PositiveIntegerField()
    image_digest = models.CharField(max_length=80)
    spec = models.JSONField()
    promoted_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="promotions"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = scoped_queryset("service__environment__team").as_manager()

    class Meta:
        ordering = ["service", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["service", "version"], name="release_version_unique"),
            models.CheckConstraint(
                condition=models.Q(version__gte=1), name="release_version_positive"
            ),
        ]

    def __str__(self):
        return f"{self.service} v{self.version}"

    def save(self, *args, **kwargs):
        if self.pk and not kwargs.pop("force_spec_change", False):
            stored = Release.objects.filter(pk=self.pk).values("spec", "image_digest").first()
            if stored and (
                stored["spec"] != self.spec or stored["image_digest"] != self.image_digest
            ):
                raise ValueError("a release is immutable: make a new one instead")
        super().save(*args, **kwargs)


class Deployment(StatefulModel):
    machine = DEPLOYMENT_MACHINE

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="deployments"
    )
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="deployments")
    state = models.CharField(
        max_length=12, choices=DeploymentState.choices, default=DeploymentState.PENDING
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = scoped_queryset("environment__team").as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [state_check("state", DeploymentState, "deployment_state_valid")]

    def __str__(self):
        return f"{self.release} to {self.environment} ({self.state})"


class TargetOutcome(models.TextChoices):
    """What one VM's part of a deployment came to."""

    PENDING = "pending"  # its rollout has not finished
    SUCCEEDED = "succeeded"  # the new release serves there
    ROLLED_BACK = "rolled_back"  # its rollout failed and put the previous release back
    FAILED = "failed"  # its job failed otherwise: what serves there is not known
    REVERTED = "reverted"  # it succeeded, then went back because another VM failed
    REVERT_FAILED = "revert_failed"  # going back failed too: it may serve either release


class DeploymentTarget(models.Model):
    """One VM of a deployment and its typed outcome, so the deployment's own
    outcome (and what each VM serves) never has to be read from error text."""

    Outcome = TargetOutcome

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="targets")
    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="deployments")
    outcome = models.CharField(max_length=14, choices=Outcome.choices, default=Outcome.PENDING)
    detail = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = scoped_queryset("deployment__environment__team").as_manager()

    class Meta:
        ordering = ["deployment", "vm__name"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "vm"], name="deployment_target_once"),
            state_check("outcome", TargetOutcome, "deployment_target_outcome_valid"),
        ]

    def __str__(self):
        return f"{self.deployment} on {self.vm}: {self.outcome}"


class ContainerState(models.TextChoices):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    MISSING = "missing"


class ContainerHealth(models.TextChoices):
    NONE = "none"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Container(models.Model):
    State = ContainerState

    Health = ContainerHealth

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="containers")
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="containers")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="containers")
    engine_id = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=128)
    state = models.CharField(max_length=10, choices=State.choices, default=State.CREATED)
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.NONE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = scoped_queryset("vm__environment__team").as_manager()

    class Meta:
        ordering = ["vm", "name"]
        constraints = [
            models.UniqueConstraint(fields=["vm", "name"], name="container_name_unique_in_vm"),
            models.UniqueConstraint(
                fields=["vm", "engine_id"],
                condition=~models.Q(engine_id=""),
                name="container_engine_id_unique_in_vm",
            ),
            state_check("state", ContainerState, "container_state_valid"),
            state_check("health", ContainerHealth, "container_health_valid"),
        ]

    def __str__(self):
        return self.name


class Job(StatefulModel):
    """A slow operation a team triggered: a named list of steps run by a worker."""

    machine = JOB_MACHINE

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=40)
    environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    vm = models.ForeignKey(
        VirtualMachine, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    params = models.JSONField(default=dict, blank=True)
    # A job of several VMs is a parent with one child per VM, each on its host's queue.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    # Set when the caller asked to queue behind the job holding the environment.
    waits_for = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="waiters"
    )
    queue = models.CharField(max_length=60, default="strata")
    state = models.CharField(max_length=10, choices=JobState.choices, default=JobState.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The run that may execute the job's steps: one at a time.  The owner renews
    # ``lease_expires_at`` while it runs; every write it makes checks its token,
    # so a run whose lease another delivery took over stops without writing.
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_owner = models.CharField(max_length=200, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            state_check("state", JobState, "job_state_valid"),
            models.CheckConstraint(
                condition=models.Q(progress__gte=0, progress__lte=100), name="job_progress_percent"
            ),
        ]
        indexes = [
            models.Index(fields=["team", "state"]),
            models.Index(fields=["team", "queue", "lease_expires_at"], name="job_team_queue_lease"),
        ]

    def __str__(self):
        return f"{self.kind} {str(self.id)[:8]} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in self.machine.final_states

    def move_to(self, target: str, save: bool = True, **fields) -> None:
        if target == JobState.RUNNING and self.started_at is None:
            fields.setdefault("started_at", timezone.now())
        if target in self.machine.final_states:
            fields.setdefault("finished_at", timezone.now())
        super().move_to(target, save=save, **fields)


class JobStepState(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class JobStep(models.Model):
    State = JobStepState

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=60)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    log = models.TextField(blank=True)

    objects = scoped_queryset("job__team").as_manager()

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="job_step_index_unique"),
            state_check("state", JobStepState, "job_step_state_valid"),
        ]

    def __str__(self):
        return f"{self.index}. {self.name} ({self.state})"


class OrphanKind(models.TextChoices):
    DOMAIN = "domain"
    VOLUME = "volume"
    CONTAINER = "container"


class Orphan(models.Model):
    """Something on a host that carries Strata's marks but has no record.

    The reconciler notes it when first seen and removes it after a grace
    period, so a resource being made right now is never taken for one.
    """

    Kind = OrphanKind

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="orphans")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=200)
    first_seen_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["host", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["host", "kind", "name"], name="orphan_once"),
            state_check("kind", OrphanKind, "orphan_kind_valid"),
        ]

    def __str__(self):
        return f"{self.kind} {self.name} on {self.host}"
