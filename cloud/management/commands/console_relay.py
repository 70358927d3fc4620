"""Run the relay of one host: `manage.py console_relay HOST`.

`make run` starts it beside the host's Celery worker.  It serves the serial
consoles of the host's VMs (libvirt) and the shell sessions of `strata ssh`,
`exec` and `logs` (SSH with the manager's key) until it is stopped (SIGTERM
or Ctrl-C), ending its open sessions with a reason the clients show.
"""

import asyncio
import signal

import libvirt
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.core.management.base import BaseCommand, CommandError

from cloud.models import Host
from workers.console.relay import ConsoleRelay
from workers.console.shells import ShellRelay
from workers.drivers.guest.ssh import load_private_key
from workers.jobs.keys import manager_keypair


class Command(BaseCommand):
    help = "Relay this host's serial consoles and shell sessions to the portal's websockets."

    def add_arguments(self, parser):
        parser.add_argument("host", help="the registered host's name")

    def handle(self, *args, host, **options):
        found = Host.objects.filter(name=host).first()
        if found is None:
            raise CommandError(f"no host named {host!r}; register it first")
        uri = found.libvirt_uri
        key = load_private_key(manager_keypair().private_openssh)
        # A layer each: a layer serves one process-local channel prefix, and
        # each relay receives on a channel of its own beside its host channel.
        consoles = ConsoleRelay(
            channel_layers.make_backend(DEFAULT_CHANNEL_LAYER),
            found.name,
            lambda: libvirt.open(uri),
        )
        shells = ShellRelay(
            channel_layers.make_backend(DEFAULT_CHANNEL_LAYER), found.name, lambda: key
        )
        asyncio.run(self._serve(consoles, shells))

    async def _serve(self, *relays) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await asyncio.gather(*(relay.run(stop) for relay in relays))
