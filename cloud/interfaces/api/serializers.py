import re

from django.urls import reverse
from rest_framework import serializers
from rest_framework.utils import html

from cloud.interfaces.portal.forms import VM_ACTION_FORMS
from cloud.models import (
    Environment,
    Flavor,
    Image,
    Job,
    JobStep,
    Release,
    Secret,
    Service,
    VirtualMachine,
)
from cloud.services.deployments import MAX_REPLICAS
from cloud.services.environments import MAX_VMS_PER_REQUEST, VM_ACTIONS
from tenants.models import AuditEvent, Team, slug_name

ASCII_INTEGER = re.compile(r"-?[0-9]+")
ASCII_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def given_value(field, dictionary):
    """The field's value, where DRF would drop an empty one from a query string
    or form (``?x=``) as if it were absent: empty is a value, to be judged."""
    if html.is_html_input(dictionary) and dictionary.get(field.field_name) == "":
        return ""
    return serializers.Field.get_value(field, dictionary)


class Text(serializers.CharField):
    """A JSON string, taken exactly as sent: a number or a list is not coerced
    to its text, and surrounding blanks are not trimmed away."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def get_value(self, dictionary):
        return given_value(self, dictionary)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class Flag(serializers.BooleanField):
    """A boolean; in a query string, ``?queue_if_busy=`` is refused, not taken as false."""

    def get_value(self, dictionary):
        return given_value(self, dictionary)


class Name(Text):
    """A Strata name (lowercase letters, digits, inner hyphens), checked here
    so a malformed one is a 400 naming the field, never a lookup."""

    def __init__(self, **kwargs):
        super().__init__(max_length=40, validators=[slug_name], **kwargs)


class WholeNumber(serializers.IntegerField):
    """An integer: a JSON number without a fraction, or ASCII digits (query
    strings).  ``int()`` alone would take "٨٠" as 80 and "1_0" as 10."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not (
            isinstance(data, int) or (isinstance(data, str) and ASCII_INTEGER.fullmatch(data))
        ):
            self.fail("invalid")
        return super().to_internal_value(data)


class Decimal(serializers.FloatField):
    """A finite number: JSON, or ASCII digits with an optional fraction."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not (
            isinstance(data, int | float)
            or (isinstance(data, str) and ASCII_DECIMAL.fullmatch(data))
        ):
            self.fail("invalid")
        return super().to_internal_value(data)


class KnownFieldsOnly(serializers.Serializer):
    """A body with a field this request does not take (a typo, say) is a 400
    naming that field, rather than ignored while a default is used instead."""

    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                {name: ["is not a field of this request"] for name in sorted(unknown)}
            )
        return super().validate(attrs)


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
            "segment_ip",
            "mac_address",
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
        fields = [
            "id",
            "url",
            "name",
            "kind",
            "subnet",
            "egress",
            "vm_count",
            "vm_states",
            "busy_with",
            "created_at",
        ]

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


class EnvironmentCreateSerializer(KnownFieldsOnly):
    """Shapes only; the service validates values and names the field that is wrong."""

    name = Name()
    kind = Text(max_length=20)
    vm_count = WholeNumber(default=1, min_value=1, max_value=MAX_VMS_PER_REQUEST)
    flavor = Name(default="small")
    image = Name(default="debian-12")
    # Traffic beyond the segment: "isolated" (the default), "nat" or "route".
    egress = Text(max_length=8, required=False)


class DestroyQuerySerializer(serializers.Serializer):
    queue_if_busy = Flag(default=False)


class VMActionSerializer(KnownFieldsOnly):
    action = Text(max_length=40)
    snapshot = Name(required=False)
    flavor = Name(required=False)
    queue_if_busy = Flag(default=False)

    def validate(self, attrs):
        """A parameter the action does not take is refused, not ignored."""
        attrs = super().validate(attrs)
        if attrs["action"] not in VM_ACTIONS:
            raise serializers.ValidationError(
                {"action": [f"must be one of {', '.join(VM_ACTIONS)}"]}
            )
        form = VM_ACTION_FORMS.get(attrs["action"])
        taken = set(form.base_fields) if form else set()
        unused = {"snapshot", "flavor"} & set(attrs) - taken
        if unused:
            raise serializers.ValidationError(
                {name: [f"{attrs['action']} takes no {name}"] for name in sorted(unused)}
            )
        return attrs


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
    progress = serializers.IntegerField(source="overall_progress", read_only=True)

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


class DeploySerializer(KnownFieldsOnly):
    """Shapes and ranges (so the schema documents them); deployments.validate_spec
    checks the values, naming the field.  No spec field has a default here: one
    the request leaves out keeps the service's current value."""

    service_name = Name()
    image = Text(max_length=300)
    replicas = WholeNumber(required=False, min_value=0, max_value=MAX_REPLICAS)
    command = serializers.JSONField(required=False)
    env = serializers.JSONField(required=False)
    secret_env = serializers.JSONField(required=False)
    volumes = serializers.JSONField(required=False)
    ports = serializers.JSONField(required=False)
    cpu_limit = Decimal(required=False, min_value=0.01, max_value=64)
    memory_limit_mb = WholeNumber(required=False, min_value=6, max_value=65536)
    restart_policy = Text(required=False, max_length=40)
    healthcheck = serializers.JSONField(required=False)
    queue_if_busy = Flag(default=False)


class PromoteSerializer(KnownFieldsOnly):
    service_name = Name()
    target_env = Name(required=False)
    queue_if_busy = Flag(default=False)


class ScaleSerializer(KnownFieldsOnly):
    service_name = Name()
    replicas = WholeNumber(min_value=0, max_value=MAX_REPLICAS)
    queue_if_busy = Flag(default=False)


class RollbackSerializer(KnownFieldsOnly):
    service_name = Name()
    queue_if_busy = Flag(default=False)


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


class ReleaseSerializer(serializers.ModelSerializer):
    environment = serializers.CharField(source="service.environment.name")
    service = serializers.CharField(source="service.name")
    image = serializers.SerializerMethodField()
    digest = serializers.CharField(source="image_digest")
    current = serializers.SerializerMethodField()
    promoted_from = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", default=None)

    class Meta:
        model = Release
        fields = [
            "id",
            "environment",
            "service",
            "version",
            "image",
            "digest",
            "current",
            "promoted_from",
            "created_by",
            "created_at",
        ]

    def get_image(self, release) -> str:
        """The reference the release was made from; ``digest`` is what runs."""
        return release.spec.get("image", "")

    def get_current(self, release) -> bool:
        """Whether this is the release its service runs now."""
        return release.pk in self.context["current"]

    def get_promoted_from(self, release) -> str | None:
        """``environment/service vN`` of the release this one was promoted from."""
        source = release.promoted_from
        if source is None:
            return None
        return f"{source.service.environment.name}/{source.service.name} v{source.version}"


class LogsQuerySerializer(serializers.Serializer):
    tail = WholeNumber(default=100, min_value=-(2**31), max_value=2**31)
    since = Decimal(required=False)


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

    scope = Text(max_length=20, required=False)
    environment = Name(required=False)


class SecretWriteSerializer(KnownFieldsOnly, SecretScopeSerializer):
    name = Name()
    value = Text(max_length=200_000)
