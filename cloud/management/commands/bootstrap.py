"""First-run set-up used by `make run`: admin user, first team, default
flavors and this machine as a hypervisor host.  Safe to run again: it reuses
what exists and never prints a password it did not just create."""

import secrets
import socket
import sys

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from cloud.models import Flavor
from cloud.services.hosts import HostUnavailable, register_host
from tenants.services import ensure_team

DEFAULT_FLAVORS = [
    ("small", 1, 1024, 10),
    ("medium", 2, 2048, 20),
    ("large", 4, 4096, 40),
]


def local_host_name() -> str:
    return settings.STRATA_HOST_NAME or slugify(socket.gethostname())[:40] or "local"


class Command(BaseCommand):
    help = "Create the first admin, team, flavors and register this machine as a host."

    def add_arguments(self, parser):
        parser.add_argument(
            "--print-queue",
            action="store_true",
            help="print only this host's Celery queue on stdout (messages go to stderr)",
        )

    def handle(self, *args, print_queue=False, **options):
        say = (lambda msg: print(msg, file=sys.stderr)) if print_queue else self.stdout.write
        admin = self._ensure_admin(say)
        team, created = ensure_team(settings.STRATA_TEAM, admin)
        say(f"team {team.name}: {'created' if created else 'exists'}; {admin.username} is admin")
        for name, vcpus, memory_mb, disk_gb in DEFAULT_FLAVORS:
            Flavor.objects.get_or_create(
                name=name, defaults={"vcpus": vcpus, "memory_mb": memory_mb, "disk_gb": disk_gb}
            )
        try:
            host, created = register_host(local_host_name(), settings.STRATA_LIBVIRT_URI)
        except HostUnavailable as exc:
            raise CommandError(f"cannot register this machine as a host: {exc}") from exc
        say(
            f"host {host.name} ({host.libvirt_uri}, {host.virt_type}: "
            f"{host.virt_type_reason or 'not detected'}"
            f"{', set by an operator' if host.virt_type_override else ''}): "
            f"{'registered' if created else 'updated'}, {host.cpus} CPUs, "
            f"{host.memory_mb} MiB, queue {host.queue}"
        )
        if print_queue:
            self.stdout.write(host.queue)

    def _ensure_admin(self, say):
        users = get_user_model()
        username = settings.STRATA_ADMIN_USER
        user = users.objects.filter(username=username).first()
        if user is not None:
            say(f"admin user {username}: exists (password unchanged)")
            return user
        password = settings.STRATA_ADMIN_PASSWORD or secrets.token_urlsafe(12)
        user = users.objects.create_superuser(username=username, email="", password=password)
        if settings.STRATA_ADMIN_PASSWORD:
            say(f"admin user {username}: created with STRATA_ADMIN_PASSWORD")
        else:
            say(f"admin user {username}: created, password {password} (shown once; change it)")
        return user
