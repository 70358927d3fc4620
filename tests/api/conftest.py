import pytest
from rest_framework.test import APIClient

from tenants.models import ApiToken
from tests.services.conftest import catalogue, dev_environment  # noqa: F401 - fixture


@pytest.fixture
def api_as():
    """An API client authenticated with a fresh bearer token of ``user``."""

    def make(user):
        _, key = ApiToken.issue(user, "test")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        return client

    return make


@pytest.fixture
def dev_env(make_team, catalogue, api_as):  # noqa: F811 - catalogue is the fixture above
    """Team alpha's admin's API client and the URL of its dev environment, which
    has one running VM (nothing deployed yet); team beta exists beside it."""
    team, user = make_team("alpha")
    make_team("beta")
    env = dev_environment(team, catalogue, "dev-1")
    return api_as(user), f"/api/v1/teams/alpha/environments/{env.pk}/"
