"""Fault injection for the crash tests, loaded into their workers with --include.

Re-registers the real ``provision_vm`` plan with gates around each real step,
and gates inside the slow remote calls once their remote side has answered.
A gate is a point name; while the control directory holds ``<point>.block``
the worker announces ``<point>.entered`` and waits there, so a test can
SIGKILL it at that exact point:

- ``before <step>``: the step has not started;
- ``after <step>``: the step's side effect is made, its DONE not yet written
  (the window idempotency exists for);
- ``in wait_for_ssh``: the guest answered SSH, the step has not recorded it;
- ``in docker info``: the guest's Docker answered, the step has not recorded it.
"""

import os
import time
from dataclasses import replace
from pathlib import Path

from workers.jobs.engine import PLANS, Step, register
from workers.jobs.steps import vm as vm_steps

CONTROL = Path(os.environ["STRATA_CRASH_CONTROL"])
# Long enough for any test to act; a gate never holds a worker for ever.
GATE_SECONDS = 900


def gate(point: str) -> None:
    block = CONTROL / f"{point}.block"
    if not block.exists():
        return
    (CONTROL / f"{point}.entered").touch()
    deadline = time.monotonic() + GATE_SECONDS
    while block.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def gated(step: Step) -> Step:
    def run(ctx):
        gate(f"before {step.name}")
        step.run(ctx)
        gate(f"after {step.name}")

    return Step(step.name, run)


class GatedConnection:
    """The real connection; a gate after each command's answer, named by its first words."""

    def __init__(self, connection):
        self._connection = connection

    def run(self, argv, **options):
        result = self._connection.run(argv, **options)
        gate("in " + " ".join(argv[:2]))
        return result

    def __getattr__(self, name):
        return getattr(self._connection, name)


_real_wait_for_ssh = vm_steps.wait_for_ssh
_real_connect = vm_steps.connect


def wait_for_ssh(*args, **options):
    connection = _real_wait_for_ssh(*args, **options)
    gate("in wait_for_ssh")
    return connection


vm_steps.wait_for_ssh = wait_for_ssh
vm_steps.connect = lambda vm: GatedConnection(_real_connect(vm))

plan = PLANS["provision_vm"]
register(replace(plan, steps=tuple(gated(s) for s in plan.steps)))
