"""Real parts for the proxy tests and the network bench, on 127.0.0.1 only:
HTTP replicas (stdlib servers in threads), a master-worker HAProxy process,
and a bounded load generator that counts failed requests."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from workers.drivers.guest.errors import RemoteError
from workers.drivers.guest.proxy_config import ProxyConfig, haproxy_argv, render_config
from workers.drivers.guest.proxy_runtime import MasterCLI, MasterState, RuntimeAPI
from workers.drivers.guest.proxy_runtime import unix_socket_transport as unix_transport
from workers.drivers.hypervisor.ports import find_free_loopback_ports

LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/healthz"


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # HAProxy ends its health-check connections with a reset; not news.
        pass


class ReplicaServer:
    """An HTTP server that answers its own name; its health check can be failed,
    and ``/slow`` takes ``slow_seconds`` (a request in flight during a drain)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.served = 0
        self.slow_seconds = 1.0
        replica = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; with Nagle on, a kept-alive
            # client waits 40 ms (delayed ACK) for the second.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path == HEALTH_PATH:
                    status = 200 if replica.healthy else 503
                else:
                    status = 200
                    replica.served += 1
                    if self.path == "/slow":
                        time.sleep(replica.slow_seconds)
                body = replica.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.server = QuietServer((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    """One request on a new connection: (status, body)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class Haproxy:
    """HAProxy in master-worker mode with its config and sockets in a private directory."""

    def __init__(self) -> None:
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is not installed (scripts/install-system.sh)")
        # UNIX socket paths are limited to 108 bytes: keep the directory short.
        self.directory = Path(tempfile.mkdtemp(prefix="strata-haproxy-", dir="/tmp"))
        self.config_path = self.directory / "haproxy.cfg"
        self.runtime_socket = str(self.directory / "admin.sock")
        self.master_socket = str(self.directory / "master.sock")
        self.state_file = str(self.directory / "server-state")
        self.process: subprocess.Popen | None = None
        self.api = RuntimeAPI(unix_transport(self.runtime_socket))
        self.master = MasterCLI(unix_transport(self.master_socket))

    def config(self, services, **overrides) -> ProxyConfig:
        return ProxyConfig(
            services=tuple(services),
            bind_addresses=(LOOPBACK,),
            runtime_socket=self.runtime_socket,
            state_file=self.state_file,
            **overrides,
        )

    def check(self, config: ProxyConfig) -> subprocess.CompletedProcess:
        self.config_path.write_text(render_config(config))
        return subprocess.run(
            ["haproxy", "-c", "-q", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            check=False,
        )

    def start(self, config: ProxyConfig, timeout: float = 10.0) -> None:
        self.config_path.write_text(render_config(config))
        self.process = subprocess.Popen(
            haproxy_argv(str(self.config_path), self.master_socket),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._wait_for_listeners(config, timeout)
        self.master.wait_ready(timeout)

    def _wait_for_listeners(self, config: ProxyConfig, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                for service in config.services:
                    self.api.servers(service.name)
                return
            except (OSError, RemoteError):
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.process.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise TimeoutError("haproxy did not open its runtime socket")
            time.sleep(0.05)

    def reload(self, config: ProxyConfig) -> MasterState:
        """A hitless reload: save servers' state, write the config, reload the master."""
        self.api.save_server_state(Path(self.state_file).write_text)
        self.config_path.write_text(render_config(config))
        return self.master.reload()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def guest_proxy_directory() -> str:
    """A directory for a guest's HAProxy run on this machine (UNIX socket
    paths are limited to 108 bytes: kept short, under /tmp)."""
    return tempfile.mkdtemp(prefix="strata-guest-proxy-", dir="/tmp")


def stop_guest_proxy(directory: str) -> None:
    """Stop the HAProxy a GuestProxy in ``directory`` started, and remove it all."""
    pid_file = Path(directory, "haproxy.pid")
    if pid_file.exists():
        # The master's pid; its workers end with it.
        for line in pid_file.read_text().split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line), signal.SIGKILL)
    # Workers notice their master is gone and exit; wait until none holds the directory.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _processes_using(directory):
        time.sleep(0.05)
    shutil.rmtree(directory, ignore_errors=True)


def _processes_using(directory: str) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if directory in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    return True
    return False


def free_port() -> int:
    return find_free_loopback_ports(1)[0]


@dataclass
class LoadResult:
    sent: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    answered_by: Counter = field(default_factory=Counter)


class Load:
    """``rate`` requests per second on new connections, from one thread, until stopped.

    Bounded by ``max_seconds`` whatever happens to the test, so it can never
    become an unbounded flood.
    """

    def __init__(self, port: int, rate: float = 20.0, max_seconds: float = 30.0) -> None:
        self.port, self.interval, self.max_seconds = port, 1.0 / rate, max_seconds
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        next_send = started
        while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
            self.result.sent += 1
            try:
                status, body = get(self.port)
            except OSError as error:
                self.result.failed += 1
                self.result.errors[type(error).__name__] += 1
            else:
                if status != 200:
                    self.result.failed += 1
                    self.result.errors[f"HTTP {status}"] += 1
                else:
                    self.result.answered_by[body] += 1
            next_send += self.interval
            self._stop.wait(max(0.0, next_send - time.monotonic()))

    def wait_for_answers(self, sent: int) -> None:
        """Until ``sent`` requests went out (bounded by the load's own time)."""
        while self.result.sent < sent and self._thread.is_alive():
            time.sleep(self.interval)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.max_seconds + 5)
