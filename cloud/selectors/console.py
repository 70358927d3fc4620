"""The VM's serial console as this server sees it: the tail of the log file
the hypervisor writes, cleaned of terminal noise for a browser."""

import re
from pathlib import Path

from django.conf import settings

from cloud.models import VirtualMachine

CONSOLE_TAIL_BYTES = 16 * 1024
# Terminal escape sequences and control characters other than newline and tab:
# a guest writes them to its serial console, a browser would show them as junk.
_TERMINAL_NOISE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


def console_log_path(vm: VirtualMachine) -> Path:
    # The path workers.drivers.hypervisor.storage.Storage.console_log_path gives for
    # the data directory the workers open the hypervisor with.
    return Path(settings.STRATA_DATA_DIR) / "console" / f"{vm.domain_name}.log"


def console_tail(vm: VirtualMachine) -> str | None:
    """The end of the VM's serial console log, or None when this server has no log
    for it (not booted yet, or on another machine)."""
    path = console_log_path(vm)
    try:
        with path.open("rb") as log:
            size = log.seek(0, 2)
            log.seek(max(size - CONSOLE_TAIL_BYTES, 0))
            tail = log.read()
    except OSError:
        return None
    text = tail.decode("utf-8", errors="replace").replace("\r\n", "\n")
    if size > CONSOLE_TAIL_BYTES:
        text = text.partition("\n")[2]  # the first line was cut in half
    return _TERMINAL_NOISE.sub("", text)
