"""`strata ssh`, `exec` and `logs` against the real stack: the CLI as a
subprocess, uvicorn serving cloud.asgi, the Redis channel layer, the host's
relay process as `make run` starts it (with the manager's key), a real sshd
on the VM's pinned host key and real containers in the host's dockerd."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from websockets.sync.client import connect

from cloud.models import Container, ContainerState, Secret, Service, VirtualMachine
from tenants.models import ApiToken, AuditEvent, Membership, Role
from workers.console import protocol
from workers.drivers.guest.containers import LABEL_ENVIRONMENT_ID

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SECRET = "hunter22x"
# Prints a line with a secret in it, then waits; `exec` can make it print more
# by writing to PID 1's stdout, which is the container's log.
REPLICA_COMMAND = ["sh", "-c", f"echo started password={SECRET}; exec sleep 100000"]


@pytest.fixture
def shell_world(sshd_guest, asgi_server, relay_process, django_user_model):
    """The sshd_guest VM with two running replicas of ``web``, a viewer, an
    outsider, and a dev secret; the CLI's environment for each user."""
    vm, engine, image = sshd_guest
    team = vm.environment.team
    relay_process(vm.host.name)
    service = Service.objects.get(environment=vm.environment, name="web")
    Service.objects.filter(pk=service.pk).update(replicas=2)
    release = service.releases.get()
    Container.objects.filter(service=service).delete()
    suffix = uuid.uuid4().hex[:8]
    for replica in (1, 2):
        name = f"strata-web-{suffix}-{replica}"
        engine.containers.run(
            image,
            REPLICA_COMMAND,
            name=name,
            detach=True,
            labels={LABEL_ENVIRONMENT_ID: str(vm.environment_id)},
        )
        Container.objects.create(
            vm=vm, service=service, release=release, name=name, state=ContainerState.RUNNING
        )
    Secret.objects.create(team=team, scope="dev", name="db-password", value=SECRET)
    viewer = django_user_model.objects.create_user("vera")
    Membership.objects.create(team=team, user=viewer, role=Role.VIEWER)
    outsider = django_user_model.objects.create_user("olga")

    def cli_env(user):
        return {
            **os.environ,
            "STRATA_URL": asgi_server.origin,
            "STRATA_TOKEN": ApiToken.issue(user, "cli")[1],
            "STRATA_TEAM": team.name,
        }

    admin = Membership.objects.get(team=team, role=Role.ADMIN).user
    return {
        "vm": vm,
        "engine": engine,
        "admin": cli_env(admin),
        "viewer": cli_env(viewer),
        "outsider": cli_env(outsider),
        "asgi": asgi_server,
    }


def strata(env, *args, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud.interfaces.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )


def audited(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def test_ssh_runs_a_command_in_the_vm_and_reports_its_exit_status(shell_world):
    done = strata(shell_world["admin"], "ssh", "vm1", "--", "uname", "-s")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Linux\n"
    failed = strata(
        shell_world["admin"], "ssh", "dev/vm1", "--", "sh", "-c", "echo oops >&2; exit 3"
    )
    assert failed.returncode == 3
    assert failed.stderr == b"oops\n" and failed.stdout == b""
    starts, ends = audited("ssh.start"), audited("ssh.end")
    assert len(starts) == 2 and len(ends) == 2
    assert starts[0].target_id == str(shell_world["vm"].pk)
    assert ends[1].details["reason"] == "exited with status 3"


def test_exec_in_a_replica_passes_binary_stdin_and_stdout_whole(shell_world):
    payload = os.urandom(8 * 1024 * 1024)
    done = strata(shell_world["admin"], "exec", "-i", "dev", "web", "--", "cat", stdin=payload)
    assert done.returncode == 0, done.stderr[-500:]
    assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    second = strata(
        shell_world["admin"], "exec", "--replica", "2", "dev", "web", "--", "cat", "/proc/1/cmdline"
    )
    assert second.returncode == 0 and b"sleep" in second.stdout
    status = strata(shell_world["admin"], "exec", "dev", "web", "--", "false")
    assert status.returncode == 1
    event = audited("exec.start")[-1]
    assert event.details["argv"][-1] == "false"


def test_logs_follow_all_replicas_prefixed_and_masked_as_a_viewer(shell_world):
    follow = subprocess.Popen(
        [sys.executable, "-m", "cloud.interfaces.cli", "logs", "-f", "dev", "web"],
        env=shell_world["viewer"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = [follow.stdout.readline() for _ in range(2)]
        assert sorted(lines) == [
            b"[web.1 vm1] started password=********\n",
            b"[web.2 vm1] started password=********\n",
        ]
        # A line the first replica prints only now, after the follow began.
        said = strata(
            shell_world["admin"],
            "exec",
            "dev",
            "web",
            "--",
            "sh",
            "-c",
            "echo late line > /proc/1/fd/1",
        )
        assert said.returncode == 0, said.stderr
        assert follow.stdout.readline() == b"[web.1 vm1] late line\n"
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)
    tail = strata(shell_world["viewer"], "logs", "--tail", "1", "dev", "web")
    assert tail.returncode == 0
    assert SECRET.encode() not in tail.stdout and b"[web.2 vm1] started" in tail.stdout


def test_viewers_cannot_ssh_or_exec_and_strangers_see_no_team(shell_world):
    viewer = strata(shell_world["viewer"], "ssh", "vm1", "--", "true")
    assert viewer.returncode == 2 and b"developer role" in viewer.stderr
    viewer_exec = strata(shell_world["viewer"], "exec", "dev", "web", "--", "true")
    assert viewer_exec.returncode == 2 and b"developer role" in viewer_exec.stderr
    stranger = strata(shell_world["outsider"], "ssh", "vm1", "--", "true")
    assert stranger.returncode == 2 and b"no such team" in stranger.stderr
    assert audited("ssh.start") == [] and audited("exec.start") == []


def test_bad_requests_name_the_field_and_open_nothing(shell_world):
    admin = shell_world["admin"]
    replica = strata(admin, "exec", "--replica", "7", "dev", "web", "--", "true")
    assert (
        replica.returncode == 2 and b"replica: must be a whole number from 1 to 2" in replica.stderr
    )
    tail = strata(admin, "logs", "--tail", "-4", "dev", "web")
    assert tail.returncode == 2 and b"tail: must be a whole number" in tail.stderr
    unknown = strata(admin, "exec", "dev", "db", "--", "true")
    assert unknown.returncode == 2 and b"no service named 'db'" in unknown.stderr
    no_command = strata(admin, "exec", "dev", "web")
    assert no_command.returncode == 2 and b"name the command" in no_command.stderr
    VirtualMachine.objects.filter(pk=shell_world["vm"].pk).update(state="stopped")
    stopped = strata(admin, "ssh", "vm1", "--", "true")
    assert stopped.returncode == 2 and b"vm: vm1 is stopped" in stopped.stderr
    assert audited("ssh.start") == [] and audited("exec.start") == []
    # A raw client: an unknown field, then no token at all.
    url = shell_world["asgi"].origin.replace("http", "ws") + (
        f"/ws/teams/{shell_world['vm'].environment.team.name}/vms/{shell_world['vm'].pk}/ssh/"
    )
    headers = {"Authorization": "Bearer " + admin["STRATA_TOKEN"]}
    with connect(url, additional_headers=headers, origin=shell_world["asgi"].origin) as socket:
        socket.send(json.dumps({"command": ["true"], "sudo": True}))
        assert json.loads(socket.recv(10)) == {
            "event": "ended",
            "code": protocol.CLOSE_BAD_REQUEST,
            "reason": "sudo: unknown field",
        }
    with connect(url, origin=shell_world["asgi"].origin) as socket:
        assert json.loads(socket.recv(10))["code"] == protocol.CLOSE_NOT_LOGGED_IN


def test_a_killed_client_ends_the_remote_command(shell_world):
    marker = f"strata-test-{uuid.uuid4().hex[:8]}"
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud.interfaces.cli",
            "ssh",
            "-t",
            "vm1",
            "--",
            "sh",
            "-c",
            f"sleep 300; : {marker}",
        ],
        env=shell_world["admin"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )

    def remote_running() -> bool:
        return (
            marker in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        )

    deadline = time.monotonic() + 30
    while not remote_running():
        assert time.monotonic() < deadline, "the remote command never started"
        time.sleep(0.2)
    client.kill()
    client.wait(10)
    deadline = time.monotonic() + 30
    while remote_running() or not audited("ssh.end"):
        assert time.monotonic() < deadline, "the remote command outlived its client"
        time.sleep(0.2)
    assert audited("ssh.end")[0].details["reason"] == "the client went away"
