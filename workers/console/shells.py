"""Shell sessions of one host's relay: `strata ssh`, `exec` and `logs` over SSH.

The relay, not the web process, holds the manager's SSH key and opens the
connection to the guest on its pinned host key; the user's end only ever sees
bytes.  Each session has its own SSH connection and a thread reading its
channel into a bounded queue, so a slow reader holds the guest back (SSH's
window fills) instead of the relay's memory growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paramiko
from channels.exceptions import ChannelFull

from workers.drivers.guest.errors import SSHUnreachable
from workers.drivers.guest.ssh import Endpoint, SSHConnection

from . import protocol
from .base import Relay

log = logging.getLogger(__name__)

READ_CHUNK = 32 * 1024
OUTPUT_QUEUE = 16  # chunks waiting for the channel layer before the reader waits


@dataclass
class ShellSession:
    session_id: str
    reply_to: str
    connection: SSHConnection | None = None
    channel: paramiko.Channel | None = None
    output: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(OUTPUT_QUEUE))
    input: asyncio.Queue = field(default_factory=asyncio.Queue)
    last_heard: float = field(default_factory=time.monotonic)
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)


class ShellRelay(Relay):
    """Serve ``shell.open`` on the host's shell channel until ``stop`` is set."""

    what = "shell relay"

    def __init__(
        self,
        layer,
        host_name: str,
        private_key: Callable[[], paramiko.PKey],
        silence_seconds: float = protocol.RELAY_SILENCE_SECONDS,
    ) -> None:
        super().__init__(layer, protocol.shell_channel(host_name), silence_seconds)
        self._private_key = private_key

    async def _dispatch(self, message: dict) -> None:
        kind = message.get("type")
        session = self.sessions.get(str(message.get("session", "")))
        if kind == "shell.open":
            await self._open(message)
            return
        if session is None:
            return  # ended already; late input has nowhere to go
        session.last_heard = time.monotonic()
        if kind == "shell.input":
            session.input.put_nowait(bytes(message.get("data") or b""))
        elif kind == "shell.eof":
            session.input.put_nowait(None)
        elif kind == "shell.resize" and session.channel is not None:
            with contextlib.suppress(paramiko.SSHException):
                session.channel.resize_pty(int(message["cols"]), int(message["rows"]))
        elif kind == "shell.close":
            await self._end(session.session_id, None, "closed by the user")

    async def _open(self, message: dict) -> None:
        session = ShellSession(str(message["session"]), str(message["reply_to"]))
        self.sessions[session.session_id] = session
        try:
            await asyncio.to_thread(self._open_channel, session, message)
        except (SSHUnreachable, paramiko.SSHException, OSError, ValueError) as error:
            await self._end(session.session_id, protocol.CLOSE_CONSOLE_FAILED, str(error)[:100])
            return
        if session.session_id not in self.sessions:  # closed while connecting
            await asyncio.to_thread(self._close_ssh, session)
            return
        session.tasks = [
            asyncio.create_task(self._send_output(session)),
            asyncio.create_task(self._write_input(session)),
        ]
        threading.Thread(target=self._read, args=(session,), daemon=True).start()
        await self._send(session, {"type": "shell.ready", "relay": self.channel})

    def _open_channel(self, session: ShellSession, message: dict) -> None:
        endpoint = Endpoint(**message["endpoint"])
        session.connection = SSHConnection(endpoint, self._private_key())
        channel = session.connection.transport().open_session(
            timeout=session.connection.connect_timeout
        )
        if message.get("tty"):
            channel.get_pty(
                term="xterm-256color", width=int(message["cols"]), height=int(message["rows"])
            )
        argv = message.get("argv")
        if argv:
            channel.exec_command(shlex.join(argv))
        else:
            channel.invoke_shell()
        session.channel = channel

    def _read(self, session: ShellSession) -> None:
        """The channel's output into the session's queue, blocking while it is full."""
        channel = session.channel
        try:
            while not session.closed.is_set():
                select.select([channel], [], [], 1.0)
                got = False
                while channel.recv_ready():
                    self._put(session, (1, channel.recv(READ_CHUNK)))
                    got = True
                while channel.recv_stderr_ready():
                    self._put(session, (2, channel.recv_stderr(READ_CHUNK)))
                    got = True
                if not got and (channel.exit_status_ready() or channel.closed):
                    if channel.recv_ready() or channel.recv_stderr_ready():
                        continue
                    status = channel.recv_exit_status() if channel.exit_status_ready() else -1
                    self._put(session, ("exit", status))
                    return
        except (OSError, EOFError, paramiko.SSHException, RuntimeError) as error:
            self._put(session, ("failed", str(error)[:100]))

    def _put(self, session: ShellSession, item) -> None:
        if session.closed.is_set():
            return
        future = asyncio.run_coroutine_threadsafe(session.output.put(item), self._loop)
        while not session.closed.is_set():
            with contextlib.suppress(TimeoutError):
                future.result(timeout=1.0)
                return
        future.cancel()

    async def _send_output(self, session: ShellSession) -> None:
        while True:
            stream, data = await session.output.get()
            if stream == "exit":
                await self._send(session, {"type": "shell.exit", "status": data})
                await self._end(session.session_id, None, f"exited with status {data}")
                return
            if stream == "failed":
                await self._end(session.session_id, protocol.CLOSE_CONSOLE_FAILED, data)
                return
            await self._send(session, {"type": "shell.output", "stream": stream, "data": data})

    async def _write_input(self, session: ShellSession) -> None:
        """Input in the order it came; the guest's window bounds what is in flight."""
        while True:
            data = await session.input.get()
            try:
                if data is None:
                    await asyncio.to_thread(session.channel.shutdown_write)
                else:
                    await asyncio.to_thread(session.channel.sendall, data)
            except (OSError, EOFError, paramiko.SSHException):
                return  # the command ended; its exit is on the way

    async def _end(self, session_id: str, code: int | None, reason: str) -> None:
        """Close the session's SSH connection; tell its consumer why unless it asked."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        session.closed.set()
        for task in session.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.to_thread(self._close_ssh, session)
        log.info("shell session %s ended: %s", session_id, reason)
        if code is not None:
            with contextlib.suppress(ChannelFull):
                await self._send(session, {"type": "shell.ended", "code": code, "reason": reason})

    @staticmethod
    def _close_ssh(session: ShellSession) -> None:
        # Closing the connection ends the remote command: sshd hangs up its
        # process group (with a pty) or closes its pipes (without).
        if session.connection is not None:
            session.connection.close()
