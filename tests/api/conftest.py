import pytest
from rest_framework.test import APIClient

from tenants.models import ApiToken
from tests.services.conftest import catalogue  # noqa: F401 - fixture


@pytest.fixture
def api_as():
    """An API client authenticated with a fresh bearer token of ``user``."""

    def make(user):
        _, key = ApiToken.issue(user, "test")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        return client

    return make
