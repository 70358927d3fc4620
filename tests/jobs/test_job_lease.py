"""Finding 9.4: one run of a job at a time.  A run holds the job's lease
(owner, expiry, fencing token), renewed from a thread while its steps run; a
second delivery while the lease is alive runs nothing, a dead owner's job
resumes once its lease expires, and a run whose lease was taken over stops at
its next write without writing."""

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

import tests.jobs.plans  # noqa: F401 - registers the test plans
from cloud.models import Job, JobStep
from tests.jobs import test_engine
from tests.jobs.test_engine import runs, wait_for
from workers.jobs import engine as jobs
from workers.jobs.reconcile import resend_stuck_jobs

pytestmark = pytest.mark.django_db

# The engine tests' fixtures: a control directory and a maker of test jobs.
control, new_job = test_engine.control, test_engine.new_job


def run_lines(control):
    """(step, pid) per recorded run of a step."""
    return [tuple(line.split()) for line in (control / "runs.log").read_text().splitlines()]


def run_in_thread(job_id):
    """jobs.run in a thread of its own (its own connection), as a second worker would."""
    outcome = {}

    def target():
        try:
            jobs.run(job_id)
        except Exception as error:  # noqa: BLE001 - handed to the test to assert on
            outcome["error"] = error
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_redelivery_while_the_first_run_lives_runs_nothing(new_job, control, worker_factory):
    """Finding 9.4: two deliveries of one job must not run its steps at once.

    Two real workers on one queue; while the first sits in a step longer than
    the lease and the visibility timeout, the job is sent again (as the
    stuck-job resender does) and Redis redelivers it: the second worker runs
    nothing, and every step runs once, in the first worker."""
    from workers.tasks import run_job

    queue = f"test-{uuid.uuid4().hex[:8]}"
    fast = {
        "STRATA_JOB_LEASE_SECONDS": "2",
        "STRATA_VISIBILITY_TIMEOUT": "3",
        "STRATA_UNACKED_RESTORE_SECONDS": "1",
    }
    (control / "second.block").touch()
    for _ in range(2):
        worker_factory(queue, include=["tests.jobs.plans"], **fast)
    job = new_job(queue=queue)
    jobs.enqueue(job)
    wait_for(lambda: (control / "second.entered").exists(), 60)
    duplicate = run_job.apply_async(args=[str(job.id)], queue=queue)
    # The idle worker took the duplicate and sent it back for later: it ran nothing.
    wait_for(lambda: duplicate.state == "RETRY", 30)
    time.sleep(5)  # past the lease (kept alive by the heartbeat) and Redis's redelivery
    assert [step for step, _ in run_lines(control)] == ["first", "second"]
    lease = Job.objects.get(pk=job.pk)
    assert lease.lease_expires_at > timezone.now() and lease.lease_owner
    (control / "second.block").unlink()
    wait_for(lambda: Job.objects.get(pk=job.pk).is_finished, 60)
    assert Job.objects.get(pk=job.pk).state == "succeeded"
    lines = run_lines(control)
    assert [step for step, _ in lines] == ["first", "second", "third"]
    assert len({pid for _, pid in lines}) == 1  # one worker ran every step
    # The duplicate came back after the lease would have expired and found the job done.
    wait_for(lambda: duplicate.state == "SUCCESS", 30)
    assert [step for step, _ in run_lines(control)] == ["first", "second", "third"]


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_keeps_a_long_steps_lease(new_job, control, settings):
    """Finding 9.4: a step longer than the lease keeps it: a second delivery
    meanwhile is told to come back later and runs nothing."""
    settings.STRATA_JOB_LEASE_SECONDS = 0.6
    (control / "second.block").touch()
    job = new_job()
    thread, outcome = run_in_thread(job.id)
    wait_for(lambda: (control / "second.entered").exists(), 30)
    first_expiry = Job.objects.get(pk=job.pk).lease_expires_at
    time.sleep(1.5)  # well past the first expiry
    with pytest.raises(jobs.RetryLater) as later:
        jobs.run(job.id)
    assert 0 < later.value.countdown <= 0.6 + 1
    assert Job.objects.get(pk=job.pk).lease_expires_at > first_expiry  # renewed
    (control / "second.block").unlink()
    thread.join(30)
    assert not outcome and Job.objects.get(pk=job.pk).state == "succeeded"
    assert runs(control) == ["first", "second", "third"]
    assert Job.objects.get(pk=job.pk).lease_token is None  # a finished job holds no lease


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("step_outcome", ["done", "fails"])
def test_a_run_whose_lease_was_taken_over_stops_without_writing(new_job, control, step_outcome):
    """Finding 9.4: the fencing token: a stale run stops at its next write and
    writes nothing (no step state, log, progress, compensation or outcome)."""
    (control / "second.block").touch()
    if step_outcome == "fails":
        (control / "second.fail").touch()
    job = new_job()
    thread, outcome = run_in_thread(job.id)
    wait_for(lambda: (control / "second.entered").exists(), 30)
    before = Job.objects.get(pk=job.pk)
    # Another delivery took the job over (as after a lease that lapsed).
    thief = uuid.uuid4()
    Job.objects.filter(pk=job.pk).update(
        lease_token=thief, lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    second_log = JobStep.objects.get(job=job, name="second").log
    (control / "second.block").unlink()
    thread.join(30)
    assert not thread.is_alive() and not outcome  # stopped quietly
    after = Job.objects.get(pk=job.pk)
    assert after.state == "running" and after.lease_token == thief
    assert after.progress == before.progress and after.error == ""
    second = JobStep.objects.get(job=job, name="second")
    assert second.state == "running" and second.finished_at is None
    assert second.log == second_log
    assert not JobStep.objects.filter(job=job, name="compensate").exists()
    assert runs(control) == ["first", "second"]  # neither the next step nor the undo


def test_a_dead_owners_job_resumes_once_its_lease_expires(new_job, control):
    """Finding 9.4: a lease nobody renews (its worker died) lets the next delivery resume."""
    job = new_job()
    JobStep.objects.filter(job=job, name="first").update(state="done")
    Job.objects.filter(pk=job.pk).update(
        state="running",
        attempts=1,
        lease_token=uuid.uuid4(),
        lease_owner="dead-host:1:1",
        lease_expires_at=timezone.now() + timedelta(seconds=1),
    )
    with pytest.raises(jobs.RetryLater) as later:
        jobs.run(job.id)
    assert 1 < later.value.countdown <= 2.1  # come back when the lease has expired
    assert runs(control) == []
    time.sleep(1.1)
    jobs.run(job.id)
    job.refresh_from_db()
    assert job.state == "succeeded" and runs(control) == ["second", "third"]
    assert job.lease_owner != "dead-host:1:1"


def test_the_stuck_job_resender_leaves_live_runs_alone(
    new_job, settings, django_capture_on_commit_callbacks
):
    """Finding 9.4: a long step with a live lease is not stuck: the resender does
    not send it again; once its lease has lapsed it does."""
    settings.STRATA_STUCK_JOB_SECONDS = 60
    job = new_job()
    long_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(
        state="running",
        updated_at=long_ago,
        lease_token=uuid.uuid4(),
        lease_expires_at=timezone.now() + timedelta(seconds=30),
    )
    with django_capture_on_commit_callbacks() as sent:
        assert resend_stuck_jobs() == 0
    assert sent == []
    Job.objects.filter(pk=job.pk).update(
        updated_at=long_ago, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    with django_capture_on_commit_callbacks() as sent:
        assert resend_stuck_jobs() == 1
    assert len(sent) == 1


def test_a_started_waiter_whose_message_was_lost_is_resent(
    new_job, settings, django_capture_on_commit_callbacks
):
    """Finding 9.9: a job that waited behind another, was handed the environment
    and lost its message is resent like any other (not left waiting forever)."""
    settings.STRATA_STUCK_JOB_SECONDS = 60
    holder = new_job()
    Job.objects.filter(pk=holder.pk).update(state="succeeded")
    waiter = new_job(waits_for=holder)
    Job.objects.filter(pk=waiter.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks() as sent:
        assert resend_stuck_jobs() == 1
    assert len(sent) == 1
