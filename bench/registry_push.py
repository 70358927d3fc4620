"""Getting an image to a machine: `strata push` into Strata's registry against
`docker save | ssh docker load`.

The image is a base layer of random bytes (incompressible, as built code
mostly is) plus a small page; the second version changes only the page.
For each way, the first transfer of version 1 and then that of version 2
are timed, and the bytes sent are counted on the wire:

- `strata push` (the CLI as a user runs it, a subprocess) from the host's
  dockerd to Debian's docker-registry with Strata's token auth, served by
  Strata's Django app on loopback; the engine reaches the registry through a
  counting TCP proxy, so every byte it sends (requests, token calls, layers,
  manifest) is counted;
- `docker save IMAGE | ssh root@127.0.0.1 docker load` into a second dockerd
  behind a loopback sshd (bench/harness/guest_servers.py); the bytes counted
  are those of the tar piped into ssh.

Run as root on a machine with dockerd, sshd, busybox-static and
docker-registry, with BENCH_ADMIN_URL a PostgreSQL URL that may create
databases:
    BENCH_ADMIN_URL=postgres://... .venv/bin/python bench/registry_push.py [--quick]
(--quick: a 4 MiB base layer instead of 64 MiB).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import setup_database, table  # noqa: E402 - needs the path above
from bench.harness.guest_servers import (  # noqa: E402
    HOST_DOCKER_SOCKET,
    Dockerd,
    Sshd,
    build_on_top,
    free_loopback_port,
    missing_tools,
    new_ed25519_key,
)

REGISTRY_BINARY = "docker-registry"
CHUNK = 256 * 1024


class CountingProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream``, counting the bytes clients send."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.sent = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream)
            except OSError:  # the registry is not up yet: this client is refused
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source, sink, counted: bool):
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
                if counted:
                    with self._lock:
                        self.sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._listener.close()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def random_base_image(engine, tag: str, size: int) -> None:
    """An image of one layer holding ``size`` random bytes, plus busybox for a shell."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        content = secrets.token_bytes(size)
        info = tarfile.TarInfo("payload.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(content))
    subprocess.run(
        ["docker", "import", "-", tag],
        input=buffer.getvalue(),
        capture_output=True,
        check=True,
        timeout=300,
    )


@dataclasses.dataclass
class Strata:
    """Strata's app and registry on loopback, and an API token of a developer."""

    workdir: Path
    url: str = ""
    key: str = ""
    registry_addr: str = ""

    def start(self):
        real_port, app_port = free_loopback_port(), free_loopback_port()
        self.proxy = CountingProxy(("127.0.0.1", real_port))
        self.registry_addr = f"127.0.0.1:{self.proxy.port}"
        self.url = f"http://127.0.0.1:{app_port}"
        os.environ.update(
            STRATA_HTTPS="false",
            STRATA_DATA_DIR=str(self.workdir / "data"),
            STRATA_REGISTRY_ADDR=self.registry_addr,
            STRATA_REGISTRY_DIR=str(self.workdir / "registry"),
            STRATA_REGISTRY_AUTH_DIR=str(self.workdir / "registry-auth"),
            STRATA_REGISTRY_REALM=f"{self.url}/api/v1/registry/token",
            STRATA_REGISTRY_NOTIFY_URL=f"{self.url}/api/v1/registry/events",
        )
        setup_database("bench_registry_push")
        from django.contrib.auth import get_user_model
        from django.core.wsgi import get_wsgi_application

        from cloud.services.registry_tokens import registry_config
        from tenants.models import ApiToken, Membership
        from tenants.services import create_team
        from workers.drivers.registry import RegistryDown, check_health, write_config

        owner = get_user_model().objects.create_user("bench-push")
        team = create_team("bench", owner)
        Membership.objects.filter(team=team, user=owner).update(role="developer")
        self.key = ApiToken.issue(owner, "bench")[1]

        self.server = make_server(
            "127.0.0.1",
            app_port,
            get_wsgi_application(),
            server_class=ThreadingWSGIServer,
            handler_class=QuietHandler,
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        # The registry listens behind the proxy; clients know it by the proxy's address.
        config = dataclasses.replace(registry_config(), addr=f"127.0.0.1:{real_port}")
        path = write_config(config, self.workdir / "registry.yml")
        self.log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115 - closed in stop()
        self.registry = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(path)], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                return check_health(self.registry_addr, config.realm, config.service)
            except RegistryDown as exc:
                if self.registry.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / "registry.log").read_text()[-2000:]
                    raise RuntimeError(f"the registry did not start: {log}") from exc
                time.sleep(0.1)

    def push(self, image: str, name: str) -> tuple[int, float, str]:
        """(bytes sent, seconds, what strata push printed last) of one `strata push`."""
        env = {**os.environ, "STRATA_URL": self.url, "STRATA_TOKEN": self.key}
        before, started = self.proxy.sent, time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "cloud.interfaces.cli", "push", image, "--name", name],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"strata push {image}: {done.stderr or done.stdout}")
        summary = next(line for line in done.stdout.splitlines() if "layer(s) sent" in line)
        return self.proxy.sent - before, elapsed, summary

    def cli_start_seconds(self) -> float:
        """Seconds the strata CLI takes to start and exit: part of every push's time."""
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cloud.interfaces.cli", "--help"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        return time.perf_counter() - started

    def stop(self):
        if hasattr(self, "registry"):
            self.registry.terminate()
            self.registry.wait(10)
            self.log.close()
        if hasattr(self, "server"):
            self.server.shutdown()
        if hasattr(self, "proxy"):
            self.proxy.close()


class SshLoadTarget:
    """A second dockerd behind a loopback sshd, and the ssh command reaching it."""

    def __init__(self, workdir: Path):
        self.daemon = Dockerd()
        host_key, client_key = new_ed25519_key(), new_ed25519_key()
        try:
            self.sshd = Sshd(workdir / "sshd", host_key, client_key, docker_host=self.daemon.url)
        except Exception:
            self.daemon.stop()
            raise
        identity = workdir / "id_ed25519"
        identity.write_text(client_key.private_pem)
        identity.chmod(0o600)
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{self.sshd.port} {host_key.public_line}\n")
        self.ssh = [
            "ssh",
            "-i",
            str(identity),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(self.sshd.port),
            "root@127.0.0.1",
        ]

    def save_load(self, image: str) -> tuple[int, float]:
        """(bytes piped into ssh, seconds) of `docker save image | ssh ... docker load`."""
        started = time.perf_counter()
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        load = subprocess.Popen(
            [*self.ssh, "docker", "load", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        sent = 0
        while data := save.stdout.read(CHUNK):
            load.stdin.write(data)
            sent += len(data)
        load.stdin.close()
        errors = load.stderr.read()
        if save.wait() != 0 or load.wait(600) != 0:
            raise RuntimeError(f"docker save | ssh docker load {image}: {errors.decode()}")
        return sent, time.perf_counter() - started

    def stop(self):
        self.sshd.stop()
        self.daemon.stop()


def kib(count: int) -> str:
    return f"{count / 1024:,.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 4 MiB base layer, not 64 MiB")
    args = parser.parse_args()
    reason = missing_tools() or (
        None if shutil.which(REGISTRY_BINARY) else f"{REGISTRY_BINARY} is not installed"
    )
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if "BENCH_ADMIN_URL" not in os.environ:
        print("cannot run: set BENCH_ADMIN_URL (a PostgreSQL URL that may create databases)")
        return 2
    size = (4 if args.quick else 64) * 2**20

    local = docker.DockerClient(base_url=f"unix://{HOST_DOCKER_SOCKET}", version="1.41")
    name = f"strata-bench-push-{uuid.uuid4().hex[:8]}"
    base, v1, v2 = f"{name}:base", f"{name}:1", f"{name}:2"
    with tempfile.TemporaryDirectory(prefix="strata-bench-push") as workdir:
        strata, target = Strata(Path(workdir) / "strata"), None
        try:
            random_base_image(local, base, size)
            build_on_top(local, base, v1, b"version one\n")
            build_on_top(local, base, v2, b"version two\n")
            # The app serves its static files from the data directory.
            (Path(workdir) / "strata" / "data" / "static").mkdir(parents=True)
            strata.start()
            first = strata.push(v1, "web")
            second = strata.push(v2, "web")
            cli_start = strata.cli_start_seconds()
            target = SshLoadTarget(Path(workdir))
            loaded_first = target.save_load(v1)
            loaded_second = target.save_load(v2)
        finally:
            strata.stop()
            if target is not None:
                target.stop()
            # Children before their base: a tag is removed, then the image it held.
            registry_tags = [f"{strata.registry_addr}/bench/web:{tag}" for tag in ("1", "2")]
            for reference in (*registry_tags, v1, v2, base):
                try:
                    local.images.remove(reference, force=True)
                except docker.errors.ImageNotFound:
                    pass
            local.close()

    rows = [
        ["strata push", "first (v1)", kib(first[0]), f"{first[1]:.2f}", first[2]],
        ["strata push", "one changed layer (v2)", kib(second[0]), f"{second[1]:.2f}", second[2]],
        [
            "docker save | ssh load",
            "first (v1)",
            kib(loaded_first[0]),
            f"{loaded_first[1]:.2f}",
            "",
        ],
        [
            "docker save | ssh load",
            "one changed layer (v2)",
            kib(loaded_second[0]),
            f"{loaded_second[1]:.2f}",
            "",
        ],
    ]
    table(
        f"an image of a {size // 2**20} MiB random layer plus a page; v2 changes the page",
        ["way", "transfer", "KiB sent", "seconds", "strata push said"],
        rows,
    )
    ratio = second[0] / first[0]
    print(
        f"\nstrata push, second / first: {ratio:.2%} of the bytes "
        f"(target < 10%), {second[1] / first[1]:.1%} of the time; "
        f"docker save | ssh load sends {loaded_second[0] / second[0]:.0f}x the bytes for v2"
    )
    print(f"(of each push's seconds, {cli_start:.2f} are the strata CLI starting and exiting)")
    return 0 if ratio < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
