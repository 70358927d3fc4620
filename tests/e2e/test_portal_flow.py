"""A person in the portal, in headless Chromium, on the real system: log in,
create an environment and watch its job's progress bar reach done, deploy a
service and see it healthy, read the audit log.  A real worker provisions a
real TCG guest and rolls the service out inside it."""

import json
import time

import pytest

from cloud.models import Environment, Job
from cloud.services import environments
from tests.portal.test_browser import Browser, portal_server  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def system(make_team, worker_factory, strata_host, web_images):
    worker_factory(f"strata,{strata_host.queue}")
    team, user = make_team("e2e", "admin", username="dana")
    yield team, user, web_images[0]
    for env in Environment.objects.filter(team=team):
        job = environments.destroy_environment(
            user=user, team=team, env_id=env.pk, queue_if_busy=True
        )
        deadline = time.monotonic() + 300
        while not Job.objects.get(pk=job.pk).is_finished and time.monotonic() < deadline:
            time.sleep(1)


@pytest.fixture
def chromium(tmp_path):
    browser = Browser(tmp_path / "profile")
    yield browser
    browser.close()


def go(browser, url):
    browser.send("Page.navigate", browser.session, url=url)
    browser.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")


def fill_and_submit(browser, values):
    """Set the form fields named in ``values`` and submit their form, as a person would."""
    script = "".join(
        f"document.querySelector('[name={name}]').value = {json.dumps(value)};"
        for name, value in values.items()
    )
    first = next(iter(values))
    browser.evaluate(script + f"document.querySelector('[name={first}]').form.requestSubmit();")


def wait_for_job_done(browser, timeout):
    progress = "document.querySelector('#job-live progress')"
    browser.wait_for(f"location.pathname.includes('/jobs/') && {progress} !== null", 30)
    browser.wait_for(
        f"{progress}.value === 100 || document.body.textContent.includes('failed')", timeout
    )
    assert browser.evaluate(f"{progress}.value") == 100, browser.evaluate(
        "document.querySelector('main').innerText"
    )


def test_a_person_creates_deploys_and_audits(system, portal_server, chromium):  # noqa: F811
    team, user, image = system
    browser, base = chromium, portal_server
    browser.open(base + "/login/", [])
    browser.wait_for("document.querySelector('[name=username]') !== null")
    fill_and_submit(browser, {"username": user.username, "password": "pw"})
    browser.wait_for(f"location.pathname === '/t/{team.name}/'")

    go(browser, f"{base}/t/{team.name}/environments/new/")
    fill_and_submit(
        browser,
        {"name": "shop", "kind": "dev", "vm_count": "1", "flavor": "small", "image": "debian-12"},
    )
    wait_for_job_done(browser, timeout=600)

    env = Environment.objects.get(team=team, name="shop")
    go(browser, f"{base}/t/{team.name}/environments/{env.pk}/")
    fill_and_submit(
        browser,
        {
            "service_name": "web",
            "image": image,
            "replicas": "1",
            "ports": "8080",
            "healthcheck": "http:/:8080",
        },
    )
    wait_for_job_done(browser, timeout=300)

    go(browser, f"{base}/t/{team.name}/environments/{env.pk}/")
    text = browser.evaluate("document.querySelector('main').innerText")
    assert "web" in text and "healthy" in text and "running" in text

    go(browser, f"{base}/t/{team.name}/audit/")
    audit = browser.evaluate("document.querySelector('main').innerText")
    assert "environment.create" in audit and "service.deploy" in audit and user.username in audit
