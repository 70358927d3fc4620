"""Explicit state machines for the things whose life has rules.

Each machine is a table of allowed moves; a model field bound to one refuses
any other move with ``InvalidTransition``, so a bug cannot silently jump a VM
from ``deleted`` back to ``running``.
"""

from dataclasses import dataclass

from django.db import models


class InvalidTransition(Exception):
    def __init__(self, machine: str, current: str, target: str):
        super().__init__(f"{machine}: cannot go from {current!r} to {target!r}")
        self.machine, self.current, self.target = machine, current, target


@dataclass(frozen=True)
class StateMachine:
    name: str
    choices: type[models.TextChoices]
    moves: dict[str, frozenset[str]]

    def can_move(self, current: str, target: str) -> bool:
        return target in self.moves.get(current, frozenset())

    def check(self, current: str, target: str) -> None:
        if target not in self.choices.values:
            raise InvalidTransition(self.name, current, target)
        if not self.can_move(current, target):
            raise InvalidTransition(self.name, current, target)

    @property
    def final_states(self) -> frozenset[str]:
        return frozenset(s for s in self.choices.values if not self.moves.get(s))


def machine(name, choices, **moves) -> StateMachine:
    return StateMachine(name, choices, {k: frozenset(v) for k, v in moves.items()})


class VMState(models.TextChoices):
    SCHEDULED = "scheduled"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"
    LOST = "lost"
    DELETING = "deleting"
    DELETED = "deleted"


VM_MACHINE = machine(
    "vm",
    VMState,
    scheduled=["provisioning", "error", "deleting"],
    provisioning=["running", "error", "deleting"],
    running=["stopping", "stopped", "error", "lost", "deleting", "provisioning"],
    stopping=["stopped", "running", "error", "lost", "deleting"],
    stopped=["provisioning", "running", "error", "lost", "deleting"],
    error=["provisioning", "deleting", "lost", "running", "stopped"],
    # A lost VM can be found again by the reconciler, or cleaned away.
    lost=["running", "stopped", "deleting"],
    deleting=["deleted", "error"],
    deleted=[],
)


class DeploymentState(models.TextChoices):
    PENDING = "pending"
    ROLLING_OUT = "rolling_out"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"


DEPLOYMENT_MACHINE = machine(
    "deployment",
    DeploymentState,
    pending=["rolling_out", "failed"],
    rolling_out=["succeeded", "failed", "rolled_back"],
    succeeded=["superseded"],
    failed=[],
    rolled_back=[],
    superseded=[],
)


class JobState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_MACHINE = machine(
    "job",
    JobState,
    queued=["running", "cancelled", "failed"],
    # running -> queued is a retry after a transient error.
    running=["succeeded", "failed", "cancelled", "queued"],
    succeeded=[],
    failed=[],
    cancelled=[],
)


def state_check(field: str, choices: type[models.TextChoices], name: str):
    """A database CHECK that the column holds one of the machine's states."""
    return models.CheckConstraint(condition=models.Q(**{f"{field}__in": choices.values}), name=name)


class StatefulModel(models.Model):
    """A model whose ``state`` moves only along its machine's edges."""

    machine: StateMachine

    class Meta:
        abstract = True

    def move_to(self, target: str, save: bool = True, **fields) -> None:
        self.machine.check(self.state, target)
        self.state = target
        for name, value in fields.items():
            setattr(self, name, value)
        if save:
            self.save(update_fields=["state", *fields, *self._touch_fields()])

    def _touch_fields(self) -> list[str]:
        return ["updated_at"] if any(f.name == "updated_at" for f in self._meta.fields) else []
