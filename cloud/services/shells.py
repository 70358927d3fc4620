"""Shell sessions through the manager: `strata ssh VM`, `strata exec ENV
SERVICE -- CMD` and `strata logs ENV SERVICE`.

A session request is checked here (role, VM state, every field named when
wrong) and becomes a plan: the SSH endpoint of each target with its pinned
host key and the command to run there.  The host's relay runs it with the
manager's key; the user never gets a guest address, port or key.  The same
role rules as every other action: viewers may read logs, not ssh or exec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from django.utils import timezone

from cloud.models import Container, ContainerState, Environment, Service, VirtualMachine, VMState
from cloud.services.access import require_act, require_read
from cloud.services.environments import get_environment, get_vm
from cloud.services.errors import NotFound, ValidationError
from cloud.services.secrets import masker
from tenants.models import AuditEvent, Team
from workers.jobs import adapters

MAX_ARGV_ITEMS = 256
MAX_ARGV_CHARS = 16 * 1024
MAX_TAIL = 100_000
FIELDS = {
    "ssh": {"command", "tty", "cols", "rows"},
    "exec": {"command", "tty", "cols", "rows", "replica"},
    "logs": {"tail", "follow"},
}


@dataclass(frozen=True)
class ShellTarget:
    label: str  # what output lines are prefixed with when there are several
    host_name: str
    endpoint: dict  # workers.drivers.guest.ssh.Endpoint's fields
    argv: list[str] | None  # None: a login shell


@dataclass
class ShellPlan:
    kind: str
    team: Team
    target: VirtualMachine | Service
    targets: list[ShellTarget]
    tty: bool = False
    cols: int = 80
    rows: int = 24
    mask: Callable[[str], str] = field(default=lambda text: text)

    def audit(self, action: str, user, **details) -> None:
        AuditEvent.record(
            f"{self.kind}.{action}",
            team=self.team,
            actor=user,
            target=self.target,
            argv=self.targets[0].argv if self.kind == "exec" else None,
            at=timezone.now().isoformat(),
            **details,
        )


def _team(user, team_name: str) -> Team:
    team = Team.objects.filter(name=team_name).first()
    if team is None:
        raise NotFound("no such team")
    require_read(user, team)  # a stranger gets the same NotFound
    return team


def _check_fields(kind: str, request: object) -> dict:
    if not isinstance(request, dict):
        raise ValidationError({"request": ["must be a JSON object"]})
    unknown = sorted(set(request) - FIELDS[kind])
    if unknown:
        raise ValidationError({name: ["unknown field"] for name in unknown})
    return request


def _flag(request: dict, name: str) -> bool:
    value = request.get(name, False)
    if not isinstance(value, bool):
        raise ValidationError({name: ["must be true or false"]})
    return value


def _number(request: dict, name: str, default: int, low: int, high: int) -> int:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError({name: [f"must be a whole number from {low} to {high}"]})
    return value


def _command(request: dict, required: bool) -> list[str] | None:
    argv = request.get("command")
    if argv is None or argv == []:
        if required:
            raise ValidationError({"command": ["name the command to run: -- CMD [ARG...]"]})
        return None
    if (
        not isinstance(argv, list)
        or not all(isinstance(a, str) and "\x00" not in a for a in argv)
        or len(argv) > MAX_ARGV_ITEMS
        or sum(map(len, argv)) > MAX_ARGV_CHARS
    ):
        raise ValidationError(
            {"command": [f"must be a list of at most {MAX_ARGV_ITEMS} strings without NUL"]}
        )
    return argv


def _terminal(plan_kwargs: dict, request: dict) -> dict:
    return {
        **plan_kwargs,
        "tty": _flag(request, "tty"),
        "cols": _number(request, "cols", 80, 1, 1000),
        "rows": _number(request, "rows", 24, 1, 1000),
    }


def _reachable(vm: VirtualMachine) -> dict:
    if vm.state != VMState.RUNNING or vm.host is None:
        raise ValidationError({"vm": [f"{vm.name} is {vm.state}; it must be running"]})
    endpoint = adapters.endpoint(vm)
    return {
        "host": endpoint.host,
        "port": endpoint.port,
        "user": endpoint.user,
        "host_key": endpoint.host_key,
    }


def plan_ssh(user, team_name: str, vm_id: int, request: object) -> ShellPlan:
    team = _team(user, team_name)
    vm = get_vm(user, team, vm_id)
    request = _check_fields("ssh", request)
    argv = _command(request, required=False)
    terminal = _terminal({}, request)
    require_act(user, team, vm.environment.kind)
    target = ShellTarget(vm.name, vm.host.name, _reachable(vm), argv)
    return ShellPlan("ssh", team, vm, [target], **terminal)


def _service(user, team: Team, env_id: int, service_name: str) -> tuple[Environment, Service]:
    env = get_environment(user, team, env_id)
    service = Service.objects.filter(environment=env, name=service_name).first()
    if service is None:
        raise NotFound(f"no service named {service_name!r} in {env.name}")
    return env, service


def _running_replicas(service: Service) -> list[Container]:
    replicas = list(
        Container.objects.filter(service=service, state=ContainerState.RUNNING)
        .select_related("vm__host")
        .order_by("vm__name", "name")
    )
    if not replicas:
        raise ValidationError({"service": [f"{service.name} has no running replica"]})
    return replicas


def _label(service: Service, index: int, container: Container) -> str:
    return f"{service.name}.{index} {container.vm.name}"


def plan_exec(user, team_name: str, env_id: int, service_name: str, request: object) -> ShellPlan:
    team = _team(user, team_name)
    env, service = _service(user, team, env_id, service_name)
    request = _check_fields("exec", request)
    argv = _command(request, required=True)
    terminal = _terminal({}, request)
    require_act(user, team, env.kind)
    replicas = _running_replicas(service)
    replica = _number(request, "replica", 1, 1, len(replicas))
    container = replicas[replica - 1]
    docker = ["docker", "exec", "-i", *(["-t"] if terminal["tty"] else []), container.name]
    target = ShellTarget(
        _label(service, replica, container),
        container.vm.host.name,
        _reachable(container.vm),
        docker + argv,
    )
    return ShellPlan("exec", team, service, [target], **terminal)


def plan_logs(user, team_name: str, env_id: int, service_name: str, request: object) -> ShellPlan:
    """Every running replica's logs, labelled ``web.1 vm1``; masked like job logs."""
    team = _team(user, team_name)
    env, service = _service(user, team, env_id, service_name)
    request = _check_fields("logs", request)
    tail = _number(request, "tail", 100, 0, MAX_TAIL)
    follow = _flag(request, "follow")
    docker = ["docker", "logs", "--tail", str(tail), *(["--follow"] if follow else [])]
    targets = [
        ShellTarget(
            _label(service, index, container),
            container.vm.host.name,
            _reachable(container.vm),
            [*docker, container.name],
        )
        for index, container in enumerate(_running_replicas(service), start=1)
    ]
    return ShellPlan("logs", team, service, targets, mask=masker(env))
