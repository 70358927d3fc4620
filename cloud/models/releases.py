"""What a team deploys into an environment: services, their immutable
releases, deployments and their per-VM outcomes, containers, and secrets."""

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from cloud.models.crypto import EncryptedTextField
from cloud.models.environments import Environment, EnvironmentKind, VirtualMachine
from cloud.models.states import DEPLOYMENT_MACHINE, DeploymentState, StatefulModel, state_check
from tenants.models import Team, TeamScopedQuerySet, scoped_queryset, slug_name


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
