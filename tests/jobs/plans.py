"""Plans used only by the engine's tests, loaded into test workers with --include.

Their steps record each run in a file and can be told, through files too, to
fail, to fail transiently a number of times, or to block until released, which
is how the tests inject faults and catch a worker mid-step.
"""

import os
import time
from pathlib import Path

from workers.jobs.engine import Plan, Step, StepContext, register


class Flaky(Exception):
    transient = True


def control_dir(ctx: StepContext) -> Path:
    return Path(ctx.job.params["control_dir"])


def recording_step(name: str):
    def run(ctx: StepContext) -> None:
        control = control_dir(ctx)
        with open(control / "runs.log", "a") as fh:
            fh.write(f"{name} {os.getpid()}\n")
        ctx.log(f"{name} ran")
        if (control / f"{name}.block").exists():
            (control / f"{name}.entered").touch()
            deadline = time.monotonic() + 60
            while (control / f"{name}.block").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        flaky = control / f"{name}.flaky"
        if flaky.exists() and int(flaky.read_text() or 0) > 0:
            flaky.write_text(str(int(flaky.read_text()) - 1))
            raise Flaky(f"{name} lost its connection")
        if (control / f"{name}.fail").exists():
            raise ValueError(f"{name} refused: bad input")

    return Step(name, run)


def compensate(ctx: StepContext) -> None:
    with open(control_dir(ctx) / "runs.log", "a") as fh:
        fh.write("compensate\n")
    ctx.log("removed what was made; the token hunter2-secret is masked")


register(
    Plan(
        "test.three_steps",
        tuple(recording_step(n) for n in ("first", "second", "third")),
        compensate,
    )
)
