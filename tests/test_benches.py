"""Every benchmark runs in its quick mode, so none can rot unnoticed.

The figures are not judged here (speed is reported by `make bench`); what is
checked is that each bench runs to its end on the real parts and prints its
table.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

REPO = Path(__file__).resolve().parents[1]


def run_bench(name: str, timeout: float, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, f"bench/{name}.py", "--quick"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"bench/{name}.py failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def admin_url() -> str:
    """A URL of the test's PostgreSQL server on which the bench may create its database."""
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the benches create their own PostgreSQL database")
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{host}:{port}/postgres"


@pytest.mark.integration
def test_scheduling_bench_quick():
    out = run_bench("scheduling", 300, BENCH_ADMIN_URL=admin_url())
    assert "Strata (lazy heaps)" in out
    assert "Strata jobs (steps persisted)" in out


@pytest.mark.integration
def test_portal_bench_quick():
    out = run_bench("portal", 300, BENCH_ADMIN_URL=admin_url())
    assert "dashboard" in out and "jobs API" in out


@pytest.mark.integration
def test_deploy_bench_quick():
    out = run_bench("deploy", 600)
    assert "cli/strata" in out
    assert "per-command overhead" in out


@pytest.mark.integration
def test_registry_push_bench_quick():
    out = run_bench("registry_push", 600, BENCH_ADMIN_URL=admin_url())
    assert "strata push" in out and "docker save | ssh load" in out
    assert "one changed layer (v2)" in out and "(target < 10%)" in out


@pytest.mark.e2e
def test_vm_create_bench_quick():
    out = run_bench("vm_create", 900)
    assert "Strata: one full boot (TCG)" in out
    assert "start -> docker info" in out
    assert "Strata from template (TCG)" in out
    assert "from template: create -> docker info, median" in out
    assert "virt-install --import: define + start" in out
