"""Giving a guest restored from a template its own identity (the clone problem).

Every VM restored from one saved memory state starts as the template: same
SSH host keys, machine-id, hostname, RNG state, Docker engine id and a clock
stopped at the save. ``reidentify`` replaces what can be replaced from inside
the running guest, in one command over the connection that still pins the
template's host key; afterwards sshd presents only the VM's own key. The
kernel's boot id is read-only and stays the template's until a reboot.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from .errors import CommandFailed, InvalidSpec
from .ssh import SSHConnection

HOSTNAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MACHINE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
PUBLIC_KEY_PATTERN = re.compile(r"ssh-ed25519 [A-Za-z0-9+/=]+( [A-Za-z0-9@._-]+)?")
RANDOM_SEED_BYTES = 64
STDERR_TAIL = 500

# Positional parameters only: no value is ever part of the script's text.
# sshd needs no restart: it re-executes itself for every connection, and the
# new process reads the host keys from disk.
# dockerd's engine id lives in key.json (Docker 20.10): removed, the restarted
# engine makes a new one; the restart runs on while the readiness checks poll.
REIDENTIFY_SCRIPT = r"""
set -eu
hostname=$1 machine_id=$2 public_key=$3 now=$4 seed=$5 renew_engine_id=$6
date -u -s "@$now" >/dev/null
printf '%s' "$seed" >/dev/urandom
umask 077
cat >/etc/ssh/ssh_host_ed25519_key.strata-new
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
mv /etc/ssh/ssh_host_ed25519_key.strata-new /etc/ssh/ssh_host_ed25519_key
umask 022
printf '%s\n' "$public_key" >/etc/ssh/ssh_host_ed25519_key.pub
printf '%s\n' "$machine_id" >/etc/machine-id.strata-new
mv /etc/machine-id.strata-new /etc/machine-id
printf '%s\n' "$hostname" >/etc/hostname
hostname "$hostname"
if [ -d /etc/cloud/cloud.cfg.d ]; then
  printf 'preserve_hostname: true\n' >/etc/cloud/cloud.cfg.d/90-strata-identity.cfg
fi
if [ "$renew_engine_id" = yes ] && [ -e /etc/docker/key.json ]; then
  rm -f /etc/docker/key.json
  systemctl restart --no-block docker
fi
"""


@dataclass(frozen=True)
class GuestIdentity:
    """What makes one VM itself; the host key pair is the one the manager pinned."""

    hostname: str
    machine_id: str
    host_key_private: str
    host_key_public: str
    # A new Docker engine id restarts dockerd: about 15 s under TCG (its
    # iptables set-up), most of the restored path to Docker answering.
    renew_engine_id: bool = True

    def validate(self) -> GuestIdentity:
        if not HOSTNAME_PATTERN.fullmatch(self.hostname):
            raise InvalidSpec("hostname", "must be a DNS label")
        if not MACHINE_ID_PATTERN.fullmatch(self.machine_id):
            raise InvalidSpec("machine_id", "must be 32 lowercase hex digits")
        if not PUBLIC_KEY_PATTERN.fullmatch(self.host_key_public.strip()):
            raise InvalidSpec("host_key_public", "must be one ssh-ed25519 public key line")
        if "-----BEGIN OPENSSH PRIVATE KEY-----" not in self.host_key_private:
            raise InvalidSpec("host_key_private", "must be an OpenSSH private key")
        return self


def reidentify(connection: SSHConnection, identity: GuestIdentity, timeout: float = 60.0) -> None:
    """Give the guest behind ``connection`` ``identity``, reseed its RNG with
    bytes from the manager and set its clock to the manager's.

    The private key goes over the channel's stdin, never in a command line.
    Raises CommandFailed with the end of the script's stderr.
    """
    identity.validate()
    argv = [
        "sh",
        "-c",
        REIDENTIFY_SCRIPT,
        "strata-reidentify",
        identity.hostname,
        identity.machine_id,
        identity.host_key_public.strip(),
        f"{time.time():.6f}",
        secrets.token_hex(RANDOM_SEED_BYTES),
        "yes" if identity.renew_engine_id else "no",
    ]
    channel = connection.open_exec_channel(argv, timeout)
    try:
        channel.sendall(identity.host_key_private.encode())
        channel.shutdown_write()
        stderr = channel.makefile_stderr("rb").read()
        exit_status = channel.recv_exit_status()
    finally:
        channel.close()
    if exit_status != 0:
        raise CommandFailed(argv[:2] + ["REIDENTIFY_SCRIPT"], exit_status, _tail(stderr))


def _tail(stderr: bytes) -> str:
    return stderr.decode(errors="replace")[-STDERR_TAIL:]
