"""The job engine: steps in order, progress, retries, failure, cancellation,
compensation, environment locks, and resuming after a killed worker."""

import time
import uuid

import pytest

import tests.jobs.plans  # noqa: F401 - registers the test plans
from cloud.models import Environment, Job, JobStep
from tenants.models import AuditEvent
from workers.jobs import engine as jobs
from workers.jobs.masking import mask

pytestmark = pytest.mark.django_db


@pytest.fixture
def control(tmp_path):
    (tmp_path / "runs.log").touch()
    return tmp_path


def runs(control):
    return [line.split()[0] for line in (control / "runs.log").read_text().splitlines()]


@pytest.fixture
def new_job(make_team, control):
    team, user = make_team("alpha")

    def make(**fields):
        return jobs.create_job(
            team=team,
            kind="test.three_steps",
            requested_by=user,
            params={"control_dir": str(control)},
            **fields,
        )

    return make


def step_states(job):
    return [(s.name, s.state) for s in JobStep.objects.filter(job=job).order_by("index")]


def test_steps_run_in_order_and_progress_reaches_100(new_job, control):
    job = new_job()
    jobs.run(job.id)
    job.refresh_from_db()
    assert job.state == "succeeded" and job.progress == 100 and job.finished_at
    assert runs(control) == ["first", "second", "third"]
    assert all(state == "done" for _, state in step_states(job))
    assert JobStep.objects.get(job=job, name="second").log.strip().endswith("second ran")
    assert AuditEvent.objects.filter(action="job.succeeded", target_id=str(job.id)).exists()


def test_user_error_fails_at_once_and_compensates(new_job, control):
    (control / "second.fail").touch()
    job = new_job()
    jobs.run(job.id)
    job.refresh_from_db()
    assert job.state == "failed"
    assert job.error == "second: second refused: bad input"
    assert runs(control) == ["first", "second", "compensate"]
    assert step_states(job) == [
        ("first", "done"),
        ("second", "failed"),
        ("third", "pending"),
        ("compensate", "done"),
    ]


def test_transient_error_requeues_with_backoff_then_resumes(new_job, control):
    (control / "second.flaky").write_text("2")
    job = new_job()
    with pytest.raises(jobs.RetryLater) as first:
        jobs.run(job.id)
    job.refresh_from_db()
    assert job.state == "queued" and "lost its connection" in job.error
    with pytest.raises(jobs.RetryLater) as second:
        jobs.run(job.id)
    assert second.value.countdown == 2 * first.value.countdown  # exponential
    jobs.run(job.id)
    job.refresh_from_db()
    assert job.state == "succeeded" and job.attempts == 3
    # Finished steps are not repeated on a retry; the flaky one ran three times.
    assert runs(control) == ["first", "second", "second", "second", "third"]


def test_transient_errors_give_up_after_max_attempts(new_job, control, settings):
    settings.STRATA_JOB_MAX_ATTEMPTS = 2
    (control / "first.flaky").write_text("5")
    job = new_job()
    with pytest.raises(jobs.RetryLater):
        jobs.run(job.id)
    jobs.run(job.id)
    job.refresh_from_db()
    assert job.state == "failed" and runs(control)[-1] == "compensate"


def test_cancellation_stops_at_the_next_step_and_compensates(new_job, control):
    job = new_job()
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)
    jobs.run(job.id)
    job.refresh_from_db()
    assert job.state == "cancelled"
    assert runs(control) == ["compensate"]


def test_a_finished_job_is_not_run_again(new_job, control):
    job = new_job()
    jobs.run(job.id)
    jobs.run(job.id)  # a duplicate delivery
    assert runs(control) == ["first", "second", "third"]


def test_secrets_and_private_keys_are_masked():
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
    text = f"key {key} pw hunter2"
    masked = mask(text, {"hunter2"})
    assert "AAAA" not in masked and "hunter2" not in masked
    assert "[private key hidden]" in masked and "********" in masked


def test_finishing_releases_the_environment_and_starts_the_waiter(
    new_job, django_capture_on_commit_callbacks
):
    holder = new_job()
    env = Environment.objects.create(team=holder.team, name="dev", kind="dev", lock_job=holder)
    Job.objects.filter(pk=holder.pk).update(environment=env)
    waiter = new_job(environment=env, waits_for=holder)
    with django_capture_on_commit_callbacks() as callbacks:
        jobs.run(holder.id)
    env.refresh_from_db()
    assert env.lock_job_id == waiter.id
    assert len(callbacks) == 1  # the waiter was enqueued


def test_parent_finishes_when_its_last_child_does(new_job, control):
    parent = new_job()
    Job.objects.filter(pk=parent.pk).update(state="running")
    children = [new_job(parent=parent) for _ in range(2)]
    jobs.run(children[0].id)
    parent.refresh_from_db()
    assert parent.state == "running"
    (control / "third.fail").touch()
    jobs.run(children[1].id)
    parent.refresh_from_db()
    assert parent.state == "failed" and "third refused" in parent.error


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_job_runs_on_a_real_worker_through_redis(new_job, control, worker_factory):
    queue = f"test-{uuid.uuid4().hex[:8]}"
    worker_factory(queue, include=["tests.jobs.plans"])
    job = new_job(queue=queue)
    jobs.enqueue(job)  # outside a transaction: sent at once
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, 60)
    assert Job.objects.get(pk=job.pk).state == "succeeded"


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("step", ["first", "second", "third"])
def test_worker_killed_mid_step_resumes_from_that_step(new_job, control, worker_factory, step):
    """SIGKILL the whole worker inside a step; the next worker redelivers the job,
    re-runs only the interrupted step (steps are idempotent) and finishes."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    fast_redelivery = {
        "STRATA_VISIBILITY_TIMEOUT": "3",
        "STRATA_UNACKED_RESTORE_SECONDS": "1",
        # The killed run's lease lapses soon; the redelivery then takes the job over.
        "STRATA_JOB_LEASE_SECONDS": "2",
    }
    (control / f"{step}.block").touch()
    first_worker = worker_factory(queue, include=["tests.jobs.plans"], **fast_redelivery)
    job = new_job(queue=queue)
    jobs.enqueue(job)
    wait_for(lambda: (control / f"{step}.entered").exists(), 60)
    worker_factory.kill(first_worker)
    (control / f"{step}.block").unlink()
    worker_factory(queue, include=["tests.jobs.plans"], **fast_redelivery)
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, 90)
    assert Job.objects.get(pk=job.pk).state == "succeeded"
    expected = ["first", "second", "third"]
    expected.insert(expected.index(step), step)  # the interrupted step ran twice
    assert runs(control) == expected


def test_parent_of_a_cancelled_child_is_cancelled(new_job, control):
    parent = new_job()
    child = new_job(parent=parent)
    Job.objects.filter(pk=child.pk).update(cancel_requested=True)
    jobs.run(child.id)
    parent.refresh_from_db()
    assert parent.state == "cancelled" and runs(control) == ["compensate"]


def test_a_parent_is_running_while_its_children_run(new_job, control):
    parent = new_job()
    children = [new_job(parent=parent) for _ in range(2)]
    jobs.run(children[0].id)
    parent.refresh_from_db()
    assert parent.state == "running" and parent.started_at
    jobs.run(children[1].id)
    parent.refresh_from_db()
    assert parent.state == "succeeded"
