"""The console relay of one host: serial consoles <-> the channel layer.

It runs as its own long-lived process beside the host's Celery worker, not as
a Celery task: a console session lasts as long as a person keeps the tab
open, and a task holding it would take one of the host's job slots per open
console.  One asyncio loop serves every session; libvirt's event thread reads
and writes the streams, so nothing here blocks on a guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import libvirt
from channels.exceptions import ChannelFull

from workers.drivers.hypervisor import HypervisorError, InvalidState, NotFound
from workers.drivers.hypervisor.console import (
    ConsoleBusy,
    ConsoleStream,
    InputOverflow,
    ensure_event_loop,
)

from . import protocol
from .base import Relay

log = logging.getLogger(__name__)

# Output chunks waiting for the channel layer; past HIGH the relay stops reading
# the guest (the pty holds the rest) until the queue is down to LOW.
OUTPUT_HIGH_WATER = 16
OUTPUT_LOW_WATER = 4


@dataclass
class RelaySession:
    session_id: str
    reply_to: str
    stream: ConsoleStream | None = None
    connection: libvirt.virConnect | None = None
    output: asyncio.Queue = field(default_factory=asyncio.Queue)
    last_heard: float = field(default_factory=time.monotonic)
    sender: asyncio.Task | None = None


class ConsoleRelay(Relay):
    """Serve ``console.open`` on the host's channel until ``stop`` is set."""

    what = "console relay"

    def __init__(
        self,
        layer,
        host_name: str,
        open_connection: Callable[[], libvirt.virConnect],
        silence_seconds: float = protocol.RELAY_SILENCE_SECONDS,
    ) -> None:
        super().__init__(layer, protocol.host_channel(host_name), silence_seconds)
        self._open_connection = open_connection
        self._endings: set[asyncio.Task] = set()

    def prepare(self) -> None:
        ensure_event_loop()

    async def _dispatch(self, message: dict) -> None:
        kind = message.get("type")
        session = self.sessions.get(str(message.get("session", "")))
        if kind == "console.open":
            await self._open(message)
        elif session is None:
            return  # a session that already ended; its late input has nowhere to go
        elif kind == "console.input":
            session.last_heard = time.monotonic()
            self._write(session, bytes(message.get("data") or b""))
        elif kind == "console.keepalive":
            session.last_heard = time.monotonic()
        elif kind == "console.close":
            await self._end(session.session_id, None, "closed by the user")

    async def _open(self, message: dict) -> None:
        session = RelaySession(str(message["session"]), str(message["reply_to"]))
        self.sessions[session.session_id] = session
        try:
            await asyncio.to_thread(self._open_stream, session, str(message["domain"]))
        except (NotFound, InvalidState):
            await self._end(session.session_id, protocol.CLOSE_VM_STOPPED, "the VM is not running")
            return
        except ConsoleBusy as error:
            await self._end(session.session_id, protocol.CLOSE_BUSY, str(error))
            return
        except (HypervisorError, libvirt.libvirtError) as error:
            await self._end(session.session_id, protocol.CLOSE_CONSOLE_FAILED, str(error)[:100])
            return
        if session.session_id not in self.sessions:  # closed while opening
            await asyncio.to_thread(self._close_libvirt, session)
            return
        session.sender = asyncio.create_task(self._send_output(session))
        await self._send(session, {"type": "console.ready", "relay": self.channel})

    def _open_stream(self, session: RelaySession, domain: str) -> None:
        """Open the console on a connection of the session's own: libvirtd drops a
        connection whose stream it buffers too much for (a paused guest under a
        huge paste), and that must end this session only."""
        session_id = session.session_id
        session.connection = self._open_connection()
        session.stream = ConsoleStream(
            session.connection,
            domain,
            on_output=lambda data: self._loop.call_soon_threadsafe(
                self._output_arrived, session_id, data
            ),
            on_closed=lambda reason: asyncio.run_coroutine_threadsafe(
                self._end(session_id, protocol.CLOSE_VM_STOPPED, reason), self._loop
            ),
        )

    def _write(self, session: RelaySession, data: bytes) -> None:
        try:
            session.stream.write(data)
        except InputOverflow as error:
            ending = asyncio.create_task(
                self._end(session.session_id, protocol.CLOSE_INPUT_OVERFLOW, str(error))
            )
            self._endings.add(ending)  # a task nobody references may be collected
            ending.add_done_callback(self._endings.discard)

    def _output_arrived(self, session_id: str, data: bytes) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return
        session.output.put_nowait(data)
        if session.output.qsize() >= OUTPUT_HIGH_WATER:
            session.stream.set_reading(False)

    async def _send_output(self, session: RelaySession) -> None:
        while True:
            data = await session.output.get()
            await self._send(session, {"type": "console.output", "data": data})
            if session.output.qsize() <= OUTPUT_LOW_WATER:
                session.stream.set_reading(True)

    async def _end(self, session_id: str, code: int | None, reason: str) -> None:
        """Close the session's stream; tell its consumer unless it asked for the end."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        # In a thread: closing a connection with input still queued for a
        # guest waits on libvirtd, and every other console shares this loop.
        await asyncio.to_thread(self._close_libvirt, session)
        if session.sender is not None:
            session.sender.cancel()
        log.info("console session %s ended: %s", session_id, reason)
        if code is not None:
            try:
                while not session.output.empty():  # the guest's last words before it stopped
                    data = session.output.get_nowait()
                    await self._send(session, {"type": "console.output", "data": data})
                await self._send(session, {"type": "console.ended", "code": code, "reason": reason})
            except ChannelFull:
                pass  # the consumer stopped reading; its keepalive check ends it too

    @staticmethod
    def _close_libvirt(session: RelaySession) -> None:
        if session.stream is not None:
            session.stream.close()
        if session.connection is not None:
            with contextlib.suppress(libvirt.libvirtError):  # already dropped by libvirtd
                session.connection.close()
