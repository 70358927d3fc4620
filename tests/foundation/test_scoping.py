"""A queryset for team B never returns team A's rows, for every team-owned model."""

import pytest
from django.apps import apps

from tenants.models import AuditEvent, Team, TeamScopedQuerySet
from tests.foundation.factories import team_world

pytestmark = pytest.mark.django_db


def team_scoped_models():
    return [
        m for m in apps.get_models() if isinstance(m._default_manager.all(), TeamScopedQuerySet)
    ]


def test_every_team_owned_model_is_scoped():
    names = {m.__name__ for m in team_scoped_models()}
    expected = {
        "Environment",
        "VirtualMachine",
        "PortForward",
        "Service",
        "Release",
        "Deployment",
        "Container",
        "Secret",
        "Job",
        "JobStep",
        "Quota",
        "AuditEvent",
        "Membership",
        "ConsoleTicket",
        "RegistryImage",
        "RegistryTag",
    }
    assert expected <= names


def test_for_team_never_crosses_teams(make_team):
    team_a, user_a = make_team("alpha")
    team_b, _ = make_team("beta")
    team_world(team_a, port=20022)
    team_world(team_b, port=20023)
    AuditEvent.record("environment.create", team=team_a, actor=user_a)
    for model in team_scoped_models():
        rows_a = set(model.objects.for_team(team_a).values_list("pk", flat=True))
        rows_b = set(model.objects.for_team(team_b).values_list("pk", flat=True))
        assert rows_a, f"{model.__name__}: team A has no rows; the test proves nothing"
        assert not rows_a & rows_b, f"{model.__name__} leaks rows across teams"
        unscoped = set(model.objects.values_list("pk", flat=True))
        assert rows_a | rows_b <= unscoped


def test_empty_team_sees_nothing(make_team):
    team_a, _ = make_team("alpha")
    team_world(team_a, port=20022)
    empty = Team.objects.create(name="empty")
    for model in team_scoped_models():
        if model.__name__ in {"Quota", "Membership"}:
            continue
        assert not model.objects.for_team(empty).exists(), model.__name__
