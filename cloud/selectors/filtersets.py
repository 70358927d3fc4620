"""The filters of the lists a team reads, one FilterSet per list, shared by the
API's query strings and the portal's filter forms.  A value a filter cannot
take is an error that names the filter."""

import django_filters
from django import forms

from cloud.models import (
    Environment,
    EnvironmentKind,
    Job,
    JobState,
    Release,
    Secret,
    VirtualMachine,
    VMState,
)
from tenants.models import AuditEvent


class EnvironmentFilterSet(django_filters.FilterSet):
    class Meta:
        model = Environment
        fields = {"kind": ["exact"], "name": ["exact", "icontains"]}


class VirtualMachineFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=VMState.choices)
    environment = django_filters.CharFilter(field_name="environment__name")

    class Meta:
        model = VirtualMachine
        fields = ["state", "environment", "name"]


class JobScopeSelect(forms.NullBooleanSelect):
    """``top_level`` as a person reads it; the values the API takes are unchanged."""

    def __init__(self, attrs=None):
        super().__init__(attrs)
        self.choices = [
            ("unknown", "all jobs"),
            ("true", "top-level jobs"),
            ("false", "per-VM jobs"),
        ]


class JobFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=JobState.choices, empty_label="any state")
    # Any kind is a valid filter (one the team never ran matches nothing); the
    # form offers the kinds found in the jobs it filters.
    kind = django_filters.CharFilter()
    environment = django_filters.CharFilter(field_name="environment__name")
    top_level = django_filters.BooleanFilter(
        field_name="parent", lookup_expr="isnull", label="Jobs", widget=JobScopeSelect
    )

    class Meta:
        model = Job
        fields = ["state", "kind", "environment", "top_level"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A callable, so only a rendered form pays for the query.
        self.filters["kind"].extra["widget"] = forms.Select(choices=self.kind_choices)

    def kind_choices(self) -> list[tuple[str, str]]:
        kinds = (
            self.queryset.prefetch_related(None)
            .order_by("kind")
            .values_list("kind", flat=True)
            .distinct()
        )
        return [("", "any kind"), *((kind, kind) for kind in kinds)]


class AuditEventFilterSet(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = AuditEvent
        fields = ["action", "since"]


class ReleaseFilterSet(django_filters.FilterSet):
    environment = django_filters.CharFilter(field_name="service__environment__name")
    service = django_filters.CharFilter(field_name="service__name")

    class Meta:
        model = Release
        fields = ["environment", "service"]


class SecretFilterSet(django_filters.FilterSet):
    scope = django_filters.ChoiceFilter(choices=EnvironmentKind.choices)
    environment = django_filters.CharFilter(field_name="environment__name")

    class Meta:
        model = Secret
        fields = ["scope", "environment"]
