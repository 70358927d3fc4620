"""The registry token endpoint: who gets which actions on which repository,
and every refusal (bad or revoked key, wrong service, malformed scope)."""

import base64

import jwt
import pytest
from cryptography import x509
from django.utils import timezone

from tenants.models import ApiToken
from workers.drivers.registry.signing import libtrust_key_id

pytestmark = pytest.mark.django_db
URL = "/api/v1/registry/token"
SERVICE = "strata-registry"


def basic(password: str, username: str = "token") -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def ask(client, registry_settings):
    def get(key, *scopes, service=SERVICE, authorization=None):
        params = {"service": service, "scope": list(scopes)} if service else {"scope": list(scopes)}
        return client.get(URL, params, HTTP_AUTHORIZATION=authorization or basic(key))

    return get


def claims(answer, settings):
    """The verified claims of a token answer, checked against the registry's certificate."""
    assert answer.status_code == 200, answer.content
    token = answer.json()["token"]
    cert_path = settings.STRATA_REGISTRY_AUTH_DIR / "token-signing.crt"
    public_key = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"] == libtrust_key_id(public_key)
    return jwt.decode(token, public_key, algorithms=["ES256"], audience=SERVICE, issuer="strata")


def actions(answer, settings):
    return {entry["name"]: entry["actions"] for entry in claims(answer, settings)["access"]}


@pytest.mark.parametrize(
    ("role", "granted"),
    [
        ("viewer", ["pull"]),
        ("developer", ["pull", "push"]),
        ("admin", ["pull", "push", "delete"]),
    ],
)
def test_a_member_gets_what_its_role_allows_in_its_team(ask, api_key, settings, role, granted):
    key = api_key("alpha", role)
    answer = ask(key, "repository:alpha/web:pull,push,delete")
    assert actions(answer, settings) == {"alpha/web": granted}
    assert answer.json()["expires_in"] == settings.STRATA_REGISTRY_TOKEN_SECONDS


def test_another_team_and_an_absent_team_get_nothing_alike(ask, api_key, settings):
    api_key("alpha", "admin")
    key = api_key("beta", "admin")
    answer = ask(key, "repository:alpha/web:pull", "repository:nosuch/web:pull,push",
                 "repository:beta/web:pull")
    assert actions(answer, settings) == {"alpha/web": [], "nosuch/web": [], "beta/web": ["pull"]}


def test_no_catalog_and_no_repository_outside_a_team_namespace(ask, api_key, settings):
    key = api_key("alpha", "admin")
    answer = ask(key, "registry:catalog:*", "repository:alpha:pull", "repository:alpha/web:*")
    assert actions(answer, settings) == {"catalog": [], "alpha": [], "alpha/web": []}


def test_a_login_without_scope_gets_a_token_with_no_access(ask, api_key, settings):
    found = claims(ask(api_key("alpha", "viewer")), settings)
    assert found["access"] == []
    assert found["sub"].startswith("alpha-viewer")
    assert found["exp"] - found["iat"] == settings.STRATA_REGISTRY_TOKEN_SECONDS


@pytest.mark.parametrize(
    "authorization",
    [
        basic("strata_not-a-real-token"),
        basic(""),
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer strata_whatever",
        "",
    ],
)
def test_a_bad_or_missing_key_is_refused(ask, api_key, authorization):
    api_key("alpha", "admin")
    answer = ask(None, "repository:alpha/web:pull", authorization=authorization or " ")
    assert answer.status_code == 401
    assert answer["WWW-Authenticate"].startswith("Basic ")
    assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert "token" not in answer.json()


def test_a_revoked_key_is_refused(ask, api_key):
    key = api_key("alpha", "admin")
    ApiToken.objects.update(revoked_at=timezone.now())
    assert ask(key, "repository:alpha/web:pull").status_code == 401


def test_a_key_in_use_is_marked_used(ask, api_key):
    key = api_key("alpha", "admin")
    ask(key)
    assert ApiToken.objects.get().last_used_at is not None


@pytest.mark.parametrize("service", ["", "docker.io", "strata-registry\n"])
def test_another_service_is_a_400_naming_service(ask, api_key, service):
    answer = ask(api_key("alpha", "admin"), service=service or None)
    assert answer.status_code == 400
    assert "service" in answer.json()


@pytest.mark.parametrize(
    "scope",
    [
        "repository:alpha/web",
        "repository::pull",
        ":alpha/web:pull",
        "repository:alpha/web:",
        "repository:alpha/../web:pull",
        "repository:Alpha/web:pull",
        "repository:alpha/web:1:pull",
        "repository:registry.example/alpha/web:pull",
        "repository:alpha/" + "a" * 300 + ":pull",
        "repository:alpha/web\n:pull",
    ],
)
def test_a_malformed_scope_is_a_400_naming_scope(ask, api_key, scope):
    answer = ask(api_key("alpha", "admin"), scope)
    assert answer.status_code == 400, answer.content
    assert "scope" in answer.json()
    assert "token" not in answer.json()


def test_too_many_scopes_is_a_400(ask, api_key):
    scopes = [f"repository:alpha/web{i}:pull" for i in range(17)]
    assert ask(api_key("alpha", "admin"), *scopes).status_code == 400


def test_the_signing_key_is_made_once_and_private(ask, api_key, settings):
    key = api_key("alpha", "admin")
    first = claims(ask(key), settings)
    key_file = settings.STRATA_REGISTRY_AUTH_DIR / "token-signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    before = key_file.read_bytes()
    second = claims(ask(key), settings)
    assert key_file.read_bytes() == before
    assert first["jti"] != second["jti"]


def test_hostile_strings_in_every_place_of_a_scope_grant_nothing(ask, api_key, settings):
    """As the whole scope, its repository or its actions: a 400 naming scope,
    or (an action or resource type it does not know) a token without access."""
    from tests.hostile_corpus import STRINGS

    key = api_key("alpha", "admin")
    for hostile in STRINGS:
        for scope in (hostile, f"repository:alpha/{hostile}:pull", f"repository:{hostile}:pull",
                      f"repository:alpha/web:{hostile}", f"{hostile}:alpha/web:pull"):
            answer = ask(key, scope)
            if answer.status_code == 400:
                assert "scope" in answer.json(), (scope, answer.content)
                continue
            granted = [entry["actions"] for entry in claims(answer, settings)["access"]]
            assert granted in ([[]], [["pull"]]), (scope, granted)
            if granted == [["pull"]]:  # only a valid alpha/ repository with the action pull
                assert scope.endswith(":pull") and scope.startswith("repository:alpha/"), scope
        answer = ask(key, service=hostile)
        assert answer.status_code == 400 and "service" in answer.json(), hostile
