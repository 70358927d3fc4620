import pytest

from tenants.models import Membership, Role
from tenants.services import create_team


@pytest.fixture
def make_team(django_user_model):
    """Create a team (with its quota) whose one member has ``role``; returns (team, user)."""

    def make(name: str, role: str = Role.ADMIN, username: str | None = None):
        user = django_user_model.objects.create_user(username or f"{name}-{role}", password="pw")
        team = create_team(name, user)
        Membership.objects.filter(team=team, user=user).update(role=role)
        return team, user

    return make


@pytest.fixture(autouse=True)
def plain_http(settings):
    """The test client speaks plain HTTP; production redirects it to HTTPS."""
    settings.SECURE_SSL_REDIRECT = False
