import django_filters

from cloud.models import (
    Environment,
    EnvironmentKind,
    Job,
    JobState,
    Secret,
    VirtualMachine,
    VMState,
)
from tenants.models import AuditEvent


class EnvironmentFilter(django_filters.FilterSet):
    class Meta:
        model = Environment
        fields = {"kind": ["exact"], "name": ["exact", "icontains"]}


class VirtualMachineFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=VMState.choices)
    environment = django_filters.CharFilter(field_name="environment__name")

    class Meta:
        model = VirtualMachine
        fields = ["state", "environment"]


class JobFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=JobState.choices)
    environment = django_filters.CharFilter(field_name="environment__name")
    top_level = django_filters.BooleanFilter(field_name="parent", lookup_expr="isnull")

    class Meta:
        model = Job
        fields = ["state", "kind", "environment", "top_level"]


class AuditEventFilter(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = AuditEvent
        fields = ["action", "since"]


class SecretFilter(django_filters.FilterSet):
    scope = django_filters.ChoiceFilter(choices=EnvironmentKind.choices)
    environment = django_filters.CharFilter(field_name="environment__name")

    class Meta:
        model = Secret
        fields = ["scope", "environment"]
