"""Garbage-collect the team image registry.

Without options: delete from the registry every image no tag names, no
release pins and older than STRATA_REGISTRY_RETENTION_DAYS (the registry
must be running).  With ``--blobs``: then run the registry's own
``garbage-collect``, which frees the blobs no manifest references; the
registry must be stopped for it (a push during its mark phase could lose
blobs), so this refuses while the registry answers:

    manage.py registry_gc                 # registry running: manifests
    (stop the registry)
    manage.py registry_gc --blobs         # registry stopped: blobs
    scripts/services.sh registry          # start it again
"""

import subprocess

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from cloud.services.registry_gc import collect_unused_images
from cloud.services.registry_tokens import registry_config
from workers.drivers.registry import RegistryDown, check_health, write_config

from .registry_config import CONFIG_FILE

REGISTRY_BINARY = "docker-registry"


class Command(BaseCommand):
    help = "Delete unused old images from the registry, or (--blobs) free their blobs."

    def add_arguments(self, parser):
        parser.add_argument(
            "--blobs",
            action="store_true",
            help="run the registry's garbage-collect (only while the registry is stopped)",
        )

    def handle(self, *args, blobs=False, **options):
        if blobs:
            self.free_blobs()
            return
        try:
            collected = collect_unused_images()
        except RegistryDown as exc:
            raise CommandError(f"the registry did not answer: {exc}") from exc
        for image in collected:
            self.stdout.write(f"deleted {image.repository}@{image.digest}")
        self.stdout.write(f"{len(collected)} images deleted; stop the registry and run --blobs")

    def free_blobs(self):
        config = registry_config()
        try:
            check_health(config.addr, config.realm, config.service)
        except RegistryDown:
            pass  # stopped, as garbage-collect needs
        else:
            raise CommandError(
                f"the registry at {config.addr} is running: stop it first "
                "(garbage-collect must not race a push)"
            )
        path = write_config(config, settings.STRATA_REGISTRY_AUTH_DIR / CONFIG_FILE)
        done = subprocess.run(
            [REGISTRY_BINARY, "garbage-collect", str(path)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if done.returncode != 0:
            raise CommandError(f"{REGISTRY_BINARY} garbage-collect failed: {done.stderr[-2000:]}")
        self.stdout.write(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "done")
