"""Run the console relay of one host: `manage.py console_relay HOST`.

`make run` starts it beside the host's Celery worker.  It reads the host's
libvirt URI once and then serves consoles until it is stopped (SIGTERM or
Ctrl-C), ending its open sessions with a reason the browsers show.
"""

import asyncio
import signal

import libvirt
from channels.layers import get_channel_layer
from django.core.management.base import BaseCommand, CommandError

from cloud.models import Host
from workers.console.relay import ConsoleRelay


class Command(BaseCommand):
    help = "Relay the serial consoles of this host's VMs to the portal's websockets."

    def add_arguments(self, parser):
        parser.add_argument("host", help="the registered host's name")

    def handle(self, *args, host, **options):
        found = Host.objects.filter(name=host).first()
        if found is None:
            raise CommandError(f"no host named {host!r}; register it first")
        uri = found.libvirt_uri
        relay = ConsoleRelay(get_channel_layer(), found.name, lambda: libvirt.open(uri))
        asyncio.run(self._serve(relay))

    async def _serve(self, relay: ConsoleRelay) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await relay.run(stop)
