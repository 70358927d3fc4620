"""`manage.py build_image debian-12`: build the guest image (or reuse the cached
build of the same recipe) and register it as an Image."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from cloud.models import Image
from cloud.services.images import built_image_fields
from workers.drivers.images import DebianRecipe, ImageError, build_debian_image

RECIPES = {"debian-12": DebianRecipe()}


class Command(BaseCommand):
    help = "Build a guest image (cached by recipe) and register or update its Image row."

    def add_arguments(self, parser):
        parser.add_argument("name", choices=sorted(RECIPES), help="which image to build")
        parser.add_argument(
            "--mirror", help="Debian mirror URL (default: the one the host's apt sources name)"
        )

    def handle(self, *args, name, mirror, **options):
        existing = Image.objects.filter(name=name).first()
        if existing and existing.source != Image.Source.BUILT:
            raise CommandError(
                f"image {name!r} exists and was {existing.source}; it is not replaced by a build"
            )
        try:
            built = build_debian_image(
                settings.STRATA_DATA_DIR,
                self._progress_printer(),
                recipe=RECIPES[name],
                mirror=mirror,
            )
        except ImageError as error:
            raise CommandError(f"building {name} failed: {error}") from error
        image, created = Image.objects.update_or_create(
            name=name, defaults=built_image_fields(built)
        )
        self.stdout.write(
            f"image {image.name}: {'registered' if created else 'updated'}"
            f"{' (cached build)' if built.from_cache else ''}, {image.path}, "
            f"{image.size_bytes / 2**20:.0f} MiB, sha256 {image.sha256}"
        )

    def _progress_printer(self):
        """One line rewritten in place on a terminal; a line per new percent otherwise."""
        interactive = self.stdout.isatty()
        last_percent = -1

        def show(percent: int, message: str) -> None:
            nonlocal last_percent
            if interactive:
                ending = "\n" if percent == 100 else ""
                self.stdout.write(f"\r\x1b[K[{percent:3d}%] {message[:70]}", ending=ending)
                self.stdout.flush()
            elif percent != last_percent:
                self.stdout.write(f"[{percent:3d}%] {message}")
            last_percent = percent

        return show
