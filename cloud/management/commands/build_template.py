"""`manage.py build_template --host H --image I --flavor F`: boot a guest of
that image and flavor on that host to Docker answering and save it with its
memory state; VMs of that kind on that host are then restored from it."""

from django.core.management.base import BaseCommand, CommandError

from cloud.models import Flavor, Host, Image
from workers.jobs.templates import build_template


class Command(BaseCommand):
    help = "Build a template (a booted, Docker-ready guest saved with its memory) on a host."

    def add_arguments(self, parser):
        parser.add_argument("--host", required=True, help="host name")
        parser.add_argument("--image", required=True, help="image name")
        parser.add_argument("--flavor", required=True, help="flavor name")

    def handle(self, *args, host, image, flavor, **options):
        try:
            host_row = Host.objects.get(name=host)
            image_row = Image.objects.get(name=image)
            flavor_row = Flavor.objects.get(name=flavor)
        except (Host.DoesNotExist, Image.DoesNotExist, Flavor.DoesNotExist) as error:
            raise CommandError(str(error)) from error

        def progress(percent: int, message: str) -> None:
            self.stdout.write(f"[{percent:3d}%] {message}")

        try:
            template = build_template(host_row, image_row, flavor_row, progress)
        except Exception as error:
            raise CommandError(f"building the template failed: {error}") from error
        self.stdout.write(
            f"template {template.name} ready: memory state "
            f"{template.memory_state_bytes / 2**20:.0f} MiB, "
            f"disk {template.disk_bytes / 2**20:.0f} MiB"
        )
