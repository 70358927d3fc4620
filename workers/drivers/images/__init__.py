"""Guest image driver: build the Debian guest image and check imported images.

No Django here; the management commands register what these functions return.
"""

from .checksum import normalize_sha256, sha256_file, verify_sha256
from .debian import (
    DIRECT_BOOT_CMDLINE,
    BuiltImage,
    DebianRecipe,
    build_debian_image,
    load_cached_image,
)
from .errors import (
    ChecksumMismatch,
    ImageBuildError,
    ImageError,
    ImageRejected,
    LimitedCommandError,
    LimitedCommandTimeout,
)
from .importer import ImportedImage, import_image_file
from .inspection import DEFAULT_MAX_VIRTUAL_SIZE_BYTES, ImageInfo, inspect_image
from .limits import ResourceLimits, run_limited

__all__ = [
    "DEFAULT_MAX_VIRTUAL_SIZE_BYTES",
    "DIRECT_BOOT_CMDLINE",
    "BuiltImage",
    "ChecksumMismatch",
    "DebianRecipe",
    "ImageBuildError",
    "ImageError",
    "ImageInfo",
    "ImageRejected",
    "ImportedImage",
    "LimitedCommandError",
    "LimitedCommandTimeout",
    "ResourceLimits",
    "build_debian_image",
    "import_image_file",
    "inspect_image",
    "load_cached_image",
    "normalize_sha256",
    "run_limited",
    "sha256_file",
    "verify_sha256",
]
