"""Placement and job throughput, with the baselines a user would otherwise have.

1. The scheduler placing 10,000 VMs on 500 hosts, against a plain
   filter-then-sort scan per request (how a simple scheduler, or a script,
   does it).
2. 1,000 jobs through the real Redis broker and two worker processes, each
   job one step on libvirt's test driver: none may be lost; throughput and
   queue-to-start latency are printed, against bare Celery tasks doing the
   same driver call.

Needs Redis and PostgreSQL running (scripts/services.sh redis postgres) and a
PostgreSQL role that may create databases; see scripts/bench.sh.
    .venv/bin/python bench/scheduling.py [--quick]
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import percentile, setup_database, table  # noqa: E402 - needs the path
from bench.harness.celery_workers import worker_argv  # noqa: E402


def make_hosts(n, seed=1):
    from cloud.services.scheduler import HostState

    rng = random.Random(seed)
    return [
        HostState(
            f"h{i}",
            cpus=rng.choice([32, 64, 96]),
            memory_mb=rng.choice([131072, 262144]),
            cpu_overcommit=4.0,
            ram_overcommit=1.0,
        )
        for i in range(n)
    ]


def make_requests(n, seed=2):
    from cloud.services.scheduler import Request

    rng = random.Random(seed)
    return [
        Request(
            rng.choice([1, 2, 4]),
            rng.choice([1024, 2048, 4096]),
            "debian-12",
            rng.choice(["dev", "staging", "prod"]),
            rng.randrange(200),
        )
        for _ in range(n)
    ]


def naive_place(hosts, request):
    """Filter every host, sort the survivors by weight: O(hosts log hosts) per VM."""
    fits = [h for h in hosts if h.enabled and h.fits(request.vcpus, request.memory_mb)]
    if request.kind == "prod":
        fits.sort(key=lambda h: (h.env_vms[request.environment], h.usage))
    else:
        fits.sort(key=lambda h: -h.usage)
    chosen = fits[0]
    chosen.used_vcpus += request.vcpus
    chosen.used_memory_mb += request.memory_mb
    chosen.env_vms[request.environment] += 1
    return chosen


def bench_scheduler(vms=10_000, host_count=500):
    from cloud.services.scheduler import Scheduler

    requests = make_requests(vms)
    hosts = make_hosts(host_count)
    started = time.perf_counter()
    Scheduler(hosts).place_all(requests)
    ours = time.perf_counter() - started
    over = sum(h.used_vcpus > h.vcpu_limit or h.used_memory_mb > h.memory_limit_mb for h in hosts)

    hosts = make_hosts(host_count)
    started = time.perf_counter()
    for request in requests:
        naive_place(hosts, request)
    naive = time.perf_counter() - started
    table(
        f"Placing {vms:,} VMs on {host_count} hosts (target at 10,000 on 500: under 2 s)",
        ["scheduler", "seconds", "VMs/s", "hosts over capacity"],
        [
            ["Strata (lazy heaps)", f"{ours:.2f}", f"{vms / ours:,.0f}", over],
            ["filter + sort per VM", f"{naive:.2f}", f"{vms / naive:,.0f}", "-"],
        ],
    )


def start_workers(queue, count=2, include="bench.plans"):
    procs = []
    for i in range(count):
        procs.append(
            subprocess.Popen(
                worker_argv(queue, f"bench{i}", include=[include]),
                cwd=REPO,
                env=os.environ.copy(),
            )
        )
    return procs


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def bench_jobs(n=1000, idle_runs=50):
    from bench.plans import bare
    from cloud.models import Job, JobState
    from tenants.models import Team
    from workers.jobs import engine as jobs

    team = Team.objects.create(name=f"bench-{uuid.uuid4().hex[:6]}")
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    workers = start_workers(queue)
    try:
        time.sleep(4)  # let both workers connect before the clock starts
        # Idle queue: one job at a time, latency from commit to first step.
        idle = []
        for _ in range(idle_runs):
            job = jobs.create_job(team=team, kind="bench.noop", queue=queue)
            jobs.enqueue(job)
            wait_until(lambda j=job: Job.objects.get(pk=j.pk).is_finished, 30)
            job.refresh_from_db()
            idle.append((job.started_at - job.created_at).total_seconds() * 1000)

        batch = [jobs.create_job(team=team, kind="bench.noop", queue=queue) for _ in range(n)]
        started = time.perf_counter()
        for job in batch:
            jobs.enqueue(job)
        ids = [j.pk for j in batch]
        done = wait_until(
            lambda: Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == n, 600
        )
        elapsed = time.perf_counter() - started
        finished = Job.objects.filter(pk__in=ids)
        lost = n - finished.filter(state=JobState.SUCCEEDED).count()
        loaded = [
            (j.started_at - j.created_at).total_seconds() * 1000 for j in finished if j.started_at
        ]

        started = time.perf_counter()
        results = [bare.apply_async(queue=queue) for _ in range(n)]
        for result in results:
            result.get(timeout=600)
        bare_elapsed = time.perf_counter() - started
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=30)
    table(
        f"{n} jobs, real Redis broker, 2 worker processes (target: none lost; idle p95 < 100 ms)",
        ["runner", "jobs/s", "lost", "idle p50 ms", "idle p95 ms", "loaded p95 ms"],
        [
            [
                "Strata jobs (steps persisted)",
                f"{n / elapsed:.0f}",
                lost if done else f"{lost} (timeout)",
                f"{statistics.median(idle):.0f}",
                f"{percentile(idle, 95):.0f}",
                f"{percentile(loaded, 95):.0f}",
            ],
            ["bare Celery tasks", f"{n / bare_elapsed:.0f}", 0, "-", "-", "-"],
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (run by make test)")
    args = parser.parse_args()
    bench_scheduler(*((500, 50) if args.quick else ()))
    setup_database("strata_bench_quick" if args.quick else "strata_bench")
    bench_jobs(*((50, 5) if args.quick else ()))
