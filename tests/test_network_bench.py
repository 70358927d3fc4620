"""bench/network.py runs to its end in quick mode on a real HAProxy and prints
both tables (the figures are reported, not judged, as for the other benches;
zero failed requests during rollouts is asserted in tests/remote/test_proxy.py)."""

import shutil

import pytest

from tests.test_benches import run_bench


@pytest.mark.integration
def test_network_bench_quick():
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (scripts/install-system.sh)")
    out = run_bench("network", 300)
    assert "Request latency on loopback" in out
    for row in ("direct", "via haproxy", "new connection", "kept alive"):
        assert row in out
    assert "Failed requests during rollouts" in out
    assert "runtime API (add, healthy, drain, remove)" in out
    assert "hitless reload (master CLI reload)" in out
