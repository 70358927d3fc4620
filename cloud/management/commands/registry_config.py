"""Write the team image registry's configuration from the settings and print
its path (``scripts/services.sh registry`` starts ``docker-registry serve``
on it); ``--check`` instead says whether the running registry is Strata's."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from cloud.services.registry_tokens import registry_config
from workers.drivers.registry import RegistryDown, check_health, write_config

CONFIG_FILE = "config.yml"


class Command(BaseCommand):
    help = "Render the image registry's configuration (or --check the running registry)."

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="check the running registry")

    def handle(self, *args, check=False, **options):
        config = registry_config()
        if check:
            try:
                check_health(config.addr, config.realm, config.service)
            except RegistryDown as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"registry at {config.addr} is up")
            return
        path = write_config(config, settings.STRATA_REGISTRY_AUTH_DIR / CONFIG_FILE)
        self.stdout.write(str(path))
