"""Fault injection for the crash tests, loaded into their workers with --include.

Re-registers the real ``provision_vm`` plan with each step behind a gate: when
the control directory holds ``<step>.block``, the step announces itself
(``<step>.entered``) and waits there, so a test can SIGKILL the worker, or
stop libvirtd, while the job is inside that step.  The steps themselves are
the real ones.
"""

import os
import time
from dataclasses import replace
from pathlib import Path

from workers.jobs import PLANS, Step, register

CONTROL = Path(os.environ["STRATA_CRASH_CONTROL"])


def gated(step: Step) -> Step:
    def run(ctx):
        gate = CONTROL / f"{step.name}.block"
        if gate.exists():
            (CONTROL / f"{step.name}.entered").touch()
            deadline = time.monotonic() + 120
            while gate.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        step.run(ctx)

    return Step(step.name, run)


plan = PLANS["provision_vm"]
register(replace(plan, steps=tuple(gated(s) for s in plan.steps)))
