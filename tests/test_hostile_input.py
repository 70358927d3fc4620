"""Every field of every write endpoint, in the API and in the portal, against the
hostile corpus (tests/hostile_corpus.py).

The endpoints are found, not listed: the API's from its OpenAPI schema (every
POST, PUT, PATCH and DELETE with its body and query fields), the portal's from
its URL configuration and the forms in ``cloud.interfaces.portal.forms``.  One that this module
has no case for fails the test until it is taught, so a new endpoint or field
cannot escape.  Each corpus value goes into one field of an otherwise valid
request (checked to succeed on its own) and must answer 400 with the field's
name in the error, change no row of Strata's tables and enqueue no job.  A
free-text field (a secret's value, an env value, a command argument, a token's
label) may instead take the value: then it must be stored exactly as sent.
Boolean fields take the corpus's "true", which is a boolean.
"""

import copy
import functools
import html
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from django import forms
from django.apps import apps
from django.contrib.auth.forms import AuthenticationForm
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from cloud.interfaces.portal import forms as portal_forms
from cloud.models import (
    ConsoleTicket,
    Deployment,
    ExternalRegistry,
    Flavor,
    Job,
    JobState,
    RegistryImage,
    Release,
    Secret,
    Service,
    VirtualMachine,
    VMState,
)
from cloud.services.environments import VM_ACTIONS, create_environment
from cloud.services.secrets import set_secret
from tenants.models import ApiToken
from tests.hostile_corpus import API_VALUES, STRINGS
from tests.portal.conftest import client_as, finish_job, world  # noqa: F401 - fixtures
from tests.registry.conftest import registry_settings, running_registry  # noqa: F401 - fixture
from tests.services.conftest import catalogue  # noqa: F401 - fixture
from tests.test_every_route import routes

pytestmark = pytest.mark.django_db

WRITE_METHODS = ("post", "put", "patch", "delete")
MISSING = object()
# Columns that change on every request by design, left out of the fingerprint.
VOLATILE = {"last_used_at"}


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """The login form is sent the corpus too; a real hash per attempt is slow by design."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def quiet_bad_requests():
    """Thousands of 400s are expected here; their warnings would only cost time.
    Errors (a 500) are still logged."""
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture
def hostile_world(world, registry_settings, tmp_path):  # noqa: F811 - the imported fixture
    """The portal's world, plus what each write needs to succeed once: a staging
    environment to promote to, an earlier release to roll back to, a stopped VM
    to resize, a bigger flavor, a job still running to cancel, an unused image
    (in a registry that runs, without it: deleting it there is done already)."""
    team, admin = world["team"], world["admin"]
    image = RegistryImage.objects.create(
        team=team,
        repository=f"{team.name}/old",
        digest="sha256:" + "e" * 64,
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=1,
        pushed_at=timezone.now(),
    )
    staging = create_environment(user=admin, team=team, name="stage", kind="staging", vm_count=1)
    finish_job(staging)
    VirtualMachine.objects.filter(environment=staging.environment).update(state=VMState.RUNNING)
    service = Service.objects.get(environment=world["env"], name="web")
    Deployment.objects.filter(environment=world["env"]).update(state="superseded")
    newer = Release.objects.create(
        service=service, version=2, image_digest="sha256:" + "c" * 64, spec=service_spec(team)
    )
    Deployment.objects.create(environment=world["env"], release=newer, state="succeeded")
    stopped = VirtualMachine.objects.filter(environment=world["env"]).order_by("name").last()
    VirtualMachine.objects.filter(pk=stopped.pk).update(state=VMState.STOPPED)
    Flavor.objects.create(name="large", vcpus=2, memory_mb=1024, disk_gb=5)
    running = Job.objects.create(team=team, kind="vm_reboot", state=JobState.RUNNING)
    set_secret(user=admin, team=team, name="token", value="s3cret", scope="dev")
    ApiToken.issue(admin, "ci")  # for the portal's revoke
    api = APIClient()
    api.force_authenticate(admin)  # authentication has its own tests; here it is overhead
    registry = ExternalRegistry.objects.create(
        team=team, host="ghcr.io", username="ci", password="ci-token"
    )
    scene = {**world, "stopped_vm": stopped, "running_job": running, "api": api, "image": image}
    with running_registry(tmp_path):
        yield {**scene, "registry": registry}


def service_spec(team):
    from cloud.services.deployments import validate_spec

    return validate_spec({"image": f"{team.name}/web:1"}, team)


def fingerprint() -> tuple:
    """A digest of every row of every Strata table, in one query."""
    parts = []
    for app in ("cloud", "tenants"):
        for model in apps.get_app_config(app).get_models():
            columns = [
                connection.ops.quote_name(f.column)
                for f in model._meta.concrete_fields
                if f.column not in VOLATILE
            ]
            row = f"ROW({', '.join(columns)})::text"
            table = connection.ops.quote_name(model._meta.db_table)
            digest = f"md5(coalesce(string_agg({row}, '|' ORDER BY {row}), ''))"
            parts.append(f"(SELECT {digest} FROM {table})")  # noqa: S608 - model names
    with connection.cursor() as cursor:
        # Names from the models, quoted; no input reaches this text.
        cursor.execute(f"SELECT {', '.join(parts)}")
        return cursor.fetchone()


@dataclass(frozen=True)
class Slot:
    """One place a value can go: a field, or a place inside a JSON field."""

    field: str  # the name the 400 must carry
    label: str
    put: Callable[[dict, object], dict]
    # For free text: reads back what was stored, to compare with what was sent.
    stored: Callable[[dict, object], object] | None = None
    # Values legitimately valid for the field's type (a name, a boolean).
    accepts: Callable[[object], bool] = lambda value: False


AS_IS = Slot("", "the baseline", lambda body, _: body)


def top_level(field: str, schema: dict, stored=None) -> Slot:
    """The field as a whole; what its type admits is read from its schema."""

    def put(body, value):
        return {**body, field: value}

    return Slot(field, field, put, stored, type_accepts(schema))


def type_accepts(schema: dict) -> Callable[[object], bool]:
    if schema.get("type") == "boolean":
        return lambda value: value == "true"
    if schema.get("type") in ("integer", "number"):
        return in_range(schema)
    if "pattern" in schema:  # a name: the corpus holds some valid ones ("null", "0x16")
        pattern = re.compile(schema["pattern"].removeprefix("^").removesuffix("$"))
        return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None
    return lambda value: False


def in_range(schema: dict) -> Callable[[object], bool]:
    """Numbers (or their ASCII text) within the bounds the schema documents."""
    low, high = schema.get("minimum"), schema.get("maximum")
    digits = r"-?[0-9]+" if schema["type"] == "integer" else r"-?[0-9]+(?:\.[0-9]+)?"

    def accepts(value):
        if isinstance(value, str) and re.fullmatch(digits, value):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (low is None or value >= low) and (high is None or value <= high)

    return accepts


def inside(field, label, make, *, stored=None, accepts=lambda value: False) -> Slot:
    """A place inside a JSON field; ``make`` answers None for a value JSON cannot
    put there (an object's keys are strings)."""

    def put(body, value):
        made = make(value)
        return None if made is None else {**body, field: made}

    return Slot(field, label, put, stored, accepts)


def matches(pattern: str) -> Callable[[object], bool]:
    """Whether a value is valid, by the rule of the documented format."""
    regex = re.compile(pattern)
    return lambda value: isinstance(value, str) and regex.fullmatch(value) is not None


def hostile_service(scene) -> Service:
    return Service.objects.get(environment=scene["env"], name="hostile")


ENV_NAME = matches(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Places inside the deploy's JSON fields, beyond the field as a whole.
DEPLOY_INSIDE = [
    inside("env", "env key", lambda v: {v: "x"} if isinstance(v, str) else None, accepts=ENV_NAME),
    inside(
        "env",
        "env value",
        lambda v: {"GREETING": v},
        stored=lambda scene, v: hostile_service(scene).env["GREETING"],
    ),
    inside(
        "secret_env",
        "secret_env key",
        lambda v: {v: "token"} if isinstance(v, str) else None,
        accepts=ENV_NAME,
    ),
    inside("secret_env", "secret_env value", lambda v: {"TOKEN": v}),
    inside(
        "command",
        "command argument",
        lambda v: ["serve", v],
        stored=lambda scene, v: hostile_service(scene).command[1],
    ),
    inside("volumes", "volume", lambda v: [v]),
    inside(
        "volumes",
        "volume path",
        lambda v: [f"data:/srv/{v}"] if isinstance(v, str) else None,
        # One more path component; "." and ".." are not names.
        accepts=lambda v: matches(r"[A-Za-z0-9_.-]{1,190}")(v) and v not in (".", ".."),
    ),
    inside("ports", "port", lambda v: [v]),
    inside("healthcheck", "health type", lambda v: {"type": v, "port": 80}),
    inside(
        "healthcheck",
        "health path",
        lambda v: {"type": "http", "path": v, "port": 80},
        accepts=matches(r"/[\x21-\x7e]{0,200}"),  # an HTTP path: printable, no blanks
    ),
    inside("healthcheck", "health port", lambda v: {"type": "tcp", "port": v}),
    inside(
        "healthcheck",
        "health command",
        lambda v: {"type": "command", "command": ["check", v]},
        stored=lambda scene, v: hostile_service(scene).healthcheck["command"][1],
    ),
    inside("healthcheck", "health interval", lambda v: {"type": "tcp", "port": 80, "interval": v}),
]


def secret_value(scene, value):
    return Secret.objects.get(team=scene["team"], name="fresh").value


def registry_password(scene, value):
    return ExternalRegistry.objects.get(
        team=scene["team"], host="registry.example.com:5000"
    ).password


def registry_username(scene, value):
    return ExternalRegistry.objects.get(
        team=scene["team"], host="registry.example.com:5000"
    ).username


@dataclass(frozen=True)
class ApiCase:
    url: Callable[[dict, dict], str]  # of the world and the baseline body
    baselines: list[dict]
    inside: list[Slot] = ()
    free_text: dict = None  # field -> reader of the stored value
    valid: dict = None  # field -> a corpus value that is valid there


def team_url(path):
    return lambda w, _: f"/api/v1/teams/{w['team'].name}/{path}"


def env_url(action):
    return lambda w, _: f"/api/v1/teams/{w['team'].name}/environments/{w['env'].pk}/{action}"


def vm_url(w, baseline):
    vm = w["vm"] if baseline["action"] == "reboot" else w["stopped_vm"]
    return f"/api/v1/teams/{w['team'].name}/vms/{vm.pk}/actions/"


API_CASES = {
    ("post", "/api/v1/teams/{team}/environments/"): ApiCase(
        team_url("environments/"),
        [{"name": "blog", "kind": "dev", "vm_count": 1, "flavor": "small", "image": "debian-12"}],
    ),
    ("delete", "/api/v1/teams/{team}/environments/{id}/"): ApiCase(env_url(""), [{}]),
    ("post", "/api/v1/teams/{team}/environments/{id}/deploy/"): ApiCase(
        env_url("deploy/"),
        [{"service_name": "hostile", "image": "alpha/web:1", "ports": [8080]}],
        DEPLOY_INSIDE,
        # An empty list or object: no command, no variables, no check.
        valid={
            "command": [],
            "env": {},
            "secret_env": {},
            "volumes": [],
            "ports": [],
            "healthcheck": {},
        },
    ),
    ("post", "/api/v1/teams/{team}/environments/{id}/promote/"): ApiCase(
        env_url("promote/"), [{"service_name": "web", "target_env": "stage"}]
    ),
    ("post", "/api/v1/teams/{team}/environments/{id}/scale/"): ApiCase(
        env_url("scale/"), [{"service_name": "web", "replicas": 2}]
    ),
    ("post", "/api/v1/teams/{team}/environments/{id}/rollback/"): ApiCase(
        env_url("rollback/"), [{"service_name": "web"}]
    ),
    ("post", "/api/v1/teams/{team}/jobs/{id}/cancel/"): ApiCase(
        lambda w, _: f"/api/v1/teams/{w['team'].name}/jobs/{w['running_job'].pk}/cancel/", [{}]
    ),
    ("post", "/api/v1/teams/{team}/secrets/"): ApiCase(
        team_url("secrets/"),
        [{"name": "fresh", "value": "s3cret", "scope": "dev"}],
        free_text={"value": secret_value},
    ),
    ("delete", "/api/v1/teams/{team}/secrets/{name}/"): ApiCase(
        team_url("secrets/token/"), [{"scope": "dev"}]
    ),
    # No fields: only the baseline runs, against a real registry (hostile_world starts it).
    ("delete", "/api/v1/teams/{team}/images/{image_id}/"): ApiCase(
        lambda w, _: f"/api/v1/teams/{w['team'].name}/images/{w['image'].pk}/", [{}]
    ),
    ("post", "/api/v1/teams/{team}/registries/"): ApiCase(
        team_url("registries/"),
        [{"host": "registry.example.com:5000", "username": "ci", "password": "ci-token"}],
        free_text={"password": registry_password, "username": registry_username},
    ),
    ("delete", "/api/v1/teams/{team}/registries/{registry_id}/"): ApiCase(
        lambda w, _: f"/api/v1/teams/{w['team'].name}/registries/{w['registry'].pk}/", [{}]
    ),
    ("post", "/api/v1/teams/{team}/vms/{id}/actions/"): ApiCase(
        vm_url,
        [
            {"action": "reboot"},
            {"action": "snapshot", "snapshot": "before-upgrade"},
            {"action": "resize", "flavor": "large"},
        ],
    ),
}


@functools.cache
def write_operations() -> dict[tuple[str, str], dict]:
    """(method, path) -> {field: (query or body, its schema)} for every write in the API."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]
    found = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method not in WRITE_METHODS:
                continue
            fields = {
                p["name"]: ("query", p["schema"])
                for p in operation.get("parameters", [])
                if p["in"] == "query"
            }
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
                properties = components[ref].get("properties", {})
                fields |= {name: ("body", prop) for name, prop in properties.items()}
            found[(method, path)] = fields
    return found


def test_every_write_endpoint_of_the_api_has_a_case():
    """Done-means of #9: the corpus reaches every write endpoint the schema lists."""
    operations = set(write_operations())
    assert operations - set(API_CASES) == set(), "teach API_CASES these endpoints"
    assert set(API_CASES) - operations == set(), "API_CASES names endpoints that are gone"


def send_api(scene, key, baseline, fields, slot, value):
    """The response to the write ``key`` with ``value`` in ``slot``."""
    method, _ = key
    url = API_CASES[key].url(scene, baseline)
    body = slot.put(copy.deepcopy(baseline), value)
    if body is None:
        return None
    client = scene["api"]
    if fields.get(slot.field, ("body",))[0] == "query" or method == "delete":
        if any(not isinstance(v, str) for v in body.values()):
            return None  # a query string holds only text
        return client.generic(method.upper(), f"{url}?{urlencode(body)}")
    return getattr(client, method)(url, body, format="json")


def judge(response, slot, value, scene, changed, enqueued, case) -> str | None:
    """What is wrong with the answer to one hostile value, or None."""
    status = response.status_code
    if status == 400:
        body = response.json()
        if slot.field not in body:
            return f"400 does not name {slot.field}: {str(body)[:200]}"
        if changed or enqueued:
            return f"400, yet rows changed ({changed}) or jobs were enqueued ({enqueued})"
        return None
    if 200 <= status < 300:
        valid = (case.valid or {}).get(slot.label, MISSING)
        if slot.accepts(value) or (value == valid and type(value) is type(valid)):
            return None
        reader = slot.stored or (case.free_text or {}).get(slot.label)
        if reader is None:
            return f"{status} for garbage: {response.content[:200]!r}"
        stored = reader(scene, value)
        return None if stored == value else f"stored {stored!r:.80} instead of the value sent"
    return f"{status}: {response.content[:300]!r}"


def run_api_case(scene, key, fields) -> list[str]:
    case = API_CASES[key]
    slots = [top_level(name, schema) for name, (_, schema) in fields.items()]
    slots += case.inside
    problems = []
    clean = fingerprint()
    for baseline in case.baselines:
        sid = transaction.savepoint()
        ok = send_api(scene, key, baseline, {}, AS_IS, None)
        transaction.savepoint_rollback(sid)
        assert ok is not None and 200 <= ok.status_code < 300, (key, baseline, ok.content)
        for slot in slots:
            for value in API_VALUES:
                sid = transaction.savepoint()
                pending = len(connection.run_on_commit)
                response = send_api(scene, key, baseline, fields, slot, value)
                if response is not None:
                    enqueued = len(connection.run_on_commit) - pending
                    changed = fingerprint() != clean
                    problem = judge(response, slot, value, scene, changed, enqueued, case)
                    if problem:
                        problems.append(f"{key[0]} {key[1]} {slot.label}={value!r:.60}: {problem}")
                transaction.savepoint_rollback(sid)
    return problems


@pytest.mark.parametrize("key", sorted(API_CASES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_api_write_refuses_the_corpus_in_every_field(hostile_world, key):
    """Done-means of #9: each field of this API write, each corpus value: a 400
    naming the field that changes nothing and enqueues nothing (or, for free
    text, the value stored exactly)."""
    fields = write_operations()[key]
    problems = run_api_case(hostile_world, key, fields)
    assert not problems, f"{len(problems)} answers were wrong:\n" + "\n".join(problems[:40])


# The portal.  Forms arrive as text, so only the corpus's strings are sent, and
# only those a browser can encode (a lone surrogate cannot be).
PORTAL_STRINGS = [s for s in STRINGS if s.encode(errors="ignore").decode() == s]
SLUG = matches(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
# Pages that only show: they must refuse a POST outright.
READ_ONLY_ROUTES = {
    "portal:home",
    "portal:dashboard",
    "portal:active-jobs",
    "portal:environment",
    "portal:vm",
    "portal:vm-console",
    "portal:jobs",
    "portal:job",
    "portal:job-live",
    "portal:audit",
    "portal:images",
}


@dataclass(frozen=True)
class PortalCase:
    route: str
    url_kwargs: Callable[[dict], dict]
    form: type[forms.Form] | None
    baseline: dict
    stored: dict = None  # field -> reader of the stored value, for free text
    anonymous: bool = False
    success: int = 302  # the status of a write that worked
    headers: dict = None  # what a browser sends with it (the console ticket's Origin)


def env_kwargs(scene, **more):
    return {"team": scene["team"].name, "env_id": scene["env"].pk, **more}


def vm_kwargs(action):
    def kwargs(scene):
        vm = scene["vm"] if action in ("stop", "reboot") else scene["stopped_vm"]
        return {"team": scene["team"].name, "vm_id": vm.pk, "action": action}

    return kwargs


VM_BASELINES = {"snapshot": {"snapshot": "before-upgrade"}, "resize": {"flavor": "large"}}
PORTAL_CASES = [
    PortalCase(
        "portal:environment-create",
        lambda s: {"team": s["team"].name},
        portal_forms.CreateEnvironmentForm,
        {"name": "blog", "kind": "dev", "vm_count": "1", "flavor": "small", "image": "debian-12"},
    ),
    PortalCase(
        "portal:environment-destroy",
        env_kwargs,
        portal_forms.DestroyEnvironmentForm,
        {"confirm_name": "shop"},
    ),
    PortalCase(
        "portal:deploy",
        env_kwargs,
        portal_forms.DeployForm,
        {
            "service_name": "hostile",
            "image": "alpha/web:1",
            "replicas": "1",
            "ports": "8080",
            "healthcheck": "",
        },
    ),
    PortalCase(
        "portal:service-action",
        lambda s: env_kwargs(s, service_name="web", action="scale"),
        portal_forms.ScaleForm,
        {"replicas": "2"},
    ),
    PortalCase(
        "portal:service-action",
        lambda s: env_kwargs(s, service_name="web", action="promote"),
        portal_forms.PromoteForm,
        {"target_env": "stage"},
    ),
    PortalCase(
        "portal:service-action",
        lambda s: env_kwargs(s, service_name="web", action="rollback"),
        None,
        {},
    ),
    *(
        PortalCase(
            "portal:vm-action",
            vm_kwargs(action),
            portal_forms.VM_ACTION_FORMS.get(action),
            VM_BASELINES.get(action, VM_BASELINES["snapshot"])
            if action in portal_forms.VM_ACTION_FORMS
            else {},
        )
        for action in VM_ACTIONS
    ),
    PortalCase(
        "portal:job-cancel",
        lambda s: {"team": s["team"].name, "job_id": s["running_job"].pk},
        None,
        {},
    ),
    # No input but the image named in the URL: a delete answers with the page again,
    # deleted or refused with the reason (here the registry, not started, is down).
    PortalCase(
        "portal:image-delete",
        lambda s: {"team": s["team"].name, "image_id": s["image"].pk},
        None,
        {},
    ),
    PortalCase(
        "portal:tokens",
        lambda s: {},
        portal_forms.TokenForm,
        {"name": "ci deploys"},
        stored={"name": lambda s, v: ApiToken.objects.filter(user=s["admin"]).latest("pk").name},
        success=200,  # the page shows the new key once
    ),
    PortalCase(
        "portal:token-revoke",
        lambda s: {"token_id": ApiToken.objects.filter(user=s["admin"]).first().pk},
        None,
        {},
    ),
    PortalCase(
        "portal:login",
        lambda s: {},
        AuthenticationForm,
        {"username": "alice", "password": "pw"},
        anonymous=True,
    ),
    PortalCase("portal:logout", lambda s: {}, None, {}),
    # Its only input is the Origin header: test_console_ticket_refuses_hostile_origins.
    PortalCase(
        "portal:vm-console-ticket",
        lambda s: {"team": s["team"].name, "vm_id": s["vm"].pk},
        None,
        {},
        headers={"Origin": "http://testserver"},
        success=200,
    ),
]


def test_every_portal_write_and_form_has_a_case():
    """Done-means of #9: the corpus reaches every portal route that takes a POST
    and every form; read-only pages refuse a POST, so they need none."""
    portal_routes = {name for name, _ in routes() if name.startswith("portal:")}
    covered = {case.route for case in PORTAL_CASES}
    assert portal_routes - covered - READ_ONLY_ROUTES == set(), "teach PORTAL_CASES these"
    assert (covered | READ_ONLY_ROUTES) - portal_routes == set(), "these routes are gone"
    defined = {
        value
        for value in vars(portal_forms).values()
        if isinstance(value, type)
        and issubclass(value, forms.BaseForm)
        and value.__module__ == portal_forms.__name__
    }
    used = {case.form for case in PORTAL_CASES}
    assert defined - used == set(), "teach PORTAL_CASES these forms"


def test_read_only_pages_refuse_a_post(hostile_world, client):
    client.force_login(hostile_world["admin"])
    kwargs = {
        "team": hostile_world["team"].name,
        "env_id": hostile_world["env"].pk,
        "vm_id": hostile_world["vm"].pk,
        "job_id": hostile_world["running_job"].pk,
    }
    for name, regex in routes():
        if name in READ_ONLY_ROUTES:
            url = reverse(name, kwargs={k: kwargs[k] for k in regex.groupindex})
            assert client.post(url, {"name": "x"}).status_code == 405, name


def takes_a_body(key) -> bool:
    return any(where == "body" for where, _ in write_operations()[key].values())


@pytest.mark.parametrize(
    "key", sorted(filter(takes_a_body, API_CASES)), ids=lambda k: f"{k[0]}-{k[1]}"
)
def test_api_write_refuses_a_field_it_does_not_take(hostile_world, key):
    """Done-means of #9: a misspelt field ("replica") is a 400 naming it, not
    ignored while the default is used; nothing changes."""
    clean = fingerprint()
    for baseline in API_CASES[key].baselines:
        sid = transaction.savepoint()
        response = send_api(hostile_world, key, {**baseline, "replica": 3}, {}, AS_IS, None)
        assert response.status_code == 400 and "replica" in response.json(), response.content
        assert fingerprint() == clean
        transaction.savepoint_rollback(sid)


def bound_forms(response) -> list[forms.BaseForm]:
    """Every submitted form the page was rendered with, wherever in its context."""
    found = []

    def walk(value):
        if isinstance(value, forms.BaseForm):
            if value.is_bound:
                found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for context in response.context or []:
        walk(context.flatten())
    return found


def portal_accepts(field: forms.Field, value: str) -> bool:
    """Whether a value is valid for the field's type, by the documented rule."""
    if not field.required and not value.strip():
        return True  # an optional field left blank: no ports, no health check
    if isinstance(field, forms.IntegerField):
        low, high = field.min_value, field.max_value
        return matches(r"-?[0-9]+")(value) and low <= int(value) <= high
    if isinstance(field, forms.CharField) and any(
        getattr(v, "message", "") == "Use 1-40 lowercase letters, digits and inner hyphens."
        for v in field.validators
    ):
        return SLUG(value)
    return False


def judge_portal(case, name, response, value, scene, changed, enqueued) -> str | None:
    status = response.status_code
    if case.anonymous:  # credentials: refused as a pair, never saying which one was wrong
        form = response.context and response.context.get("form")
        if status != 200 or form is None or not form.errors or changed:
            return f"login with a hostile {name} answered {status}, errors {form and form.errors}"
        return None
    if "<" in value and value.encode() in response.content:
        return "the value was put in the page unescaped"
    if status == 400:
        errors = [e for form in bound_forms(response) for e in form.errors.get(name, [])]
        if not errors:
            return f"400 without an error next to {name}"
        if any(html.escape(e).encode() not in response.content for e in errors):
            return f"the error next to {name} is not on the page"
        if changed or enqueued:
            return f"400, yet rows changed ({changed}) or jobs were enqueued ({enqueued})"
        return None
    if status == case.success:
        if portal_accepts(case.form.base_fields[name], value):
            return None
        reader = (case.stored or {}).get(name)
        if reader is None:
            return "302 for garbage"
        stored = reader(scene, value)
        return None if stored == value else f"stored {stored!r:.80} instead of the value sent"
    return f"{status}: {response.content[:200]!r}"


def run_portal_case(scene, case, client) -> list[str]:
    url = reverse(case.route, kwargs=case.url_kwargs(scene))
    if not case.anonymous:
        client.force_login(scene["admin"])
    sid = transaction.savepoint()
    ok = client.post(url, case.baseline, headers=case.headers)
    transaction.savepoint_rollback(sid)
    assert ok.status_code == case.success, (case.route, case.baseline, ok.content[:500])
    clean = fingerprint()
    problems = []
    for name in case.form.base_fields if case.form else ():
        for value in PORTAL_STRINGS:
            sid = transaction.savepoint()
            pending = len(connection.run_on_commit)
            response = client.post(url, {**case.baseline, name: value})
            enqueued = len(connection.run_on_commit) - pending
            changed = fingerprint() != clean
            problem = judge_portal(case, name, response, value, scene, changed, enqueued)
            if problem:
                problems.append(f"{url} {name}={value!r:.60}: {problem}")
            transaction.savepoint_rollback(sid)
    return problems


@pytest.mark.parametrize(
    "case",
    PORTAL_CASES,
    ids=lambda c: f"{c.route}-{getattr(c.form, '__name__', 'no form')}",
)
def test_portal_form_refuses_the_corpus_in_every_field(hostile_world, case, client):
    """Done-means of #9: each field of this portal form, each corpus string: a
    400 with the error next to the field, nothing changed, nothing enqueued."""
    problems = run_portal_case(hostile_world, case, client)
    assert not problems, f"{len(problems)} answers were wrong:\n" + "\n".join(problems[:40])


def test_console_ticket_refuses_hostile_origins(hostile_world, client):
    """The console ticket's one input is the page's Origin header: anything that
    is not a page's origin is a 400 naming it, and no ticket is issued."""
    client.force_login(hostile_world["admin"])
    url = reverse(
        "portal:vm-console-ticket",
        kwargs={"team": hostile_world["team"].name, "vm_id": hostile_world["vm"].pk},
    )
    problems = []
    for value in PORTAL_STRINGS:
        if value.strip().startswith(("http://", "https://")):
            continue  # shaped like an origin: the ticket is bound to it, and only it
        response = client.post(url, headers={"Origin": value})
        if response.status_code != 400 or "origin" not in response.json()["errors"]:
            problems.append(f"Origin {value!r:.60}: {response.status_code}")
    assert not problems, "\n".join(problems)
    assert not ConsoleTicket.objects.exists()
