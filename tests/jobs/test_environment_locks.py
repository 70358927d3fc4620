"""Finding 9.9: environment locks are never held forever.  Cancelling a job that
has not started ends it at once (in the request's transaction), releasing the
environment to the next waiter; jobs waiting behind a job start when it ends,
whatever its outcome, and fail with a clear reason when a destroy took their
environment away."""

import threading

import pytest
from django.db import connection

import tests.jobs.plans  # noqa: F401 - registers the test plans
from cloud.models import Deployment, Environment, Job, Release, Service, VirtualMachine
from cloud.services import environments
from cloud.services.errors import Busy
from cloud.services.job_control import cancel_job
from tenants.models import AuditEvent
from tests.api import conftest as api_fixtures
from tests.jobs import test_engine
from tests.jobs.test_engine import runs, wait_for
from tests.services import conftest as service_fixtures
from workers.jobs import engine as jobs

pytestmark = pytest.mark.django_db

# Fixtures of other tiers' tests: a test plan's control directory, a host with
# the default flavor and image, an API client for a user.
control, catalogue, api_as = (
    test_engine.control,
    service_fixtures.catalogue,
    api_fixtures.api_as,
)


@pytest.fixture
def world(make_team, control):
    """A team, its environment, and a maker of test jobs on it."""
    team, user = make_team("alpha")
    env = Environment.objects.create(team=team, name="dev", kind="dev")

    def make(**fields):
        fields.setdefault("environment", env)
        return jobs.create_job(
            team=team,
            kind="test.three_steps",
            requested_by=user,
            params={"control_dir": str(control)},
            **fields,
        )

    return team, user, env, make


def holding(env, job):
    Environment.objects.filter(pk=env.pk).update(lock_job=job)
    return job


def enqueued_ids(callbacks):
    """The job ids the captured on-commit callbacks send to a queue."""
    from unittest import mock

    sent = []
    with mock.patch("workers.jobs.queue.app.send_task") as send:
        for callback in callbacks:
            callback()
        sent = [call.kwargs["args"][0] for call in send.call_args_list]
    return sent


def test_cancelling_a_queued_job_ends_it_at_once_and_starts_the_waiter(
    world, control, django_capture_on_commit_callbacks
):
    """Finding 9.9: a queued job (no worker for its host) cancelled ends at once
    and hands the environment on; before, it only got a flag and the
    environment stayed locked."""
    team, user, env, make = world
    holder = holding(env, make())
    waiter = make(waits_for=holder)
    with django_capture_on_commit_callbacks() as callbacks:
        cancel_job(user=user, team=team, job_id=holder.pk)
    holder.refresh_from_db()
    assert holder.state == "cancelled" and holder.finished_at
    assert holder.error == "cancelled before it started"
    env.refresh_from_db()
    assert env.lock_job_id == waiter.pk
    assert enqueued_ids(callbacks) == [str(waiter.pk)]
    assert AuditEvent.objects.filter(action="job.cancelled", target_id=str(holder.pk)).exists()
    jobs.run(holder.pk)  # its message, arriving later, runs nothing
    assert runs(control) == []


def test_cancelling_a_queued_environment_job_frees_the_environment(
    make_team, catalogue, django_capture_on_commit_callbacks
):
    """Finding 9.9: cancelling a create that no worker has picked up cancels its
    per-VM children, marks its VMs failed (nothing was made) and frees the
    environment at once, so the next action is accepted instead of a 409."""
    team, user = make_team("alpha")
    with django_capture_on_commit_callbacks(execute=False):
        parent = environments.create_environment(
            user=user, team=team, name="web", kind="dev", vm_count=2
        )
    env = parent.environment
    with pytest.raises(Busy):
        environments.destroy_environment(user=user, team=team, env_id=env.pk)
    cancelled = cancel_job(user=user, team=team, job_id=parent.pk)
    assert cancelled.state == "cancelled"
    assert set(parent.children.values_list("state", flat=True)) == {"cancelled"}
    vms = VirtualMachine.objects.filter(environment=env)
    assert {(vm.state, vm.error) for vm in vms} == {("error", "cancelled before it started")}
    env.refresh_from_db()
    assert env.lock_job_id is None
    with django_capture_on_commit_callbacks(execute=False):
        destroy = environments.destroy_environment(user=user, team=team, env_id=env.pk)
    env.refresh_from_db()
    assert env.lock_job_id == destroy.pk


def test_cancelling_a_waiter_keeps_the_others_in_line(world, django_capture_on_commit_callbacks):
    """Finding 9.9: a cancelled waiter's own waiters go on waiting for the
    holder (they must not start while it runs), and start when it ends."""
    team, user, env, make = world
    holder = holding(env, make())
    first = make(waits_for=holder)
    second = make(waits_for=first)
    with django_capture_on_commit_callbacks() as callbacks:
        cancel_job(user=user, team=team, job_id=first.pk)
    assert enqueued_ids(callbacks) == []
    second.refresh_from_db()
    env.refresh_from_db()
    assert second.waits_for_id == holder.pk and env.lock_job_id == holder.pk
    with django_capture_on_commit_callbacks() as callbacks:
        jobs.run(holder.pk)
    env.refresh_from_db()
    assert env.lock_job_id == second.pk and enqueued_ids(callbacks) == [str(second.pk)]


def test_cancelling_a_running_job_stops_it_at_its_next_step(world, control):
    """Finding 9.9: a job that has started is not ended by the request: it stops
    at its next step boundary and undoes what it made."""
    team, user, env, make = world
    job = holding(env, make())
    Job.objects.filter(pk=job.pk).update(state="running", attempts=1)
    cancelled = cancel_job(user=user, team=team, job_id=job.pk)
    assert cancelled.state == "running" and cancelled.cancel_requested
    env.refresh_from_db()
    assert env.lock_job_id == job.pk
    jobs.run(job.pk)
    job.refresh_from_db()
    assert job.state == "cancelled" and runs(control) == ["compensate"]


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_the_waiter_starts_whatever_the_holders_outcome(
    world, control, outcome, django_capture_on_commit_callbacks
):
    """Finding 9.9: a holder that fails or is cancelled hands the environment on."""
    team, user, env, make = world
    holder = holding(env, make())
    waiter = make(waits_for=holder)
    if outcome == "failed":
        (control / "second.fail").touch()
    else:
        Job.objects.filter(pk=holder.pk).update(state="running", attempts=1, cancel_requested=True)
    with django_capture_on_commit_callbacks() as callbacks:
        jobs.run(holder.pk)
    holder.refresh_from_db()
    env.refresh_from_db()
    assert holder.state == outcome
    assert env.lock_job_id == waiter.pk and enqueued_ids(callbacks) == [str(waiter.pk)]


def test_jobs_queued_behind_a_destroy_fail_with_a_clear_reason(
    world, django_capture_on_commit_callbacks
):
    """Finding 9.9: jobs waiting behind a destroy that succeeds do not wait
    forever: each fails (children included) saying its environment is gone."""
    team, user, env, make = world
    service = Service.objects.create(environment=env, name="web", image="web:1")
    release = Release.objects.create(service=service, version=1, spec={})
    deployment = Deployment.objects.create(environment=env, release=release)
    with django_capture_on_commit_callbacks(execute=False):
        destroy = environments.destroy_environment(user=user, team=team, env_id=env.pk)
        deploy = jobs.create_job(
            team=team,
            kind="deploy",
            environment=env,
            waits_for=destroy,
            params={"deployment": deployment.pk},
        )
        deploy_child = make(parent=deploy)
        later = make(waits_for=destroy)
    with django_capture_on_commit_callbacks() as callbacks:
        jobs.run(destroy.pk)
    destroy.refresh_from_db()
    assert destroy.state == "succeeded"
    assert not Environment.objects.filter(pk=env.pk).exists()
    assert enqueued_ids(callbacks) == []
    for job in (deploy, deploy_child, later):
        job.refresh_from_db()
        assert job.state == "failed", job
        assert "environment was destroyed" in job.error
        assert str(destroy.pk) in job.error


@pytest.mark.django_db(transaction=True)
def test_a_cancel_racing_a_starting_worker_never_skips_the_undo(world, control):
    """Finding 9.9: a cancel and a worker starting the same job at once: either
    the job ends before any step ran, or it runs and is then cancelled at a step
    boundary with its compensation; never ended at once while a step runs."""
    team, user, env, make = world
    for _ in range(4):
        (control / "runs.log").write_text("")
        (control / "first.block").touch()
        job = holding(env, make())
        barrier = threading.Barrier(2)

        def start_worker(job_id=job.pk, barrier=barrier):
            barrier.wait()
            try:
                jobs.run(job_id)
            finally:
                connection.close()

        worker = threading.Thread(target=start_worker)
        worker.start()
        barrier.wait()
        cancel_job(user=user, team=team, job_id=job.pk)
        (control / "first.block").unlink()
        worker.join(30)
        job.refresh_from_db()
        assert job.state == "cancelled"
        ran = runs(control)
        assert ran in ([], ["compensate"], ["first", "compensate"]), ran
        assert (ran == []) == (job.error == "cancelled before it started")
        wait_for(lambda: Environment.objects.get(pk=env.pk).lock_job_id is None, 5)


def test_cancel_through_the_api_frees_the_environment_for_the_next_request(
    make_team, catalogue, api_as
):
    """Finding 9.9: over HTTP: the cancel answers with the job already
    cancelled, and the environment takes the next action (202, not 409)."""
    team, user = make_team("alpha")
    client = api_as(user)
    created = client.post(
        "/api/v1/teams/alpha/environments/", {"name": "web", "kind": "dev"}, format="json"
    ).json()
    env_url = f"/api/v1/teams/alpha/environments/{Environment.objects.get(name='web').pk}/"
    assert client.delete(env_url).status_code == 409
    cancelled = client.post(created["url"] + "cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.delete(env_url).status_code == 202
