"""What the jobs benchmark runs, as a Strata job and as a bare Celery task:
one call to libvirt's test driver, so each does a real (if cheap) driver call."""

import libvirt

from workers.celery import app
from workers.jobs.engine import Plan, Step, register


def count_test_domains() -> int:
    conn = libvirt.open("test:///default")
    try:
        return len(conn.listAllDomains(0))
    finally:
        conn.close()


def list_test_domains(ctx) -> None:
    ctx.log(f"{count_test_domains()} domains")


register(Plan("bench.noop", (Step("list domains", list_test_domains),)))


@app.task(name="bench.bare")
def bare() -> int:
    return count_test_domains()
