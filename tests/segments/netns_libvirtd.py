"""A libvirtd of the suite's own inside a network namespace the suite creates.

A libvirt network puts a bridge with a private address, its dnsmasq and its
iptables rules into the network namespace of libvirtd. Under the network rule
that must never be the machine's own namespace, so this daemon runs in one
made here (``ip netns exec``) and, in a mount namespace of its own, gets
fresh directories bind-mounted over libvirt's runtime, state, cache, log and
configuration paths: it shares nothing with the machine's libvirtd (another
socket, no common networks, pools or domains). Clients in the machine's
namespace reach it at ``uri`` (its socket is a file in our directory).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import libvirt

START_SECONDS = 60
# What the daemon writes to: each gets a fresh directory of ours.
LIBVIRT_PATHS = {
    "run": "/run/libvirt",
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}


class NamespacedLibvirtd:
    """Start with ``start()``; ``stop()`` ends the daemon (by its pid), whatever it
    still runs, and the namespace. Raises RuntimeError with the daemon's log if it
    does not answer."""

    def __init__(self) -> None:
        # Short: a UNIX socket path is limited to 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="/tmp/snl-"))
        self.netns = f"strata-net-test-{uuid.uuid4().hex[:8]}"
        self.uri = f"qemu+unix:///system?socket={self.root}/run/libvirt-sock"
        self.process: subprocess.Popen | None = None
        self._log_path = self.root / "libvirtd.log"

    def _prepare_directories(self) -> None:
        for name in LIBVIRT_PATHS:
            (self.root / name).mkdir()
        # The daemon's settings, but none of the machine's networks, pools or domains.
        for conf in Path("/etc/libvirt").glob("*.conf"):
            shutil.copy(conf, self.root / "etc" / conf.name)
        shutil.copytree("/etc/libvirt/nwfilter", self.root / "etc" / "nwfilter")

    def start(self) -> NamespacedLibvirtd:
        self._prepare_directories()
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        mounts = [
            f"mount --bind {self.root / name} {target}" for name, target in LIBVIRT_PATHS.items()
        ]
        script = " && ".join([*mounts, f"exec libvirtd -p {self.root}/libvirtd.pid"])
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation"]
        argv += ["private", "sh", "-c", script]
        with open(self._log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"libvirtd in {self.netns} exited with {self.process.returncode}: "
                    f"{self.log_tail()}"
                )
            try:
                libvirt.open(self.uri).close()
                return
            except libvirt.libvirtError:
                time.sleep(0.2)
        raise RuntimeError(f"libvirtd in {self.netns} did not answer: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def run_in_namespace(self, *argv: str) -> str:
        """A command's output inside the namespace (to look at bridges and dnsmasq)."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], check=True, capture_output=True, text=True
        )
        return result.stdout

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # The namespace's dnsmasq processes outlive libvirtd; they are ours to end.
        pids = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            subprocess.run(["kill", pid], check=False)
        subprocess.run(["ip", "netns", "delete", self.netns], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
