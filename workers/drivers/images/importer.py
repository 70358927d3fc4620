"""Import an uploaded disk image into the image store: copy it privately,
verify its checksum and inspect the copy, then publish it under its name.

Checks run on our own copy, never on the caller's path, so the file cannot be
swapped between being checked and being used.
"""

import hashlib
import hmac
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .checksum import CHUNK_BYTES, normalize_sha256
from .errors import ChecksumMismatch, ImageError, ImageRejected
from .filesystem import fsync_directory
from .inspection import DEFAULT_MAX_VIRTUAL_SIZE_BYTES, inspect_image
from .limits import QEMU_IMG_LIMITS, ResourceLimits

# The same rule as the Image model's names.
IMAGE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
ZERO_CHUNK = bytes(CHUNK_BYTES)


@dataclass(frozen=True)
class ImportedImage:
    name: str
    path: Path
    format: str
    sha256: str
    virtual_size_bytes: int
    size_bytes: int


def validate_image_name(name: str) -> str:
    """Image names become file names: lower-case letters, digits and inner dashes."""
    if not IMAGE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid image name {name!r}: use 1-40 lower-case letters, digits and inner dashes"
        )
    return name


def _open_regular_file(source: Path) -> int:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageRejected(f"{source} does not exist") from None
    except OSError:
        # O_NOFOLLOW fails with ELOOP on a symlink.
        if os.path.islink(source):
            raise ImageRejected(f"{source} is a symlink") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageRejected(f"{source} is not a regular file")
    return fd


def _copy_hashing(source_fd: int, destination) -> str:
    """Copy while hashing; runs of zeros become holes so sparse raw images stay sparse."""
    digest = hashlib.sha256()
    with os.fdopen(source_fd, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            if chunk == ZERO_CHUNK:
                destination.seek(len(chunk), os.SEEK_CUR)
            else:
                destination.write(chunk)
        destination.truncate()
    destination.flush()
    os.fsync(destination.fileno())
    return digest.hexdigest()


def import_image_file(
    source: Path,
    images_dir: Path,
    name: str,
    expected_sha256: str,
    *,
    expected_format: str | None = None,
    max_virtual_size_bytes: int = DEFAULT_MAX_VIRTUAL_SIZE_BYTES,
    limits: ResourceLimits = QEMU_IMG_LIMITS,
) -> ImportedImage:
    """Copy `source` to <images_dir>/<name>.<format> if it passes every check.

    Raises ChecksumMismatch, ImageRejected (hostile or unreadable image),
    ImageError (the name is taken) or ValueError (bad name or digest); on any
    failure nothing is left in `images_dir`.
    """
    validate_image_name(name)
    expected_sha256 = normalize_sha256(expected_sha256)
    images_dir.mkdir(parents=True, exist_ok=True)
    source_fd = _open_regular_file(Path(source))
    with tempfile.NamedTemporaryFile(dir=images_dir, prefix=f".import-{name}-") as copy:
        actual_sha256 = _copy_hashing(source_fd, copy)
        if not hmac.compare_digest(actual_sha256, expected_sha256):
            raise ChecksumMismatch(expected_sha256, actual_sha256)
        info = inspect_image(
            Path(copy.name),
            expected_format=expected_format,
            max_virtual_size_bytes=max_virtual_size_bytes,
            limits=limits,
        )
        destination = images_dir / f"{name}.{info.format}"
        os.chmod(copy.name, 0o644)
        try:
            # A hard link publishes the complete file under its name at once and,
            # unlike rename, never replaces an existing image.
            os.link(copy.name, destination)
        except FileExistsError:
            raise ImageError(f"{destination} already exists") from None
    fsync_directory(images_dir)
    return ImportedImage(
        name=name,
        path=destination,
        format=info.format,
        sha256=actual_sha256,
        virtual_size_bytes=info.virtual_size_bytes,
        size_bytes=info.file_size_bytes,
    )
