"""Deploying one release to 1, 2 and 4 targets: Strata against a docker CLI loop.

Each target is its own dockerd (own roots, socket and network namespace)
behind its own sshd on 127.0.0.1, as in tests/remote.  For every target
count, two scenarios are timed:

- cold: release r1 onto empty targets (the whole image travels);
- update: release r2 (r1 plus one small layer) replacing r1.

Strata runs ``roll_out`` on all targets in parallel over pooled connections
(registry-less push sending only missing layers, new replica beside the
old, health check, stop old, prune).  The baseline is what a shell script would do: a
sequential loop of ``docker -H ssh://...`` commands with the same steps
(``docker save | docker load``, run candidate, exec a health probe until it
answers, remove candidate, stop old, run new, probe, remove old).

Also prints the per-command overhead on one reused SSH connection.

Run as root on a machine with dockerd, sshd and busybox-static:
    .venv/bin/python bench/deploy.py [--quick]     (--quick: 1 and 2 targets, one run)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness.guest_servers import (  # noqa: E402 - needs the path above
    HOST_DOCKER_SOCKET,
    Dockerd,
    Sshd,
    build_web_images,
    missing_tools,
    new_ed25519_key,
    remove_web_images,
)
from workers.drivers.guest import (  # noqa: E402
    ConnectionPool,
    HealthCheck,
    ServiceSpec,
    roll_out,
)

TARGET_COUNTS = (1, 2, 4)
PROBE = ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]


class Targets:
    """N dockerd + sshd pairs, and what the docker CLI needs to reach them."""

    def __init__(self, count: int, workdir: Path):
        self.host_key = new_ed25519_key()
        self.manager_key = new_ed25519_key()
        self.daemons: list[Dockerd] = []
        self.servers: list[Sshd] = []
        try:
            for index in range(count):
                daemon = Dockerd()
                self.daemons.append(daemon)
                self.servers.append(
                    Sshd(
                        workdir / f"sshd{index}",
                        self.host_key,
                        self.manager_key,
                        docker_host=daemon.url,
                    )
                )
        except Exception:
            self.stop()
            raise
        self.cli_env = self._cli_environment(workdir)

    def _cli_environment(self, workdir: Path) -> dict[str, str]:
        # The docker CLI runs plain `ssh`; a wrapper adds our own config so it
        # uses the test key and pinned host keys without touching ~/.ssh.
        identity = workdir / "id_ed25519"
        identity.write_text(self.manager_key.private_pem)
        identity.chmod(0o600)
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(
            "".join(f"[127.0.0.1]:{s.port} {self.host_key.public_line}\n" for s in self.servers)
        )
        config = workdir / "ssh_config"
        config.write_text(
            f"Host *\n  IdentityFile {identity}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n"
        )
        bin_dir = workdir / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
        wrapper.chmod(0o755)
        return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def reset(self) -> None:
        for daemon in self.daemons:
            for container in daemon.client.containers.list(all=True):
                container.remove(force=True)
            for image in daemon.client.images.list(all=True):
                daemon.client.images.remove(image.id, force=True)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for daemon in self.daemons:
            daemon.stop()


def web_spec(image: str) -> ServiceSpec:
    return ServiceSpec(
        name="web",
        image=image,
        service_id="bench-web",
        environment_id="bench",
        network="none",
        health=HealthCheck.http("/", 8080, interval=0.1, retries=100),
    )


def strata_deploy(
    pool: ConnectionPool, targets: Targets, local, image: str, release: str, parallel: bool = True
) -> None:
    endpoints = [server.endpoint() for server in targets.servers]

    def deploy(endpoint):
        roll_out(pool.get(endpoint), web_spec(image), release, local_engine=local)

    with ThreadPoolExecutor(max_workers=len(endpoints) if parallel else 1) as workers:
        list(workers.map(deploy, endpoints))


def cli_deploy(targets: Targets, image: str, release: str, previous: str | None) -> None:
    env = targets.cli_env

    def docker_cli(host: str, *args: str, check: bool = True):
        return subprocess.run(
            ["docker", "-H", host, *args], env=env, check=check, capture_output=True
        )

    def wait_answering(host: str, name: str):
        for _ in range(100):
            if docker_cli(host, "exec", name, *PROBE, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} never answered")

    run_args = [
        "run",
        "-d",
        "--init",
        "--network",
        "none",
        "--label",
        "io.strata.service-id=bench-web",
    ]
    for server in targets.servers:
        host = f"ssh://root@127.0.0.1:{server.port}"
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "-H", host, "load", "-q"],
            stdin=save.stdout,
            env=env,
            check=True,
            capture_output=True,
        )
        save.wait()
        candidate = f"web-{release}-candidate"
        docker_cli(host, *run_args, "--name", candidate, image)
        wait_answering(host, candidate)
        docker_cli(host, "rm", "-f", candidate)
        if previous:
            docker_cli(host, "stop", f"web-{previous}")
        docker_cli(host, *run_args, "--name", f"web-{release}", image)
        wait_answering(host, f"web-{release}")
        if previous:
            docker_cli(host, "rm", f"web-{previous}")


def command_overhead(pool: ConnectionPool, targets: Targets) -> tuple[float, float]:
    """Median ms of `true` and of a Docker API ping on a reused connection."""
    connection = pool.get(targets.servers[0].endpoint())
    engine = connection.docker()
    connection.run(["true"])
    engine.ping()
    commands, pings = [], []
    for _ in range(50):
        started = time.perf_counter()
        connection.run(["true"])
        commands.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.ping()
        pings.append(time.perf_counter() - started)
    return statistics.median(commands) * 1000, statistics.median(pings) * 1000


def host_cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def timed(action, *args) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def timed_with_cpu(action, *args) -> tuple[float, float]:
    """Wall seconds, and how busy the host's CPUs were meanwhile (0..1)."""
    busy_before, total_before = host_cpu_times()
    seconds = timed(action, *args)
    busy_after, total_after = host_cpu_times()
    return seconds, (busy_after - busy_before) / max(total_after - total_before, 1)


def bench_targets(count: int, local, v1: str, v2: str, repeat: int, workdir: Path):
    """Best (cold, update) seconds per method, and the command overhead."""
    targets = Targets(count, workdir)
    try:
        with ConnectionPool(targets.manager_key.pkey, command_timeout=120) as pool:
            cells = {}
            cpu_busy = {}
            for method in ("strata", "strata-seq", "cli"):
                cold, update = [], []
                for _ in range(repeat):
                    targets.reset()
                    if method.startswith("strata"):
                        parallel = method == "strata"
                        cold.append(timed(strata_deploy, pool, targets, local, v1, "r1", parallel))
                        seconds, busy = timed_with_cpu(
                            strata_deploy, pool, targets, local, v2, "r2", parallel
                        )
                        update.append(seconds)
                        cpu_busy[method] = busy
                    else:
                        cold.append(timed(cli_deploy, targets, v1, "r1", None))
                        update.append(timed(cli_deploy, targets, v2, "r2", "r1"))
                cells[method] = (min(cold), min(update))
            return cells, cpu_busy["strata"], command_overhead(pool, targets)
    finally:
        targets.reset()
        targets.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per cell; best is shown")
    parser.add_argument("--quick", action="store_true", help="1 and 2 targets, one run")
    args = parser.parse_args()
    counts = TARGET_COUNTS[:2] if args.quick else TARGET_COUNTS
    repeat = 1 if args.quick else args.repeat
    reason = missing_tools()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    local = docker.DockerClient(base_url=f"unix://{HOST_DOCKER_SOCKET}", version="1.41")
    v1, v2 = build_web_images(local)
    rows, busy = {}, {}
    try:
        for count in counts:
            with tempfile.TemporaryDirectory(prefix="strata-bench") as workdir:
                rows[count], busy[count], overhead = bench_targets(
                    count, local, v1, v2, repeat, Path(workdir)
                )
    finally:
        remove_web_images(local, (v1, v2))
        local.close()

    print(
        f"\nper-command overhead on a reused SSH connection: `true` {overhead[0]:.1f} ms, "
        f"Docker API ping {overhead[1]:.1f} ms (median of 50)\n"
    )
    print("seconds per deploy (best of --repeat); strata-seq = Strata one target at a time\n")
    print(
        f"{'targets':>7} | {'scenario':>8} | {'strata':>7} | {'strata-seq':>10} | "
        f"{'cli loop':>8} | {'cli/strata':>10}"
    )
    for count, cells in rows.items():
        for index, scenario in enumerate(("cold", "update")):
            strata, sequential, cli = (cells[m][index] for m in ("strata", "strata-seq", "cli"))
            print(
                f"{count:>7} | {scenario:>8} | {strata:>7.2f} | {sequential:>10.2f} | "
                f"{cli:>8.2f} | {cli / strata:>9.1f}x"
            )
    one, most = rows[counts[0]]["strata"], rows[counts[-1]]["strata"]
    print(
        f"\nstrata {counts[-1]} targets / 1 target: cold {most[0] / one[0]:.2f}x, "
        f"update {most[1] / one[1]:.2f}x"
    )
    # All targets share this host's CPUs: once they are saturated, more
    # targets cost more time however parallel the manager is.
    print(
        "host CPUs busy during the last strata update: "
        + ", ".join(f"{count} target(s) {share:.0%}" for count, share in busy.items())
        + f" ({os.cpu_count()} CPUs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
