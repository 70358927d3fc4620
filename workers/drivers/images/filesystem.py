"""File-tree helpers for builds that may be interrupted: removing a tree that a
killed debootstrap left with mounts inside, and publishing a finished directory
atomically."""

import os
import shutil
import subprocess
from pathlib import Path

from .errors import ImageBuildError

MOUNTINFO = Path("/proc/self/mountinfo")


def _decode_mountinfo_path(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return field.encode().decode("unicode_escape")


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest first."""
    root = Path(os.path.realpath(root))
    found = []
    for line in MOUNTINFO.read_text().splitlines():
        mount_point = Path(_decode_mountinfo_path(line.split()[4]))
        if mount_point == root or root in mount_point.parents:
            found.append(mount_point)
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def unmount(mount_point: Path) -> None:
    """Detach a mount; failures show up as mounts still present afterwards."""
    subprocess.run(["umount", "--lazy", str(mount_point)], check=False, capture_output=True)


def remove_tree(root: Path) -> None:
    """Delete `root` without ever descending into a mount inside it.

    debootstrap mounts /proc, /sys and (in a container) a tmpfs /dev with bind
    mounts of host devices inside the target; if it is killed these stay, and a
    plain rmtree would walk into them.
    """
    if not root.exists() and not root.is_symlink():
        return
    for mount_point in mounts_under(root):
        unmount(mount_point)
    remaining = mounts_under(root)
    if remaining:
        raise ImageBuildError(f"cannot remove {root}: still mounted: {remaining}")
    shutil.rmtree(root)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_file_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
