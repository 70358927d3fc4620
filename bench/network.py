"""The service proxy's cost and its rollouts, on 127.0.0.1 only.

Latency: requests to one HTTP replica directly versus through HAProxy (the
path a container takes to reach ``api`` by name), alternating one and the
other so the machine's load hits both alike; on new connections and on a
kept-alive one. Target: under 1 ms added at the median.

Rollouts: a client sends 20 requests/s on new connections while the replica
behind the name is replaced, by the runtime API (add, wait healthy, drain,
remove) and by a hitless reload through the master CLI. Target: 0 failed requests.
Rollouts take the first path through each guest's HAProxy (rollout.py); the
stop-and-start port switch they replaced refused requests for 5-6 s.

Needs haproxy (scripts/install-system.sh):
    .venv/bin/python bench/network.py [--quick]   (--quick: fewer requests, one rollout each)
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile, table  # noqa: E402 - needs the path above
from bench.harness.proxy_servers import (  # noqa: E402
    LOOPBACK,
    Haproxy,
    Load,
    ReplicaServer,
    free_port,
    get,
)
from workers.drivers.guest.proxy_config import HealthCheck, Replica, Service  # noqa: E402
from workers.drivers.guest.proxy_runtime import roll_replica  # noqa: E402

HEALTH = HealthCheck(path="/healthz", interval_ms=200, timeout_ms=500, fall=2, rise=2)
LOAD_RATE = 20.0
ADDED_P50_TARGET_MS = 1.0


def replica_of(server: ReplicaServer) -> Replica:
    return Replica(server.name, LOOPBACK, server.port)


def timed(request: Callable[[], object]) -> float:
    started = time.perf_counter()
    request()
    return (time.perf_counter() - started) * 1000


def kept_alive(port: int) -> Callable[[], object]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=5)

    def request() -> object:
        connection.request("GET", "/")
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return response.read()

    return request


def latency_rows(direct_port: int, proxy_port: int, requests: int) -> list[list[str]]:
    rows = []
    for mode, make in (
        ("new connection", lambda port: lambda: get(port)),
        ("kept alive", kept_alive),
    ):
        direct_request, proxy_request = make(direct_port), make(proxy_port)
        direct, proxied = [], []
        for _ in range(requests):
            direct.append(timed(direct_request))
            proxied.append(timed(proxy_request))
        added = percentile(proxied, 50) - percentile(direct, 50)
        for path, samples in (("direct", direct), ("via haproxy", proxied)):
            rows.append(
                [
                    mode,
                    path,
                    f"{percentile(samples, 50):.3f}",
                    f"{percentile(samples, 95):.3f}",
                    f"{added:+.3f}" if path == "via haproxy" else "",
                    ("yes" if added < ADDED_P50_TARGET_MS else "NO") if path != "direct" else "",
                ]
            )
    return rows


def rollout_by_runtime_api(haproxy: Haproxy, service: Service, new: ReplicaServer) -> Service:
    old_names = [replica.name for replica in service.replicas]
    roll_replica(haproxy.api, service, replica_of(new), old_names)
    return dataclasses.replace(service, replicas=(replica_of(new),))


def rollout_by_reload(haproxy: Haproxy, service: Service, new: ReplicaServer) -> Service:
    both = dataclasses.replace(service, replicas=(*service.replicas, replica_of(new)))
    haproxy.reload(haproxy.config([both]))
    haproxy.api.wait_until(
        service.name,
        lambda servers: new.name in servers and servers[new.name].up,
        10,
        f"{new.name} did not come up",
    )
    only_new = dataclasses.replace(service, replicas=(replica_of(new),))
    haproxy.reload(haproxy.config([only_new]))
    haproxy.api.wait_until(
        service.name, lambda servers: list(servers) == [new.name], 10, "old replica kept"
    )
    return only_new


def rollout_rows(rollouts: int) -> list[list[str]]:
    rows = []
    for method, roll in (
        ("runtime API (add, healthy, drain, remove)", rollout_by_runtime_api),
        ("hitless reload (master CLI reload)", rollout_by_reload),
    ):
        replicas = [ReplicaServer(f"v{n}") for n in range(rollouts + 1)]
        haproxy = Haproxy()
        try:
            service = Service("api", free_port(), (replica_of(replicas[0]),), HEALTH)
            haproxy.start(haproxy.config([service]))
            haproxy.api.wait_until("api", lambda s: s["v0"].up, 10, "v0 did not come up")
            durations = []
            with Load(service.listen_port, rate=LOAD_RATE, max_seconds=120) as load:
                time.sleep(0.5)
                for new in replicas[1:]:
                    started = time.monotonic()
                    service = roll(haproxy, service, new)
                    durations.append(time.monotonic() - started)
                time.sleep(0.5)
        finally:
            haproxy.stop()
            for replica in replicas:
                replica.stop()
        result = load.result
        rows.append(
            [
                method,
                str(rollouts),
                str(result.sent),
                str(result.failed),
                f"{max(durations):.2f}",
                "yes" if result.failed == 0 else "NO",
            ]
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, one rollout each")
    args = parser.parse_args()
    requests, rollouts = (300, 1) if args.quick else (3000, 5)

    replica = ReplicaServer("api-1")
    haproxy = Haproxy()
    try:
        service = Service("api", free_port(), (replica_of(replica),), HEALTH)
        haproxy.start(haproxy.config([service]))
        haproxy.api.wait_until("api", lambda s: s["api-1"].up, 10, "api-1 did not come up")
        latency = latency_rows(replica.port, service.listen_port, requests)
    finally:
        haproxy.stop()
        replica.stop()
    table(
        f"Request latency on loopback, ms ({requests} requests each, interleaved)",
        ["connection", "path", "p50", "p95", "added p50", f"< {ADDED_P50_TARGET_MS:g} ms"],
        latency,
    )
    table(
        f"Failed requests during rollouts ({LOAD_RATE:g} requests/s on new connections)",
        ["method", "rollouts", "requests", "failed", "longest rollout s", "0 failed"],
        rollout_rows(rollouts),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
