"""The ``strata`` command against a live server."""

import json
import os
import subprocess
import sys

import pytest

from cloud.models import Container, Deployment, Job, Release, Service
from tenants.models import ApiToken
from tests.foundation.factories import team_world

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def cli_for(live_server, user):
    """``run(*args, stdin="", token=...)``: ``strata`` as a subprocess with a token of ``user``."""
    _, key = ApiToken.issue(user, "cli")

    def run(*args, stdin="", token=key):
        env = {**os.environ, "STRATA_URL": live_server.url, "STRATA_TOKEN": token}
        env.pop("STRATA_TEAM", None)
        return subprocess.run(
            [sys.executable, "-m", "cloud.interfaces.cli", "--interval", "0.1", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
def strata(live_server, make_team, catalogue):
    return cli_for(live_server, make_team("alpha")[1])


def test_env_create_list_show_and_jobs(strata):
    created = strata("env", "create", "web", "--kind", "dev", "--vms", "2")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("job ") and "queued" in created.stdout
    listing = strata("env", "list")
    assert "web" in listing.stdout and "scheduled:2" in listing.stdout and "yes" in listing.stdout
    shown = strata("env", "show", "web")
    assert "web-1" in shown.stdout and "web-2" in shown.stdout
    jobs = strata("jobs", "list")
    assert "create_environment" in jobs.stdout


def test_watch_exits_by_the_jobs_outcome(strata):
    strata("env", "create", "web", "--kind", "dev")
    parent = Job.objects.get(kind="create_environment")
    child = parent.children.get()
    for job in (child, parent):
        Job.objects.filter(pk=job.pk).update(state="succeeded", progress=100)
    ok = strata("jobs", "watch", str(parent.pk))
    assert ok.returncode == 0 and "100% succeeded" in ok.stdout
    Job.objects.filter(pk=parent.pk).update(state="failed", error="disk full")
    failed = strata("jobs", "watch", str(parent.pk))
    assert failed.returncode == 1 and "job failed: disk full" in failed.stdout


def test_errors_name_the_field_and_exit_2(strata):
    bad = strata("env", "create", "../etc", "--kind", "dev")
    assert bad.returncode == 2 and "400: name:" in bad.stderr
    unknown = strata("env", "destroy", "nope", "--yes")
    assert unknown.returncode == 2 and "no environment named 'nope'" in unknown.stderr
    strata("env", "create", "web", "--kind", "dev")
    unconfirmed = strata("env", "destroy", "web")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    denied = strata("env", "list", token="strata_wrong")
    assert denied.returncode == 2 and "401" in denied.stderr


def test_missing_settings_are_explained():
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    result = subprocess.run(
        [sys.executable, "-m", "cloud.interfaces.cli", "env", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "STRATA_URL" in result.stderr


def test_deploy_scale_and_bad_health(strata):
    from cloud.models import Environment, Flavor, Image, VirtualMachine

    strata("env", "create", "web", "--kind", "dev")
    env = Environment.objects.get(name="web")
    Job.objects.update(state="succeeded")
    VirtualMachine.objects.filter(environment=env).update(state="running")
    deployed = strata(
        "deploy",
        "web",
        "site",
        "alpha/site:1",
        "--port",
        "8080",
        "--health",
        "http:/healthz:8080",
        "--env",
        "MODE=prod",
    )
    assert deployed.returncode == 0, deployed.stderr
    from cloud.models import Release

    spec = Release.objects.get().spec
    assert spec["healthcheck"] == {"type": "http", "path": "/healthz", "port": 8080}
    assert spec["env"] == {"MODE": "prod"} and spec["ports"] == [8080]
    bad = strata("deploy", "web", "site", "alpha/site:2", "--health", "smoke-signals")
    assert bad.returncode == 2 and "--health" in bad.stderr
    premature = strata("scale", "web", "site", "3")
    assert premature.returncode == 2 and "no successful release" in premature.stderr
    assert Flavor.objects.exists() and Image.objects.exists()


def test_secrets_from_stdin(live_server, make_team, catalogue):
    team, user = make_team("gamma")
    run = cli_for(live_server, user)

    # Finding 9.3: a secret names its scope, and the same name holds a value per scope.
    assert run("secret", "set", "db-password", stdin="hunter2\n").returncode == 2
    assert run("secret", "set", "db-password", "--scope", "prod", stdin="hunter2\n").returncode == 0
    assert run("secret", "set", "db-password", "--scope", "dev", stdin="dev-pw-1\n").returncode == 0
    from cloud.models import Secret

    stored = Secret.objects.filter(team=team, name="db-password").values_list("scope", "value")
    assert dict(stored) == {"prod": "hunter2", "dev": "dev-pw-1"}
    listed = run("secret", "list", "--scope", "prod")
    assert "db-password" in listed.stdout and "prod" in listed.stdout
    assert "hunter2" not in listed.stdout and "dev" not in listed.stdout.replace("prod", "")
    assert run("secret", "rm", "db-password", "--scope", "dev").returncode == 0
    assert run("secret", "rm", "db-password", "--scope", "dev").returncode == 2
    assert Secret.objects.get(team=team, name="db-password").scope == "prod"


def test_registries_from_stdin(live_server, make_team):
    team, user = make_team("gamma")
    run = cli_for(live_server, user)

    added = run("registry", "add", "ghcr.io", "--username", "ci", stdin="ghp_secret-token\n")
    assert added.returncode == 0, added.stderr
    assert "deploy ghcr.io/REPOSITORY:TAG" in added.stdout
    from cloud.models import ExternalRegistry

    assert ExternalRegistry.objects.get(team=team).password == "ghp_secret-token"
    listed = run("registry", "list")
    assert "ghcr.io" in listed.stdout and "ci" in listed.stdout
    assert "ghp_secret-token" not in listed.stdout
    bad = run("registry", "add", "ghcr.io/org", "--username", "ci", stdin="x\n")
    assert bad.returncode == 2 and "host" in bad.stderr
    assert run("registry", "rm", "ghcr.io").returncode == 0
    gone = run("registry", "rm", "ghcr.io")
    assert gone.returncode == 2 and "no registry ghcr.io" in gone.stderr
    assert not ExternalRegistry.objects.exists()


def test_env_show_services_releases_and_images_for_people_and_scripts(
    live_server, make_team, catalogue
):
    """What a team that deployed from the CLI needs to find: the release, its
    digest, replicas and health, and where the service answers; --json for scripts."""
    team, user = make_team("alpha")
    team_world(team, port=20022)
    release = Release.objects.get()
    Deployment.objects.update(state="succeeded")
    Container.objects.update(state="running", health="healthy")
    Service.objects.update(ports=[22], replicas=2)
    Release.objects.create(
        service=release.service,
        version=2,
        image_digest="sha256:" + "b" * 64,
        spec={"image": "web:2"},
    )
    run = cli_for(live_server, user)

    def strata(*args):
        done = run(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = strata("env", "show", "dev")
    assert "vm1" in shown
    row = next(line for line in shown.splitlines() if line.startswith("web "))
    assert row.split()[:4] == ["web", "v1", "sha256:aaaaaaaaaaaa", "1/1/2"]
    assert "healthy" in row and "127.0.0.1:20022 -> vm1:22" in row

    services = json.loads(strata("services", "dev", "--json"))
    assert services[0]["current_release"]["digest"] == "sha256:" + "a" * 64
    assert services[0]["containers"][0]["health"] == "healthy"

    releases = strata("releases", "dev", "web").splitlines()
    assert releases[0].split()[:3] == ["NOW", "SERVICE", "VERSION"]
    assert releases[1].split()[:3] == ["web", "2", "web:2"]  # newest first, not current
    assert releases[2].split()[:3] == ["*", "web", "1"]
    listed = json.loads(strata("releases", "dev", "--json"))
    assert [(r["version"], r["current"]) for r in listed] == [(2, False), (1, True)]

    images = json.loads(strata("images", "--json"))
    assert images[0]["repository"] == "alpha/web" and images[0]["tags"] == ["1"]
    assert "debian-12" in strata("images", "--vm")
    assert json.loads(strata("env", "list", "--json"))[0]["name"] == "dev"
    assert json.loads(strata("jobs", "list", "--json"))[0]["kind"] == "provision"

    unknown = run("releases", "nope")
    assert unknown.returncode == 2 and "no environment named 'nope'" in unknown.stderr
