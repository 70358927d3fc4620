"""Real sshd and dockerd instances on loopback, for the remote tests and bench.

Each sshd listens on a loopback port with its own config, host key and
authorized_keys (root by key only).  An extra dockerd has its own data-root,
exec-root, socket and network namespace, and sshd's ``SetEnv DOCKER_HOST``
points the SSH sessions at it.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import paramiko

from workers.drivers.guest import Endpoint
from workers.drivers.hypervisor import generate_ed25519_keypair

SSHD = "/usr/sbin/sshd"
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
HOST_DOCKER_SOCKET = "/var/run/docker.sock"
TEST_IMAGE_REPO = "strata-test/web"


def missing_tools() -> str | None:
    """Why these servers cannot run here, or None."""
    for path in (SSHD, DOCKERD, BUSYBOX, HOST_DOCKER_SOCKET):
        if not os.path.exists(path):
            return f"{path} missing (remote tests need sshd, dockerd and busybox-static)"
    return None


@dataclass
class KeyPair:
    private_pem: str
    public_line: str

    @property
    def pkey(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_pem))


def new_ed25519_key() -> KeyPair:
    pair = generate_ed25519_keypair()
    return KeyPair(pair.private_openssh, pair.public_openssh)


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready within {timeout} s")


class Sshd:
    """An sshd on 127.0.0.1 with its own config; ``stop()`` ends it."""

    def __init__(
        self, workdir: Path, host_key: KeyPair, client_key: KeyPair, docker_host: str | None = None
    ):
        self.port = free_loopback_port()
        self.host_key = host_key
        workdir.mkdir(parents=True, exist_ok=True)
        host_key_path = workdir / "ssh_host_ed25519_key"
        host_key_path.write_text(host_key.private_pem)
        host_key_path.chmod(0o600)
        authorized = workdir / "authorized_keys"
        authorized.write_text(client_key.public_line + "\n")
        config = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key_path}",
            f"AuthorizedKeysFile {authorized}",
            f"PidFile {workdir / 'sshd.pid'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "MaxSessions 64",
            "MaxStartups 64",
        ]
        # This machine's root ~/.bashrc runs `pyenv init` (~80 ms), and bash
        # sources it for every command run by sshd; a stock guest's does not.
        # With SHLVL set, bash sees a nested shell and skips it.
        environment = ["SHLVL=1"]
        if docker_host:
            environment.append(f"DOCKER_HOST={docker_host}")
        config.append("SetEnv " + " ".join(environment))
        config_path = workdir / "sshd_config"
        config_path.write_text("\n".join(config) + "\n")
        # sshd refuses to start without its privilege separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.log = open(workdir / "sshd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config_path)], stdout=self.log, stderr=self.log
        )
        try:
            wait_for(self._listening, 10, f"sshd on port {self.port}")
        except Exception:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"sshd exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def endpoint(self, host_key_line: str | None = None) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, "root", host_key_line or self.host_key.public_line)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Dockerd:
    """A second dockerd with its own roots, socket and network namespace.

    ``stop()`` removes it all.  Its containers have no network (no bridge).
    """

    def __init__(self):
        # Short path: containerd's sockets live under exec-root (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="strata-d", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        config = self.root / "daemon.json"
        config.write_text("{}")
        self.log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 - closed in stop()
        # Its own network namespace: a dockerd started with --bridge=none
        # deletes the interface docker0, which belongs to the host's dockerd.
        try:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--net",
                    "--",
                    DOCKERD,
                    "--data-root",
                    str(self.root / "data"),
                    "--exec-root",
                    str(self.root / "exec"),
                    "--host",
                    f"unix://{self.socket}",
                    "--pidfile",
                    str(self.root / "docker.pid"),
                    "--config-file",
                    str(config),
                    "--bridge=none",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--log-level=warn",
                ],
                stdout=self.log,
                stderr=self.log,
            )
        except OSError:
            self.log.close()
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.url = f"unix://{self.socket}"
        self.client = docker.DockerClient(base_url=self.url, version="1.41")
        try:
            wait_for(self._ready, 60, "second dockerd", interval=0.2)
        except Exception:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"dockerd exited: {(self.root / 'dockerd.log').read_text()[-2000:]}")
        try:
            return self.socket.exists() and self.client.ping()
        except Exception:
            return False

    def stop(self):
        try:
            for container in self.client.containers.list(all=True):
                container.remove(force=True)
        except Exception:  # noqa: S110 - the daemon may already be gone; rmtree follows
            pass
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        # Unmount anything the daemon left mounted below its roots, deepest first.
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts]
        for point in sorted((p for p in points if p.startswith(str(self.root))), reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def busybox_rootfs_tar() -> bytes:
    """A root filesystem with static busybox, its applets as symlinks, and /www."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "www", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in ("sh", "httpd", "sleep", "cat", "echo", "wget", "true", "false"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        page = b"release one\n"
        info = tarfile.TarInfo("www/index.html")
        info.size = len(page)
        tar.addfile(info, io.BytesIO(page))
    return buffer.getvalue()


def build_on_top(engine, base: str, tag: str, page: bytes):
    """``base`` plus one small layer replacing /www/index.html."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {base}\nCOPY index.html /www/index.html\n".encode()
        for name, data in (("Dockerfile", dockerfile), ("index.html", page)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    engine.images.build(
        fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False
    )


def build_web_images(engine: docker.DockerClient) -> tuple[str, str]:
    """Two busybox httpd images; the second is the first plus one small layer.

    Each call gets a repository of its own, so no earlier image loses its tag
    (and turns dangling) and removing these tags removes exactly what was made.
    """
    repository = f"{TEST_IMAGE_REPO}-{uuid.uuid4().hex[:8]}"
    v1, v2 = f"{repository}:1", f"{repository}:2"
    engine.api.import_image_from_data(
        busybox_rootfs_tar(),
        repository=repository,
        tag="1",
        changes=['CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]'],
    )
    build_on_top(engine, v1, v2, b"release two\n")
    return v1, v2


def remove_web_images(engine: docker.DockerClient, tags: tuple[str, ...]) -> None:
    """Remove these tags' images and their untagged build layers, nothing else."""
    for tag in reversed(tags):
        try:
            engine.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass
