"""The real registry with Strata's tokens, driven by the real Docker CLI and
dockerd: a developer pushes and pulls, a viewer pulls but cannot push,
another team cannot pull or list and gets the answer an absent repository
gets, and a bad key cannot log in."""

import subprocess

import pytest
import requests

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
SERVICE = "strata-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(autouse=True)
def needs_dockerd():
    if subprocess.run(["docker", "version"], capture_output=True, timeout=30).returncode:
        pytest.fail("dockerd is not running (scripts/services.sh docker starts it)")


def registry_token(live_server, key: str, scope: str) -> str:
    answer = requests.get(
        f"{live_server.url}/api/v1/registry/token",
        params={"service": SERVICE, "scope": scope},
        auth=("token", key),
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()["token"]


def registry_get(registry, live_server, key: str, repository: str, what: str):
    """GET /v2/<repository>/<what> with a token asked for pull on that repository."""
    token = registry_token(live_server, key, f"repository:{repository}:pull")
    return requests.get(
        f"http://{registry}/v2/{repository}/{what}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


@pytest.fixture
def pushed(registry, api_key, docker_cli, local_image):
    """alpha/web:1 pushed by an alpha developer; returns (registry, developer's CLI, reference)."""
    developer = docker_cli()
    developer.login(registry, api_key("alpha", "developer"))
    reference = local_image(f"{registry}/alpha/web:1")
    developer.run("push", reference)
    return registry, developer, reference


def test_a_developer_pushes_and_pulls_its_team_image(pushed, api_key, live_server):
    registry, developer, reference = pushed
    subprocess.run(["docker", "rmi", reference], capture_output=True, check=True, timeout=60)
    developer.run("pull", reference)
    tags = registry_get(registry, live_server, api_key("alpha", "viewer"), "alpha/web", "tags/list")
    assert tags.status_code == 200
    assert tags.json() == {"name": "alpha/web", "tags": ["1"]}


def test_a_push_by_digest_pulls_back_the_same_image(pushed):
    registry, developer, reference = pushed
    digest = developer.run("inspect", "--format", "{{index .RepoDigests 0}}", reference).stdout
    subprocess.run(["docker", "rmi", reference], capture_output=True, check=True, timeout=60)
    developer.run("pull", digest.strip())


def test_a_viewer_pulls_but_cannot_push(pushed, api_key, docker_cli, local_image, live_server):
    registry, _, reference = pushed
    viewer = docker_cli()
    viewer_key = api_key("alpha", "viewer")
    viewer.login(registry, viewer_key)
    viewer.run("pull", reference)
    refused = viewer.run("push", local_image(f"{registry}/alpha/web:2"), check=False)
    assert refused.returncode != 0
    assert "denied" in refused.stderr or "unauthorized" in refused.stderr
    tags = registry_get(registry, live_server, viewer_key, "alpha/web", "tags/list")
    assert tags.json()["tags"] == ["1"]  # nothing of the refused push landed


def _pull_error(cli, reference: str) -> str:
    refused = cli.run("pull", reference, check=False)
    assert refused.returncode != 0
    return refused.stderr.replace(reference, "<reference>").replace(
        reference.rsplit(":", 1)[0], "<repository>"
    )


def test_another_team_cannot_pull_and_sees_it_as_absent(pushed, api_key, docker_cli):
    registry, _, reference = pushed
    outsider = docker_cli()
    outsider.login(registry, api_key("beta", "admin"))
    existing = _pull_error(outsider, reference)
    absent = _pull_error(outsider, f"{registry}/alpha/nosuch:1")
    assert existing == absent
    assert "denied" in existing


def test_another_team_cannot_list_tags_or_read_manifests(pushed, api_key, live_server):
    registry, _, _ = pushed
    outsider_key = api_key("beta", "admin")
    answers = {
        (repository, what): registry_get(registry, live_server, outsider_key, repository, what)
        for repository in ("alpha/web", "alpha/nosuch")
        for what in ("tags/list", "manifests/1")
    }
    for answer in answers.values():
        assert answer.status_code == 401
        assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"
    # The answer names the repository asked for, and nothing else differs.
    bodies = {key: answer.text.replace(key[0], "<repository>") for key, answer in answers.items()}
    assert bodies[("alpha/web", "tags/list")] == bodies[("alpha/nosuch", "tags/list")]


def test_another_team_cannot_push_into_the_namespace(pushed, api_key, docker_cli, local_image):
    registry, _, _ = pushed
    outsider = docker_cli()
    outsider.login(registry, api_key("beta", "admin"))
    refused = outsider.run("push", local_image(f"{registry}/alpha/web:evil"), check=False)
    assert refused.returncode != 0


def test_a_bad_key_cannot_log_in(registry, api_key, docker_cli):
    api_key("alpha", "admin")
    refused = docker_cli().login(registry, "strata_not-a-real-token", check=False)
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower()


def test_the_catalog_lists_nothing(pushed, api_key, live_server):
    registry, _, _ = pushed
    token = registry_token(live_server, api_key("alpha", "admin"), "registry:catalog:*")
    answer = requests.get(
        f"http://{registry}/v2/_catalog", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 401


def test_another_team_cannot_mount_a_blob_it_cannot_pull(
    pushed, api_key, live_server, docker_cli
):
    """A cross-repository mount needs pull on the source, which another team's
    token never carries: the layer is not linked into its repository, and the
    Docker client, which tries such mounts for layers this engine pushed
    before, falls back to uploading its own copy."""
    registry, _, reference = pushed
    alpha_key = api_key("alpha", "viewer")
    alpha_token = registry_token(live_server, alpha_key, "repository:alpha/web:pull")
    manifest = requests.get(
        f"http://{registry}/v2/alpha/web/manifests/1",
        headers={"Authorization": f"Bearer {alpha_token}", "Accept": MANIFEST_V2},
        timeout=10,
    )
    layer = manifest.json()["layers"][0]["digest"]
    beta_key = api_key("beta", "developer")
    answer = requests.get(
        f"{live_server.url}/api/v1/registry/token", auth=("token", beta_key), timeout=10,
        params={"service": SERVICE,
                "scope": ["repository:beta/stolen:pull,push", "repository:alpha/web:pull"]},
    )
    headers = {"Authorization": f"Bearer {answer.json()['token']}"}
    mount = requests.post(
        f"http://{registry}/v2/beta/stolen/blobs/uploads/",
        params={"mount": layer, "from": "alpha/web"}, headers=headers, timeout=10,
    )
    assert mount.status_code == 401, mount.text
    stolen = requests.head(
        f"http://{registry}/v2/beta/stolen/blobs/{layer}", headers=headers, timeout=10
    )
    assert stolen.status_code == 404

    beta = docker_cli()
    beta.login(registry, beta_key)
    beta.run("tag", reference, f"{registry}/beta/web:1")
    beta.run("push", f"{registry}/beta/web:1")
