"""Registering guest images built by workers.drivers.images."""

from cloud.models import Image
from workers.drivers.images import BuiltImage


def built_image_fields(built: BuiltImage) -> dict:
    """The Image row's fields for an image the builder made (or found cached)."""
    return {
        "os": built.os,
        "format": built.format,
        "sha256": built.sha256,
        "path": str(built.disk_path),
        "kernel_path": str(built.kernel_path),
        "initrd_path": str(built.initrd_path),
        "kernel_cmdline": built.kernel_cmdline,
        "virtual_size_bytes": built.virtual_size_bytes,
        "size_bytes": built.size_bytes,
        "source": Image.Source.BUILT,
    }
