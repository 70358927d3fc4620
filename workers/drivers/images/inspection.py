"""Hostile-image inspection: decide whether an uploaded disk image is safe to
hand to qemu and libvirt.

A qcow2 file can name other files that qemu will open on our behalf (a backing
file, an external data file, or a `json:` pseudo-protocol spec that reaches any
block driver), which is how OpenStack leaked host files (CVE-2015-5163,
CVE-2024-32498, CVE-2024-40767).  So the qcow2 header is checked by our own
parser before qemu-img ever opens the file, then `qemu-img info` runs under CPU
and memory limits and its answer is checked again.
"""

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageRejected, LimitedCommandError
from .limits import QEMU_IMG_LIMITS, ResourceLimits, run_limited

SUPPORTED_FORMATS = ("qcow2", "raw")
TIB = 1024**4
MIB = 1024**2
DEFAULT_MAX_VIRTUAL_SIZE_BYTES = 2 * TIB
SECTOR_BYTES = 512

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_INCOMPATIBLE_EXTERNAL_DATA_FILE = 1 << 2
QCOW2_EXTENSION_END = 0
QCOW2_EXTENSION_DATA_FILE_NAME = 0x44415441
QCOW2_MAX_HEADER_EXTENSIONS = 64
QCOW2_MAX_NAME_BYTES = 1023
# qcow2 clusters are at most 2 MiB; header extensions live in the first cluster.
QCOW2_MAX_CLUSTER_BYTES = 2 * MIB
# A qcow2 file holds its data plus metadata (L1/L2 tables, refcounts): a small
# fraction of the data.  A file much larger than its virtual size hides something.
QCOW2_METADATA_ALLOWANCE_BYTES = 16 * MIB
QCOW2_METADATA_ALLOWANCE_FRACTION = 0.02


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    virtual_size_bytes: int
    file_size_bytes: int


def _reject_named_file(role: str, name: bytes) -> None:
    """`role` with its article, e.g. "a backing file"."""
    text = name.decode(errors="replace")
    if text.startswith("json:"):
        raise ImageRejected(f"qcow2 image has {role} with a json: pseudo-protocol name")
    raise ImageRejected(f"qcow2 image has {role} ({text!r})")


def _reject_qcow2_header(path: Path) -> None:
    """Refuse a qcow2 file whose header names a backing or data file before qemu
    opens it at all: a qemu that follows such a name reads whatever it points at
    (qemu releases differ in when `info` opens the data file)."""
    with open(path, "rb") as handle:
        header = handle.read(QCOW2_MAX_CLUSTER_BYTES)
        if len(header) < 72:
            raise ImageRejected("truncated qcow2 header")
        version, backing_offset, backing_size, cluster_bits = struct.unpack_from(">IQII", header, 4)
        if backing_offset or backing_size:
            handle.seek(backing_offset)
            backing_name = handle.read(min(backing_size, QCOW2_MAX_NAME_BYTES))
            _reject_named_file("a backing file", backing_name)
    (crypt_method,) = struct.unpack_from(">I", header, 32)
    if crypt_method:
        raise ImageRejected("qcow2 image is encrypted")
    if version == 2:
        extensions_offset = 72
    elif version == 3:
        if len(header) < 104:
            raise ImageRejected("truncated qcow2 v3 header")
        (incompatible,) = struct.unpack_from(">Q", header, 72)
        (extensions_offset,) = struct.unpack_from(">I", header, 100)
    else:
        raise ImageRejected(f"unknown qcow2 version {version}")
    _reject_header_extensions(header, extensions_offset, cluster_bits)
    if version == 3 and incompatible & QCOW2_INCOMPATIBLE_EXTERNAL_DATA_FILE:
        raise ImageRejected("qcow2 image has an external data-file")


def _reject_header_extensions(header: bytes, extensions_offset: int, cluster_bits: int) -> None:
    cluster_end = min(len(header), 1 << min(cluster_bits, 21))
    for _ in range(QCOW2_MAX_HEADER_EXTENSIONS):
        if extensions_offset + 8 > cluster_end:
            raise ImageRejected("qcow2 header extensions run past the first cluster")
        kind, length = struct.unpack_from(">II", header, extensions_offset)
        if kind == QCOW2_EXTENSION_END:
            return
        if kind == QCOW2_EXTENSION_DATA_FILE_NAME:
            data_file_name = header[extensions_offset + 8 : extensions_offset + 8 + length]
            _reject_named_file("an external data-file", data_file_name)
        extensions_offset += 8 + (length + 7) // 8 * 8
    raise ImageRejected("qcow2 header has too many extensions")


def _strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_in(item)


def check_qemu_img_info(info: dict, expected_format: str | None) -> None:
    """Refuse what `qemu-img info --output=json` reports as unsafe (the second
    line of defence behind the header parser)."""
    if any(text.startswith("json:") for text in _strings_in(info)):
        raise ImageRejected("image names a json: pseudo-protocol file")
    if "backing-filename" in info or "full-backing-filename" in info:
        raise ImageRejected(f"image has a backing file ({info.get('backing-filename')!r})")
    image_format = info.get("format")
    if image_format not in SUPPORTED_FORMATS:
        raise ImageRejected(f"format {image_format!r} is not one of {', '.join(SUPPORTED_FORMATS)}")
    if expected_format and image_format != expected_format:
        raise ImageRejected(f"declared {expected_format} but qemu-img reads {image_format}")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if "data-file" in specific:
        raise ImageRejected(f"qcow2 image has an external data-file ({specific['data-file']!r})")
    if info.get("encrypted") or specific.get("encrypt"):
        raise ImageRejected("image is encrypted")
    if specific.get("corrupt"):
        raise ImageRejected("qcow2 image is marked corrupt")


def _check_sizes(
    image_format: str, virtual_size: object, file_size: int, max_virtual_size_bytes: int
) -> int:
    if not isinstance(virtual_size, int) or virtual_size <= 0:
        raise ImageRejected(f"implausible virtual size {virtual_size!r}")
    if virtual_size > max_virtual_size_bytes:
        raise ImageRejected(
            f"virtual size {virtual_size} bytes exceeds the limit of {max_virtual_size_bytes}"
        )
    if image_format == "raw" and file_size % SECTOR_BYTES:
        raise ImageRejected(f"raw image size {file_size} is not a multiple of {SECTOR_BYTES}")
    allowance = QCOW2_METADATA_ALLOWANCE_BYTES + int(
        virtual_size * QCOW2_METADATA_ALLOWANCE_FRACTION
    )
    if file_size > virtual_size + allowance:
        raise ImageRejected(
            f"virtual size {virtual_size} bytes is implausibly smaller than the file "
            f"({file_size} bytes)"
        )
    return virtual_size


def inspect_image(
    path: Path,
    *,
    expected_format: str | None = None,
    max_virtual_size_bytes: int = DEFAULT_MAX_VIRTUAL_SIZE_BYTES,
    limits: ResourceLimits = QEMU_IMG_LIMITS,
) -> ImageInfo:
    """Check an untrusted disk image; ImageRejected(reason) when it is unsafe.

    `expected_format` ("qcow2" or "raw") forces qemu-img's format instead of
    letting it probe, and the content must agree with it.
    """
    if expected_format is not None and expected_format not in SUPPORTED_FORMATS:
        raise ImageRejected(f"format {expected_format!r} is not one of {SUPPORTED_FORMATS}")
    # An absolute path, so qemu-img never reads a "protocol:" prefix into it.
    path = Path(os.path.abspath(path))
    if "json:" in str(path):
        raise ImageRejected("path contains a json: pseudo-protocol name")
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        raise ImageRejected(f"{path} does not exist") from None
    if stat.S_ISLNK(status.st_mode):
        raise ImageRejected(f"{path} is a symlink")
    if not stat.S_ISREG(status.st_mode):
        raise ImageRejected(f"{path} is not a regular file")

    with open(path, "rb") as handle:
        looks_like_qcow2 = handle.read(len(QCOW2_MAGIC)) == QCOW2_MAGIC
    if looks_like_qcow2:
        if expected_format == "raw":
            raise ImageRejected("declared raw but the file has a qcow2 header")
        _reject_qcow2_header(path)
    elif expected_format == "qcow2":
        raise ImageRejected("declared qcow2 but the file has no qcow2 header")

    command = ["qemu-img", "info", "--output=json", "--force-share"]
    if expected_format:
        command += ["-f", expected_format]
    try:
        output = run_limited([*command, str(path)], limits)
    except LimitedCommandError as error:
        raise ImageRejected(f"qemu-img info failed: {error}") from None
    try:
        info = json.loads(output)
    except json.JSONDecodeError:
        raise ImageRejected("qemu-img info printed no valid JSON") from None
    if not isinstance(info, dict):
        raise ImageRejected("qemu-img info printed no JSON object")
    check_qemu_img_info(info, expected_format)
    virtual_size = _check_sizes(
        info["format"], info.get("virtual-size"), status.st_size, max_virtual_size_bytes
    )
    return ImageInfo(
        path=path,
        format=info["format"],
        virtual_size_bytes=virtual_size,
        file_size_bytes=status.st_size,
    )
