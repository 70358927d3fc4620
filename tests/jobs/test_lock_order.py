"""Finding 9.4/9.9 follow-up: deploy with queue_if_busy while a worker starts the
holder's job must not deadlock.

Each side runs in its own thread on its own PostgreSQL connection.  A third
connection (the gate) holds a real row lock to stop one side at the exact
statement where the other must overtake it; ``pg_stat_activity`` tells when a
side is waiting.  Before the fix the worker held the holder's job row FOR
UPDATE and then asked for the team row FOR UPDATE, while the deploy's deferred
foreign-key checks (at COMMIT) held the team row FOR KEY SHARE and asked for
the holder's row FOR KEY SHARE (``waits_for``): PostgreSQL killed one of them.
"""

import threading
import time
from contextlib import contextmanager
from functools import partial

import psycopg
import pytest
from django.db import connection

import tests.jobs.plans  # noqa: F401 - registers the test plans
from cloud.models import Environment, Flavor, Image, Job, JobState, VirtualMachine
from cloud.services import deployments
from tests.services import conftest as service_fixtures
from workers.jobs import engine as jobs

pytestmark = pytest.mark.django_db(transaction=True)

catalogue = service_fixtures.catalogue
SPEC = {"image": "alpha/web:1", "replicas": 1, "queue_if_busy": True}


@pytest.fixture
def world(make_team, catalogue, tmp_path):
    """A team, its dev environment with one running VM, and a maker of test jobs on it."""
    team, user = make_team("alpha")
    env = Environment.objects.create(team=team, name="dev", kind="dev")
    vm = VirtualMachine.objects.create(
        environment=env,
        name="dev-1",
        host=catalogue,
        state="running",
        flavor=Flavor.objects.get(),
        image=Image.objects.get(),
    )
    (tmp_path / "runs.log").touch()

    def make(**fields):
        return jobs.create_job(
            team=team,
            kind="test.three_steps",
            requested_by=user,
            environment=env,
            params={"control_dir": str(tmp_path)},
            **fields,
        )

    return team, user, env, vm, make


class Side(threading.Thread):
    """Runs ``work`` on this thread's own database connection; keeps its
    backend's pid, its result and what it raised."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work, self.pid, self.result, self.error = work, None, None, None
        self.connected = threading.Event()

    def run(self):
        try:
            connection.ensure_connection()
            self.pid = connection.connection.info.backend_pid
            self.connected.set()
            self.result = self.work()
        except BaseException as error:  # noqa: BLE001 - the test asserts on it
            self.error = error
        finally:
            self.connected.set()
            connection.close()

    def begin(self) -> "Side":
        self.start()
        assert self.connected.wait(10)
        return self

    def finish(self):
        self.join(30)
        assert not self.is_alive(), "a side is still blocked after 30 s"
        return self.error


def waits_on_a_lock(pid) -> bool:
    # Outside a transaction, so every call reads the backends' current state.
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def blocked_or_done(side: Side):
    return lambda: not side.is_alive() or (side.pid is not None and waits_on_a_lock(side.pid))


@contextmanager
def gate(table: str, pk, mode: str = "FOR SHARE"):
    """Hold one row of ``table`` locked in ``mode`` from another connection."""
    db = connection.settings_dict
    conn = psycopg.connect(
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"],
        host=db["HOST"],
        port=db["PORT"],
    )
    try:
        conn.execute(f"SELECT 1 FROM {table} WHERE id = %s {mode}", [pk])  # noqa: S608 - test names
        yield conn
    finally:
        conn.rollback()
        conn.close()


def at_once(*works) -> list[Side]:
    """A side for each of ``works``, all let go at the same moment."""
    together = threading.Barrier(len(works))

    def released(work):
        return lambda: (together.wait(10), work())[1]

    return [Side(released(work)).begin() for work in works]


def deploy_on(team, user, env):
    return lambda: deployments.deploy(
        user=user, team=team, env_id=env.pk, service_name="web", **SPEC
    )


def test_deploy_queued_behind_a_job_a_worker_is_starting_does_not_deadlock(world):
    """Finding 9.4/9.9 follow-up: deploy with queue_if_busy while a worker starts the
    holder's job must not deadlock.  The worker holds the holder's row and waits
    for the team row (the gate holds it a moment); the deploy then commits its
    waiter.  Before, the deploy's COMMIT waited for the holder's row and the
    worker for the team row the deploy's foreign keys had share-locked."""
    team, user, env, _, make = world
    holder = make()
    Environment.objects.filter(pk=env.pk).update(lock_job=holder)
    with gate("tenants_team", team.pk):
        worker = Side(lambda: jobs.run(holder.pk)).begin()
        until(blocked_or_done(worker))
        assert worker.is_alive(), "the worker must wait at the team's row lock"
        service = Side(deploy_on(team, user, env)).begin()
        until(blocked_or_done(service))
    assert worker.finish() is None
    assert service.finish() is None
    waiter = service.result
    assert Job.objects.get(pk=holder.pk).state == JobState.SUCCEEDED
    waiter.refresh_from_db()
    assert waiter.waits_for_id == holder.pk and waiter.state == JobState.QUEUED
    # The holder's end handed the environment to the deploy queued behind it.
    assert Environment.objects.get(pk=env.pk).lock_job_id == waiter.pk


@pytest.mark.parametrize("holder_has_children", [True, False], ids=["child", "holder"])
def test_deploys_racing_workers_neither_deadlock_nor_leave_a_job_stuck(world, holder_has_children):
    """Finding 9.4/9.9 follow-up: deploy with queue_if_busy while a worker starts the
    holder's job must not deadlock, whichever statements interleave: a worker
    runs the holder (or its per-VM child) to its end while a deploy of the
    same environment queues behind it, started together, many times.  Every
    deploy ends queued behind the holder and then holds the environment."""
    team, user, env, vm, make = world
    for _ in range(25):
        holder = make()
        run_id = make(parent=holder, vm=vm).pk if holder_has_children else holder.pk
        Environment.objects.filter(pk=env.pk).update(lock_job=holder)
        worker, service = at_once(partial(jobs.run, run_id), deploy_on(team, user, env))
        assert (worker.finish(), service.finish()) == (None, None)
        assert Job.objects.get(pk=holder.pk).state == JobState.SUCCEEDED
        assert Environment.objects.get(pk=env.pk).lock_job_id == service.result.pk
        # Clear the deploy (no worker serves the host's queue here) for the next round.
        Job.objects.filter(pk=service.result.pk).update(state=JobState.CANCELLED)
        Job.objects.filter(parent=service.result).update(state=JobState.CANCELLED)


@pytest.mark.parametrize(
    "table, where",
    [("tenants_team", "taking its lease"), ("cloud_environment", "finishing")],
)
def test_a_worker_that_loses_a_deadlock_retries_and_finishes(world, table, where):
    """Finding 9.4/9.9 follow-up: a worker PostgreSQL picks as a deadlock's victim
    (while taking the job's lease, or while finishing it and releasing its
    environment) gives the job back and asks for a retry with backoff; the
    retry finishes it.  Before, the error killed the task and left the job
    queued with no message, or running under a lease no run renewed."""
    team, _, env, _, make = world
    job = make()
    Environment.objects.filter(pk=env.pk).update(lock_job=job)
    locked_row = team.pk if table == "tenants_team" else env.pk
    with gate(table, locked_row) as other:
        worker = Side(lambda: jobs.run(job.pk)).begin()
        until(blocked_or_done(worker))
        assert worker.is_alive(), f"the worker must wait at the {table} row while {where}"
        # The other transaction now waits for the job's row: a real deadlock,
        # whose victim is the worker (it has waited longest).
        locker = threading.Thread(
            target=lambda: other.execute(
                "SELECT 1 FROM cloud_job WHERE id = %s FOR UPDATE", [job.pk]
            )
        )
        locker.start()
        locker.join(15)  # it gets the row once PostgreSQL has rolled the worker back
        assert not locker.is_alive(), "PostgreSQL did not break the deadlock"
    error = worker.finish()
    assert isinstance(error, jobs.RetryLater), f"the worker's run ended with {error!r}"
    assert 0 < error.countdown <= 2 * 2 * jobs.settings.STRATA_JOB_BACKOFF_SECONDS
    stuck = Job.objects.get(pk=job.pk)
    assert stuck.lease_token is None and stuck.lease_expires_at is None
    jobs.run(job.pk)  # the retry's delivery
    assert Job.objects.get(pk=job.pk).state == JobState.SUCCEEDED
    assert Environment.objects.get(pk=env.pk).lock_job_id is None
