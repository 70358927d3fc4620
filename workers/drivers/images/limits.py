"""Run an untrusted-input tool (qemu-img on an uploaded image) under CPU-time and
address-space limits and a wall-clock timeout.

The limits are set by util-linux `prlimit` on the child rather than in a
`preexec_fn`, because preexec_fn is unsafe when the caller has threads.
"""

import os
import signal
import subprocess
from dataclasses import dataclass

from .errors import LimitedCommandError, LimitedCommandTimeout

GIB = 1024**3


@dataclass(frozen=True)
class ResourceLimits:
    cpu_seconds: int = 30
    address_space_bytes: int = 1 * GIB
    wall_timeout_seconds: float = 60.0
    max_output_bytes: int = 1024 * 1024


# 30 s of CPU and 1 GiB of address space are far beyond what `qemu-img info`
# needs on a sane image.
QEMU_IMG_LIMITS = ResourceLimits()


def run_limited(args: list[str], limits: ResourceLimits = QEMU_IMG_LIMITS) -> str:
    """Run `args` (an argument list, never a shell string) and return its stdout.

    Raises LimitedCommandTimeout past the wall timeout (the whole process group is
    killed) and LimitedCommandError on a non-zero exit or a kill by a limit
    (RLIMIT_CPU ends in SIGXCPU/SIGKILL, RLIMIT_AS in a failed allocation).
    """
    limited = [
        "prlimit",
        # SIGXCPU at the soft limit; SIGKILL a second later should it be ignored.
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--as={limits.address_space_bytes}",
        # No core dumps of a process that chewed on hostile input.
        "--core=0",
        "--",
        *args,
    ]
    process = subprocess.Popen(
        limited,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
    )
    try:
        stdout, stderr = process.communicate(timeout=limits.wall_timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise LimitedCommandTimeout(
            f"{args[0]} exceeded the {limits.wall_timeout_seconds:g} s wall timeout",
            returncode=None,
        ) from None
    error_text = stderr.decode(errors="replace").strip()[-2000:]
    if process.returncode != 0:
        if process.returncode < 0:
            how = f"killed by {signal.Signals(-process.returncode).name}"
        else:
            how = f"exited with status {process.returncode}"
        raise LimitedCommandError(
            f"{args[0]} {how}: {error_text}", returncode=process.returncode, stderr=error_text
        )
    if len(stdout) > limits.max_output_bytes:
        raise LimitedCommandError(
            f"{args[0]} printed more than {limits.max_output_bytes} bytes", returncode=0
        )
    return stdout.decode(errors="replace")
