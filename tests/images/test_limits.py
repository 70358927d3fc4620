import signal
import sys
import time
from pathlib import Path

import pytest

from workers.drivers.images import (
    LimitedCommandError,
    LimitedCommandTimeout,
    ResourceLimits,
    run_limited,
)

MIB = 1024**2
ALLOCATE_512_MIB = [sys.executable, "-c", "block = bytearray(512 * 1024 * 1024)"]


def test_output_of_a_successful_command_is_returned():
    assert run_limited(["echo", "hello"]) == "hello\n"


def test_address_space_limit_makes_a_large_allocation_fail():
    generous = ResourceLimits(address_space_bytes=2048 * MIB)
    run_limited(ALLOCATE_512_MIB, generous)  # the same program passes with room to spare
    tight = ResourceLimits(address_space_bytes=256 * MIB)
    with pytest.raises(LimitedCommandError, match="MemoryError") as caught:
        run_limited(ALLOCATE_512_MIB, tight)
    assert caught.value.returncode == 1


def test_cpu_limit_kills_a_busy_loop():
    with pytest.raises(LimitedCommandError, match="killed by SIGXCPU") as caught:
        run_limited(
            [sys.executable, "-c", "while True: pass"],
            ResourceLimits(cpu_seconds=1, wall_timeout_seconds=30),
        )
    # SIGXCPU, not the wall timeout: the CPU limit ended it, however busy the machine.
    assert caught.value.returncode == -signal.SIGXCPU


def test_wall_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    # The shell's child would outlive a kill of the shell alone.
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    with pytest.raises(LimitedCommandTimeout, match="wall timeout"):
        run_limited(["sh", "-c", script], ResourceLimits(wall_timeout_seconds=1))
    assert gone_within(int(pid_file.read_text()), seconds=5)


def gone_within(pid: int, seconds: float) -> bool:
    # SIGKILL is delivered asynchronously: the pipes close before the process is a zombie.
    deadline = time.monotonic() + seconds
    while is_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def is_running(pid: int) -> bool:
    """False for a gone process and for a zombie (killed, not yet reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_failing_command_reports_status_and_stderr():
    with pytest.raises(LimitedCommandError, match="exited with status 3: boom") as caught:
        run_limited(["sh", "-c", "echo boom >&2; exit 3"])
    assert caught.value.stderr == "boom"


def test_oversized_output_is_refused():
    with pytest.raises(LimitedCommandError, match="more than 100 bytes"):
        run_limited(["head", "-c", "1000", "/dev/zero"], ResourceLimits(max_output_bytes=100))
