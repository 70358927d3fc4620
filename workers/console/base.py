"""What every relay of a host does, whatever its sessions carry: listen on the
host's channel and on a channel of its own, send to a session's consumer
(waiting while its channel is full), and end sessions whose web side went
silent.  ``ConsoleRelay`` and ``ShellRelay`` add how a session opens, takes
input and ends."""

from __future__ import annotations

import asyncio
import logging
import time

from channels.exceptions import ChannelFull

from . import protocol

log = logging.getLogger(__name__)

CHANNEL_FULL_RETRY_SECONDS = 0.05


class Relay:
    """Serve the host channel until ``stop`` is set; sessions by id in ``sessions``,
    each with ``reply_to`` and ``last_heard``."""

    what = "relay"  # what its log lines call it

    def __init__(self, layer, host_channel: str, silence_seconds: float) -> None:
        self.layer = layer
        self.host_channel = host_channel
        self._silence_seconds = silence_seconds
        self.sessions: dict = {}
        self.channel = ""

    def prepare(self) -> None:
        """What must be in place on the relay's loop before the first session."""

    async def run(self, stop: asyncio.Event) -> None:
        self.prepare()
        self._loop = asyncio.get_running_loop()
        self.channel = await self.layer.new_channel(f"{self.what.replace(' ', '-')}.")
        listeners = [
            asyncio.create_task(self._listen(self.host_channel)),
            asyncio.create_task(self._listen(self.channel)),
            asyncio.create_task(self._reap_silent_sessions()),
        ]
        log.info("%s listening on %s", self.what, self.host_channel)
        try:
            await stop.wait()
        finally:
            for task in listeners:
                task.cancel()
            for session_id in list(self.sessions):
                await self._end(session_id, protocol.CLOSE_RELAY_UNAVAILABLE, "the relay stopped")
            # Let the cancelled listeners finish before the loop closes.
            await asyncio.gather(*listeners, return_exceptions=True)
            await asyncio.sleep(0)

    async def _listen(self, channel: str) -> None:
        while True:
            message = await self.layer.receive(channel)
            try:
                await self._dispatch(message)
            except Exception:  # one bad message must not stop every session of the host
                log.exception("%s: message %s failed", self.what, message.get("type"))

    async def _dispatch(self, message: dict) -> None:
        raise NotImplementedError

    async def _end(self, session_id: str, code: int | None, reason: str) -> None:
        raise NotImplementedError

    async def _send(self, session, message: dict) -> None:
        """Send to the session's consumer, waiting while its channel is full."""
        deadline = time.monotonic() + self._silence_seconds
        while True:
            try:
                await self.layer.send(session.reply_to, {**message, "session": session.session_id})
                return
            except ChannelFull:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(CHANNEL_FULL_RETRY_SECONDS)

    async def _reap_silent_sessions(self) -> None:
        """End sessions whose web process went away without saying so."""
        while True:
            await asyncio.sleep(max(self._silence_seconds / 4, 0.05))
            cutoff = time.monotonic() - self._silence_seconds
            for session in list(self.sessions.values()):
                if session.last_heard < cutoff:
                    await self._end(
                        session.session_id, protocol.CLOSE_IDLE, "the web side stopped answering"
                    )
