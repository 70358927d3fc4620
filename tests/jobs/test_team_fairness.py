"""Finding 9.5: one team cannot starve a host.  A team runs at most
STRATA_TEAM_JOBS_PER_QUEUE jobs at once on one queue (default 1: with a host's
two worker processes, one is always left to other teams); a job over the limit
goes back to its queue for a few seconds, no worker waits inside a task."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

import tests.jobs.plans  # noqa: F401 - registers the test plans
from cloud.models import Job
from tests.jobs.test_engine import wait_for
from workers.jobs import engine as jobs

pytestmark = pytest.mark.django_db


@pytest.fixture
def job_of(make_team, tmp_path):
    """``job_of(team_name, queue, block=step)``: a test job with its own control directory."""
    teams = {}

    def make(team_name, queue="strata", block=None):
        if team_name not in teams:
            teams[team_name] = make_team(team_name)
        team, user = teams[team_name]
        control = tmp_path / uuid.uuid4().hex
        control.mkdir()
        (control / "runs.log").touch()
        if block:
            (control / f"{block}.block").touch()
        job = jobs.create_job(
            team=team,
            kind="test.three_steps",
            requested_by=user,
            queue=queue,
            params={"control_dir": str(control)},
        )
        return job, control

    return make


def live_lease(job):
    Job.objects.filter(pk=job.pk).update(
        state="running",
        attempts=1,
        lease_token=uuid.uuid4(),
        lease_expires_at=timezone.now() + timedelta(minutes=1),
    )


def state(job):
    return Job.objects.get(pk=job.pk).state


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_another_teams_job_starts_while_one_team_fills_the_host(job_of, worker_factory):
    """Finding 9.5: team A's two long jobs and team B's job on one host queue
    served by two workers: B's job runs to its end before A's first finishes,
    and A's second waits for A's first instead of taking the other worker."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = {"STRATA_TEAM_LIMIT_RETRY_SECONDS": "0.5", "STRATA_JOB_LEASE_SECONDS": "3"}
    for _ in range(2):
        worker_factory(queue, include=["tests.jobs.plans"], **env)
    a1, a1_control = job_of("team-a", queue, block="second")
    a2, a2_control = job_of("team-a", queue, block="second")
    b1, _ = job_of("team-b", queue)
    jobs.enqueue(a1)
    wait_for(lambda: (a1_control / "second.entered").exists(), 60)
    jobs.enqueue(a2)
    jobs.enqueue(b1)
    wait_for(lambda: state(b1) == "succeeded", 30)
    assert state(a1) == "running" and (a1_control / "second.block").exists()
    assert state(a2) == "queued" and (a2_control / "runs.log").read_text() == ""
    (a1_control / "second.block").unlink()
    wait_for(lambda: (a2_control / "second.entered").exists(), 60)
    assert state(a1) == "succeeded"
    (a2_control / "second.block").unlink()
    wait_for(lambda: state(a2) == "succeeded", 60)


def test_a_job_over_its_teams_limit_goes_back_to_its_queue(job_of, settings):
    """Finding 9.5: the limit counts the team's live runs on the job's own queue:
    over it, the job is sent back (short countdown) untouched; another queue,
    another team, a dead run's job, or no limit (0) let it run."""
    settings.STRATA_TEAM_LIMIT_RETRY_SECONDS = 3
    running, _ = job_of("team-a", "host.hv1")
    live_lease(running)
    waiting, waiting_control = job_of("team-a", "host.hv1")
    with pytest.raises(jobs.RetryLater) as later:
        jobs.run(waiting.pk)
    assert later.value.countdown == 3
    untouched = Job.objects.get(pk=waiting.pk)
    assert untouched.state == "queued" and untouched.attempts == 0
    assert untouched.lease_token is None and (waiting_control / "runs.log").read_text() == ""

    elsewhere, _ = job_of("team-a", "host.hv2")
    other_team, _ = job_of("team-b", "host.hv1")
    for job in (elsewhere, other_team):
        jobs.run(job.pk)
        assert state(job) == "succeeded"

    Job.objects.filter(pk=running.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    jobs.run(waiting.pk)  # the holder's worker died: its slot is free
    assert state(waiting) == "succeeded"

    live_lease(running)
    settings.STRATA_TEAM_JOBS_PER_QUEUE = 0
    unlimited, _ = job_of("team-a", "host.hv1")
    jobs.run(unlimited.pk)
    assert state(unlimited) == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_two_jobs_of_one_team_starting_at_once_do_not_both_run(job_of):
    """Finding 9.5: two workers starting a team's jobs at the same instant count
    each other (the team's row lock): exactly one runs, the other goes back."""
    pair = [job_of("team-a", "host.hv1", block="first") for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes = {}

    def start(job):
        barrier.wait()
        try:
            jobs.run(job.pk)
            outcomes[job.pk] = "ran"
        except jobs.RetryLater:
            outcomes[job.pk] = "sent back"
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(job,)) for job, _ in pair]
    for thread in threads:
        thread.start()

    def inside_first_step():
        return [control for _, control in pair if (control / "first.entered").exists()]

    # One is inside its first step; the other was sent back at once.
    wait_for(lambda: len(outcomes) == 1 and inside_first_step(), 30)
    inside = inside_first_step()
    assert len(inside) == 1 and list(outcomes.values()) == ["sent back"]
    (inside[0] / "first.block").unlink()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes.values()) == ["ran", "sent back"]
