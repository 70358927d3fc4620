"""Server time and SQL queries of the busiest pages with a big team.

A team with 200 environments, 1,000 VMs, 5,000 containers and 2,000 jobs (7
steps each), against the same pages with a tenth of that: the dashboard, the
environment list API, the jobs list (portal and API).  The number of queries
per page must not grow with the rows; target p95 under 150 ms.

    scripts/bench.sh portal        (--quick: 2 and 20 environments, 5 requests a page)
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile, setup_database, table  # noqa: E402 - needs the path


def shared_catalogue():
    """The host, flavor and image every bench VM uses (made once, found after)."""
    from cloud.models import Flavor, Host, Image

    host, _ = Host.objects.get_or_create(
        name="bench-host",
        defaults={"libvirt_uri": "test:///default", "cpus": 512, "memory_mb": 2**21},
    )
    flavor, _ = Flavor.objects.get_or_create(
        name="small", defaults={"vcpus": 1, "memory_mb": 1024, "disk_gb": 10}
    )
    image, _ = Image.objects.get_or_create(
        name="debian-12",
        defaults={
            "sha256": "a" * 64,
            "path": "/x.qcow2",
            "virtual_size_bytes": 1,
            "size_bytes": 1,
            "source": "built",
        },
    )
    return host, flavor, image


def populate_containers(environments, vms, containers_per_vm: int) -> None:
    """One released service per environment, ``containers_per_vm`` of it on each VM."""
    from cloud.models import Container, Release, Service

    services = Service.objects.bulk_create(
        Service(environment=env, name="web", image="web:1") for env in environments
    )
    releases = {
        s.environment_id: r
        for s, r in zip(
            services,
            Release.objects.bulk_create(
                Release(service=s, version=1, image_digest="sha256:" + "b" * 64, spec={})
                for s in services
            ),
            strict=True,
        )
    }
    service_of = {s.environment_id: s for s in services}
    Container.objects.bulk_create(
        Container(
            vm=vm,
            service=service_of[vm.environment_id],
            release=releases[vm.environment_id],
            name=f"c-{vm.pk}-{k}",
            engine_id=f"{vm.pk:08x}{k:056x}",
            state="running",
            health="healthy",
        )
        for vm in vms
        for k in range(containers_per_vm)
    )


def populate_jobs(team, user, environments, jobs: int) -> None:
    """``jobs`` finished jobs of 7 steps each, spread over the environments."""
    from cloud.models import Job, JobStep

    made = Job.objects.bulk_create(
        Job(
            team=team,
            kind="provision_vm",
            environment=environments[i % len(environments)],
            state="succeeded",
            progress=100,
            requested_by=user,
        )
        for i in range(jobs)
    )
    JobStep.objects.bulk_create(
        JobStep(job=job, index=k, name=f"step {k}", state="done", log="ok\n")
        for job in made
        for k in range(7)
    )


def populate(team_name: str, envs: int, vms_per_env: int, containers_per_vm: int, jobs: int):
    from django.contrib.auth import get_user_model

    from cloud.models import Environment, VirtualMachine
    from tenants.services import create_team

    user = get_user_model().objects.create_user(f"{team_name}-admin")  # logged in by the client
    team = create_team(team_name, user)
    host, flavor, image = shared_catalogue()
    kinds = ["dev", "staging", "prod"]
    environments = Environment.objects.bulk_create(
        Environment(team=team, name=f"env-{i}", kind=kinds[i % 3]) for i in range(envs)
    )
    vms = VirtualMachine.objects.bulk_create(
        VirtualMachine(
            environment=env, name=f"vm-{j}", host=host, flavor=flavor, image=image, state="running"
        )
        for env in environments
        for j in range(vms_per_env)
    )
    populate_containers(environments, vms, containers_per_vm)
    populate_jobs(team, user, environments, jobs)
    return team, user


def measure(client, url, requests):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, queries = [], 0
    for _ in range(requests):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
        queries = len(captured)
    return statistics.median(times), percentile(times, 95), queries


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (run by make test)")
    args = parser.parse_args()
    scale, requests = (10, 5) if args.quick else (1, 40)
    setup_database("strata_bench_portal_quick" if args.quick else "strata_bench_portal")
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()  # the test client and query capture on a real server setup
    from django.conf import settings

    settings.SECURE_SSL_REDIRECT = False
    sizes = {"small": (20 // scale, 5, 5, 200 // scale), "big": (200 // scale, 5, 5, 2000 // scale)}
    results = {}
    for label, size in sizes.items():
        team, user = populate(f"team-{label}", *size)
        client = Client()
        client.force_login(user)
        pages = {
            "dashboard": f"/t/{team.name}/",
            "environments API": f"/api/v1/teams/{team.name}/environments/",
            "jobs (portal)": f"/t/{team.name}/jobs/",
            "jobs API": f"/api/v1/teams/{team.name}/jobs/",
        }
        for page, url in pages.items():
            client.get(url)  # warm
            results[(page, label)] = measure(client, url, requests)
    rows = []
    for page in ["dashboard", "environments API", "jobs (portal)", "jobs API"]:
        small, big = results[(page, "small")], results[(page, "big")]
        rows.append(
            [
                page,
                f"{small[0]:.0f} / {small[1]:.0f}",
                small[2],
                f"{big[0]:.0f} / {big[1]:.0f}",
                big[2],
                "yes" if big[1] < 150 else "NO",
                "yes" if big[2] == small[2] else "GREW",
            ]
        )
    table(
        f"Server time (ms p50 / p95) and SQL queries per page, {requests} requests: "
        f"{sizes['small'][0]} vs {sizes['big'][0]} environments of 5 VMs with 5 containers each "
        "(target at 200: p95 < 150 ms; queries constant)",
        ["page", "small ms", "small queries", "big ms", "big queries", "p95 ok", "queries"],
        rows,
    )


if __name__ == "__main__":
    main()
