"""The websocket of a VM's serial console, in the web process.

It never touches libvirt: it redeems the page's ticket, asks the relay on the
VM's host (over the channel layer) to open the console, and then passes bytes
both ways.  Binary frames are terminal bytes; text frames from the server are
JSON events (``ready``, ``ended``) the terminal shows.  Every refusal is an
accepted socket closed with a 44xx code and a reason, so the browser can say
why (a socket refused during the handshake shows only 1006).
"""

import asyncio
import json
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from cloud.services import console as console_service
from cloud.services.errors import NotFound
from workers.console import protocol

# How long the relay on the VM's host may take to open the console.
RELAY_ANSWER_SECONDS = 10


def _origin(scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return value.decode("latin-1")
    return ""


class ConsoleConsumer(AsyncWebsocketConsumer):
    ticket = None
    relay_channel = None
    relay_answered = False
    end_reason = "the tab was closed"

    async def connect(self):
        await self.accept()
        self.tasks: list[asyncio.Task] = []
        self.last_activity = time.monotonic()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(protocol.CLOSE_NOT_LOGGED_IN, "log in first")
            return
        key = parse_qs(self.scope.get("query_string", b"").decode()).get("ticket", [""])[0]
        vm_id = self.scope["url_route"]["kwargs"]["vm_id"]
        try:
            self.ticket = await database_sync_to_async(console_service.redeem_ticket)(
                key, user, vm_id, _origin(self.scope)
            )
        except console_service.TicketRefused as refusal:
            await self.refuse(protocol.CLOSE_TICKET_REFUSED, str(refusal))
            return
        except NotFound:
            await self.refuse(protocol.CLOSE_NOT_FOUND, "no such VM")
            return
        await self.channel_layer.send(
            protocol.host_channel(self.ticket.vm.host.name),
            {
                "type": "console.open",
                "session": str(self.ticket.pk),
                "domain": self.ticket.vm.domain_name,
                "reply_to": self.channel_name,
            },
        )
        self.tasks.append(asyncio.create_task(self.expect_relay()))

    async def refuse(self, code: int, reason: str) -> None:
        self.end_reason = reason
        await self.send(text_data=json.dumps({"event": "ended", "code": code, "reason": reason}))
        # A close reason is at most 123 bytes on the wire.
        await self.close(code=code, reason=reason.encode()[:123].decode(errors="ignore"))

    async def expect_relay(self) -> None:
        await asyncio.sleep(RELAY_ANSWER_SECONDS)
        if self.relay_channel is None:
            await self.refuse(
                protocol.CLOSE_RELAY_UNAVAILABLE,
                "the console relay of the VM's host does not answer",
            )

    async def keep_alive(self) -> None:
        """Tell the relay we are here; end the session once it has been idle too long."""
        while True:
            idle_limit = settings.STRATA_CONSOLE_IDLE_SECONDS
            await asyncio.sleep(min(protocol.KEEPALIVE_SECONDS, idle_limit))
            if time.monotonic() - self.last_activity > idle_limit:
                await self.to_relay("console.close")
                self.relay_channel = None
                self.relay_answered = True
                await self.refuse(protocol.CLOSE_IDLE, "the console was idle too long")
                return
            await self.to_relay("console.keepalive")

    async def to_relay(self, kind: str, **fields) -> None:
        if self.relay_channel is not None:
            await self.channel_layer.send(
                self.relay_channel, {"type": kind, "session": str(self.ticket.pk), **fields}
            )

    async def receive(self, text_data=None, bytes_data=None):
        if self.relay_channel is None or not self.ticket.can_type:
            return  # nothing to type into yet, or a read-only session
        data = bytes_data if bytes_data is not None else (text_data or "").encode()
        self.last_activity = time.monotonic()
        try:
            for start in range(0, len(data), protocol.INPUT_PIECE):
                piece = data[start : start + protocol.INPUT_PIECE]
                await self.to_relay("console.input", data=piece)
        except ChannelFull:
            # The relay is that far behind (a paused guest under a huge paste):
            # end the session rather than drop keystrokes or grow without bound.
            # The close goes by the host's channel: the relay's own one is full.
            await self.channel_layer.send(
                protocol.host_channel(self.ticket.vm.host.name),
                {"type": "console.close", "session": str(self.ticket.pk)},
            )
            self.relay_channel = None
            self.relay_answered = True
            await self.refuse(
                protocol.CLOSE_INPUT_OVERFLOW, "input arrives faster than the console takes it"
            )

    async def console_ready(self, message):
        if self.ticket is None or message.get("session") != str(self.ticket.pk):
            return
        self.relay_channel = message["relay"]
        self.relay_answered = True
        self.tasks.append(asyncio.create_task(self.keep_alive()))
        await self.send(text_data=json.dumps({"event": "ready", "can_type": self.ticket.can_type}))

    async def console_output(self, message):
        self.last_activity = time.monotonic()
        await self.send(bytes_data=message["data"])

    async def console_ended(self, message):
        self.relay_answered = True
        self.relay_channel = None  # the relay has closed its side already
        await self.refuse(int(message["code"]), str(message["reason"]))

    async def disconnect(self, code):
        for task in getattr(self, "tasks", []):
            if task is not asyncio.current_task():
                task.cancel()
        if self.ticket is None:
            return
        if self.relay_channel is None and not self.relay_answered:
            # The relay may still be opening it: its host channel is in order.
            await self.channel_layer.send(
                protocol.host_channel(self.ticket.vm.host.name),
                {"type": "console.close", "session": str(self.ticket.pk)},
            )
        await self.to_relay("console.close")
        await database_sync_to_async(console_service.end_session)(self.ticket, self.end_reason)
