"""Websockets of `strata ssh`, `exec` and `logs`, in the web process.

The CLI authenticates with its API token in the handshake (``Authorization:
Bearer``) and sends the request as its first text frame (JSON).  Frames from
the client: ``\\x00`` + stdin bytes, or text ``{"resize": [cols, rows]}`` /
``{"eof": true}``.  Frames to it: ``\\x01``/``\\x02`` + stdout/stderr bytes,
and text events ``ready``, ``exit {status}`` and ``ended {code, reason}``.
Like the console, this process only passes bytes: the relay on the target's
host holds the SSH connection.
"""

import asyncio
import json
import uuid

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncWebsocketConsumer
from django.utils import timezone

from cloud.services import shells
from cloud.services.errors import Forbidden, NotFound, ValidationError
from tenants.models import ApiToken
from workers.console import protocol

from .consumer import RELAY_ANSWER_SECONDS

STDIN, STDOUT, STDERR = 0, 1, 2


def _bearer_token(scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if kind.lower() in ("bearer", "token") else ""
    return ""


@database_sync_to_async
def _token_user(key: str):
    token = ApiToken.authenticate(key) if key else None
    if token is None:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user


def _refusal_text(error: ValidationError) -> str:
    detail = error.message_dict if hasattr(error, "error_dict") else {"request": error.messages}
    return "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in detail.items())


class ShellConsumer(AsyncWebsocketConsumer):
    """One request, one plan, one or more relay sessions (``logs`` has one per replica)."""

    kind = ""  # "ssh", "exec" or "logs": set by each subclass
    plan: shells.ShellPlan | None = None
    user = None
    end_reason = "the client went away"

    async def connect(self):
        await self.accept()
        self.sessions: dict[str, shells.ShellTarget] = {}
        self.relays: dict[str, str] = {}  # session -> relay channel, once ready
        self.pending_lines: dict[str, bytes] = {}
        self.exits: dict[str, int] = {}
        self.tasks: list[asyncio.Task] = []
        self.user = await _token_user(_bearer_token(self.scope))
        if self.user is None:
            await self.refuse(protocol.CLOSE_NOT_LOGGED_IN, "an API token is needed (Bearer)")

    def make_plan(self, request) -> shells.ShellPlan:
        raise NotImplementedError

    async def refuse(self, code: int, reason: str) -> None:
        self.end_reason = reason
        await self.send(text_data=json.dumps({"event": "ended", "code": code, "reason": reason}))
        await self.close(code=code, reason=reason.encode()[:123].decode(errors="ignore"))

    async def receive(self, text_data=None, bytes_data=None):
        if self.user is None:
            return
        if self.plan is None:
            await self.start(text_data)
            return
        if bytes_data is not None:
            if bytes_data[:1] == bytes([STDIN]) and self.kind != "logs":
                await self.to_relays("shell.input", data=bytes_data[1:])
            return
        try:
            event = json.loads(text_data or "")
        except ValueError:
            return
        if isinstance(event, dict) and event.get("eof"):
            await self.to_relays("shell.eof")
        elif isinstance(event, dict) and isinstance(event.get("resize"), list):
            cols, rows = (event["resize"] + [0, 0])[:2]
            if all(isinstance(n, int) and 1 <= n <= 1000 for n in (cols, rows)):
                await self.to_relays("shell.resize", cols=cols, rows=rows)

    async def start(self, text_data) -> None:
        try:
            request = json.loads(text_data or "")
            self.plan = await database_sync_to_async(self.make_plan)(request)
        except ValueError:
            await self.refuse(protocol.CLOSE_BAD_REQUEST, "request: the first frame must be JSON")
            return
        except ValidationError as error:
            await self.refuse(protocol.CLOSE_BAD_REQUEST, _refusal_text(error))
            return
        except Forbidden as error:
            await self.refuse(protocol.CLOSE_FORBIDDEN, str(error))
            return
        except NotFound as error:
            await self.refuse(protocol.CLOSE_NOT_FOUND, str(error))
            return
        await database_sync_to_async(self.plan.audit)("start", self.user)
        base = uuid.uuid4().hex
        for index, target in enumerate(self.plan.targets):
            session = f"{base}.{index}"
            self.sessions[session] = target
            self.pending_lines[session] = b""
            await self.channel_layer.send(
                protocol.shell_channel(target.host_name),
                {
                    "type": "shell.open",
                    "session": session,
                    "reply_to": self.channel_name,
                    "endpoint": target.endpoint,
                    "argv": target.argv,
                    "tty": self.plan.tty,
                    "cols": self.plan.cols,
                    "rows": self.plan.rows,
                },
            )
        self.tasks.append(asyncio.create_task(self.expect_relays()))

    async def expect_relays(self) -> None:
        await asyncio.sleep(RELAY_ANSWER_SECONDS)
        if len(self.relays) + len(self.exits) < len(self.sessions):
            await self.refuse(
                protocol.CLOSE_RELAY_UNAVAILABLE, "the shell relay of the VM's host does not answer"
            )
            return
        while self.relays:
            await asyncio.sleep(protocol.KEEPALIVE_SECONDS)
            await self.to_relays("shell.keepalive")

    async def to_relays(self, kind: str, **fields) -> None:
        try:
            for session, relay in list(self.relays.items()):
                for start in range(0, max(len(fields.get("data", b"")), 1), protocol.INPUT_PIECE):
                    message = dict(fields)
                    if "data" in fields:
                        message["data"] = fields["data"][start : start + protocol.INPUT_PIECE]
                    await self.channel_layer.send(
                        relay, {"type": kind, "session": session, **message}
                    )
        except ChannelFull:
            # The guest takes input slower than it comes: end rather than grow.
            await self.refuse(
                protocol.CLOSE_INPUT_OVERFLOW, "input arrives faster than the command takes it"
            )

    async def shell_ready(self, message):
        session = message.get("session")
        if session not in self.sessions:
            return
        self.relays[session] = message["relay"]
        if len(self.relays) == len(self.sessions):
            await self.send(text_data=json.dumps({"event": "ready"}))

    async def shell_output(self, message):
        session, data = message.get("session"), bytes(message["data"])
        if session not in self.sessions:
            return
        if self.kind != "logs":
            await self.send(bytes_data=bytes([message["stream"]]) + data)
            return
        # Whole lines only, so a secret split across two chunks is still masked.
        *lines, self.pending_lines[session] = (self.pending_lines[session] + data).split(b"\n")
        for line in lines:
            await self.send_log_line(session, message["stream"], line)

    async def send_log_line(self, session: str, stream: int, line: bytes) -> None:
        text = self.plan.mask(line.decode(errors="replace"))
        prefix = f"[{self.sessions[session].label}] " if len(self.sessions) > 1 else ""
        await self.send(bytes_data=bytes([stream]) + f"{prefix}{text}\n".encode())

    async def shell_exit(self, message):
        session = message.get("session")
        if session not in self.sessions:
            return
        self.relays.pop(session, None)
        self.exits[session] = int(message["status"])
        if self.pending_lines.get(session):
            await self.send_log_line(session, STDOUT, self.pending_lines.pop(session))
        if len(self.exits) == len(self.sessions):
            status = max(self.exits.values())
            self.end_reason = f"exited with status {status}"
            await self.send(text_data=json.dumps({"event": "exit", "status": status}))
            await self.close(code=1000)

    async def shell_ended(self, message):
        if message.get("session") not in self.sessions:
            return
        self.relays.pop(message["session"], None)
        await self.refuse(int(message["code"]), str(message["reason"]))

    async def disconnect(self, code):
        for task in getattr(self, "tasks", []):
            task.cancel()
        if self.plan is None:
            return
        for session, target in self.sessions.items():
            if session in self.exits:
                continue
            # A relay still connecting has no session channel yet: its host's is in order.
            channel = self.relays.get(session) or protocol.shell_channel(target.host_name)
            await self.channel_layer.send(channel, {"type": "shell.close", "session": session})
        await database_sync_to_async(self.plan.audit)("end", self.user, reason=self.end_reason)


class SshConsumer(ShellConsumer):
    kind = "ssh"

    def make_plan(self, request):
        kwargs = self.scope["url_route"]["kwargs"]
        return shells.plan_ssh(self.user, kwargs["team"], kwargs["vm_id"], request)


class ExecConsumer(ShellConsumer):
    kind = "exec"

    def make_plan(self, request):
        k = self.scope["url_route"]["kwargs"]
        return shells.plan_exec(self.user, k["team"], k["env_id"], k["service_name"], request)


class LogsConsumer(ShellConsumer):
    kind = "logs"

    def make_plan(self, request):
        k = self.scope["url_route"]["kwargs"]
        return shells.plan_logs(self.user, k["team"], k["env_id"], k["service_name"], request)
