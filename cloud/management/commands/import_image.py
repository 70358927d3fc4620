"""`manage.py import_image NAME PATH --sha256 HEX`: verify, inspect and copy an
uploaded disk image into the image store, then register it.  A refused image
leaves no row and no file behind."""

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError, transaction

from cloud.models import Image
from workers.drivers.images import (
    DEFAULT_MAX_VIRTUAL_SIZE_BYTES,
    ChecksumMismatch,
    ImageError,
    ImageRejected,
    import_image_file,
)

GIB = 1024**3


class Command(BaseCommand):
    help = "Import a qcow2 or raw disk image after checking its sha256 and its safety."

    def add_arguments(self, parser):
        parser.add_argument("name", help="image name: 1-40 lower-case letters, digits, dashes")
        parser.add_argument("path", type=Path, help="the image file to import")
        parser.add_argument("--sha256", required=True, help="expected sha256 of the file (hex)")
        parser.add_argument(
            "--format",
            choices=["qcow2", "raw"],
            help="the image's format; when given, qemu-img does not probe",
        )
        parser.add_argument("--os", default="", help="guest OS, e.g. debian-12")
        parser.add_argument(
            "--max-virtual-size-gib",
            type=int,
            default=DEFAULT_MAX_VIRTUAL_SIZE_BYTES // GIB,
            help="refuse images whose virtual disk is larger (default: %(default)s)",
        )

    def handle(self, *args, name, path, sha256, format, os, max_virtual_size_gib, **options):
        try:
            Image._meta.get_field("name").run_validators(name)
        except ValidationError as error:
            raise CommandError(f"name: {' '.join(error.messages)}") from None
        if Image.objects.filter(name=name).exists():
            raise CommandError(f"name: an image named {name!r} already exists")
        try:
            imported = import_image_file(
                path,
                Path(settings.STRATA_DATA_DIR) / "images",
                name,
                sha256,
                expected_format=format,
                max_virtual_size_bytes=max_virtual_size_gib * GIB,
            )
        except ChecksumMismatch as error:
            raise CommandError(f"refused {path}: {error}") from None
        except ImageRejected as error:
            raise CommandError(f"refused {path}: {error.reason}") from None
        except (ImageError, ValueError) as error:
            raise CommandError(f"cannot import {path}: {error}") from None

        try:
            with transaction.atomic():
                image = Image.objects.create(
                    name=name,
                    os=os,
                    format=imported.format,
                    sha256=imported.sha256,
                    path=str(imported.path),
                    virtual_size_bytes=imported.virtual_size_bytes,
                    size_bytes=imported.size_bytes,
                    source=Image.Source.IMPORTED,
                )
        except IntegrityError:
            imported.path.unlink()
            raise CommandError(f"name: an image named {name!r} already exists") from None
        except BaseException:
            imported.path.unlink()
            raise
        self.stdout.write(
            f"image {image.name}: imported {image.format}, {image.virtual_size_bytes} bytes "
            f"virtual, {image.path}"
        )
