"""A one-file initramfs (busybox as /init's shell) for a guest whose serial
console answers typed commands: the smallest real interactive console."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

READY_LINE = b"STRATA-CONSOLE-READY"

INIT_SCRIPT = b"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo STRATA-CONSOLE-READY
exec setsid cttyhack sh
"""


def _newc_entry(name: str, mode: int, data: bytes, inode: int) -> bytes:
    """One entry of a cpio 'newc' archive, the format the kernel unpacks."""
    encoded = name.encode() + b"\0"
    fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
    entry = header + encoded
    entry += b"\0" * (-len(entry) % 4)
    entry += data + b"\0" * (-len(data) % 4)
    return entry


def build_initramfs(target: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox-static is needed for the console guest")
    files = [
        ("bin", 0o040755, b""),
        ("proc", 0o040755, b""),
        ("dev", 0o040755, b""),
        ("bin/busybox", 0o100755, Path(busybox).read_bytes()),
        ("init", 0o100755, INIT_SCRIPT),
    ]
    archive = io.BytesIO()
    for inode, (name, mode, data) in enumerate(files, start=1):
        archive.write(_newc_entry(name, mode, data, inode))
    archive.write(_newc_entry("TRAILER!!!", 0, b"", 0))
    target.write_bytes(gzip.compress(archive.getvalue(), compresslevel=1))
    return target
