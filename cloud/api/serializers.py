from django.urls import reverse
from rest_framework import serializers

from cloud.models import (
    Environment,
    Flavor,
    Image,
    Job,
    JobStep,
    Secret,
    Service,
    VirtualMachine,
)
from tenants.models import AuditEvent, Team


def api_url(request, name, *args):
    return request.build_absolute_uri(reverse(f"api:{name}", args=args))


class TeamSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Team
        fields = ["name", "display_name", "role"]

    def get_role(self, team) -> str | None:
        return self.context["roles"].get(team.pk)


class FlavorSerializer(serializers.ModelSerializer):
    class Meta:
        model = Flavor
        fields = ["name", "vcpus", "memory_mb", "disk_gb"]


class ImageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Image
        fields = ["name", "os", "format", "sha256", "virtual_size_bytes", "source", "created_at"]


class VirtualMachineSerializer(serializers.ModelSerializer):
    host = serializers.CharField(source="host.name", default=None)
    flavor = serializers.CharField(source="flavor.name")
    image = serializers.CharField(source="image.name")
    environment = serializers.CharField(source="environment.name")
    url = serializers.SerializerMethodField()

    class Meta:
        model = VirtualMachine
        fields = [
            "id",
            "url",
            "uuid",
            "name",
            "environment",
            "state",
            "host",
            "flavor",
            "image",
            "ssh_host",
            "ssh_port",
            "host_key_public",
            "error",
            "started_at",
            "created_at",
        ]

    def get_url(self, vm) -> str:
        return api_url(self.context["request"], "vm-detail", vm.environment.team.name, vm.pk)


class EnvironmentSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    vm_count = serializers.IntegerField(read_only=True)
    vm_states = serializers.SerializerMethodField()
    busy_with = serializers.SerializerMethodField()

    class Meta:
        model = Environment
        fields = ["id", "url", "name", "kind", "vm_count", "vm_states", "busy_with", "created_at"]

    def get_url(self, env) -> str:
        return api_url(self.context["request"], "environment-detail", env.team.name, env.pk)

    def get_vm_states(self, env) -> dict[str, int]:
        states: dict[str, int] = {}
        for vm in env.vms.all():
            states[vm.state] = states.get(vm.state, 0) + 1
        return states

    def get_busy_with(self, env) -> str | None:
        job = env.lock_job
        if job is None or job.is_finished:
            return None
        return api_url(self.context["request"], "job-detail", env.team.name, job.pk)


class EnvironmentCreateSerializer(serializers.Serializer):
    """Shapes only; the service validates values and names the field that is wrong."""

    name = serializers.CharField(max_length=200)
    kind = serializers.CharField(max_length=20)
    vm_count = serializers.IntegerField(default=1, min_value=-(2**31), max_value=2**31)
    flavor = serializers.CharField(max_length=200, default="small")
    image = serializers.CharField(max_length=200, default="debian-12")


class VMActionSerializer(serializers.Serializer):
    action = serializers.CharField(max_length=40)
    snapshot = serializers.CharField(max_length=200, required=False)
    flavor = serializers.CharField(max_length=200, required=False)
    queue_if_busy = serializers.BooleanField(default=False)


class JobStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobStep
        fields = ["index", "name", "state", "started_at", "finished_at", "log"]


class JobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    environment = serializers.CharField(source="environment.name", default=None)
    requested_by = serializers.CharField(source="requested_by.username", default=None)
    steps = JobStepSerializer(many=True, read_only=True)
    children = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "url",
            "kind",
            "state",
            "progress",
            "error",
            "environment",
            "vm",
            "params",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "cancel_requested",
            "steps",
            "children",
        ]

    def get_url(self, job) -> str:
        return api_url(self.context["request"], "job-detail", job.team.name, job.pk)

    def get_children(self, job) -> list[str]:
        return [self.get_url(child) for child in job.children.all()]


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", default=None)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "details",
        ]


class DeploySerializer(serializers.Serializer):
    """Shapes only: deployments.validate_spec checks the values, naming the field."""

    service_name = serializers.CharField(max_length=200)
    image = serializers.CharField(max_length=300)
    replicas = serializers.IntegerField(default=1, min_value=-(2**31), max_value=2**31)
    command = serializers.JSONField(default=list)
    env = serializers.JSONField(default=dict)
    secret_env = serializers.JSONField(default=dict)
    volumes = serializers.JSONField(default=list)
    ports = serializers.JSONField(default=list)
    cpu_limit = serializers.FloatField(default=1.0)
    memory_limit_mb = serializers.IntegerField(default=256, min_value=-(2**31), max_value=2**31)
    restart_policy = serializers.CharField(default="unless-stopped", max_length=40)
    healthcheck = serializers.JSONField(default=dict)
    queue_if_busy = serializers.BooleanField(default=False)


class PromoteSerializer(serializers.Serializer):
    service_name = serializers.CharField(max_length=200)
    target_env = serializers.CharField(max_length=200, required=False)
    queue_if_busy = serializers.BooleanField(default=False)


class ScaleSerializer(serializers.Serializer):
    service_name = serializers.CharField(max_length=200)
    replicas = serializers.IntegerField(min_value=-(2**31), max_value=2**31)
    queue_if_busy = serializers.BooleanField(default=False)


class RollbackSerializer(serializers.Serializer):
    service_name = serializers.CharField(max_length=200)
    queue_if_busy = serializers.BooleanField(default=False)


class ContainerSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    vm = serializers.CharField(source="vm.name")
    name = serializers.CharField()
    release = serializers.IntegerField(source="release.version")
    state = serializers.CharField()
    health = serializers.CharField()


class ServiceSerializer(serializers.ModelSerializer):
    current_release = serializers.SerializerMethodField()
    containers = ContainerSerializer(many=True, read_only=True)
    published = serializers.SerializerMethodField()

    class Meta:
        model = Service
        fields = [
            "name",
            "image",
            "replicas",
            "ports",
            "current_release",
            "published",
            "containers",
        ]

    def get_current_release(self, service) -> dict | None:
        deployment = next(
            (d for d in self.context["deployments"] if d.release.service_id == service.pk), None
        )
        if deployment is None:
            return None
        release = deployment.release
        return {
            "version": release.version,
            "image": release.spec["image"],
            "digest": release.image_digest,
            "deployed_at": deployment.updated_at,
        }

    def get_published(self, service) -> list[str]:
        """Where each published port answers on the host (user-mode networking)."""
        return [
            f"127.0.0.1:{f.host_port} -> {f.vm.name}:{f.guest_port}"
            for f in self.context["forwards"]
            if f.guest_port in service.ports
        ]


class LogsQuerySerializer(serializers.Serializer):
    tail = serializers.IntegerField(default=100, min_value=-(2**31), max_value=2**31)
    since = serializers.FloatField(required=False)


class LogsSerializer(serializers.Serializer):
    logs = serializers.CharField()


class StatsSerializer(serializers.Serializer):
    cpu_percent = serializers.FloatField()
    memory_bytes = serializers.IntegerField()
    memory_limit_bytes = serializers.IntegerField()


class SecretSerializer(serializers.ModelSerializer):
    """Names and scopes only: a secret's value is written, never read back."""

    environment = serializers.CharField(source="environment.name", default=None)

    class Meta:
        model = Secret
        fields = ["name", "scope", "environment", "created_at"]


class SecretScopeSerializer(serializers.Serializer):
    """Where a secret lives: an environment kind, or one environment (by name)."""

    scope = serializers.CharField(max_length=20, required=False)
    environment = serializers.CharField(max_length=200, required=False)


class SecretWriteSerializer(SecretScopeSerializer):
    name = serializers.CharField(max_length=200)
    value = serializers.CharField(max_length=200_000, trim_whitespace=False)
