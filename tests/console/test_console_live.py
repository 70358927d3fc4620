"""The console end to end: the ASGI application's websocket (session login,
ticket), the Redis channel layer, the host's relay and a real guest's pty
serial console under qemu:///system, whose shell answers what is typed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cloud.interfaces.console import consumer as consumer_module
from cloud.services.console import issue_ticket
from tenants.models import AuditEvent
from workers.console import protocol

from .conftest import running_vm

pytestmark = [pytest.mark.libvirt, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BOOT_SECONDS = 60


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Session:
    """One browser-like websocket: terminal bytes, events, and how it closed."""

    def __init__(self, socket, key: str) -> None:
        self.socket = socket
        self.ticket_key = key
        self.output = bytearray()
        self.events: list[dict] = []
        self.close_code: int | None = None

    async def pump(self, until, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not until(self) and self.close_code is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                message = await asyncio.wait_for(self.socket.recv(), left)
            except TimeoutError:
                return until(self)
            except ConnectionClosed as closed:
                self.close_code = closed.rcvd.code if closed.rcvd else None
                break
            if isinstance(message, bytes):
                self.output += message
            else:
                self.events.append(json.loads(message))
        return until(self)

    async def ready(self) -> dict:
        assert await self.pump(lambda s: s.events, 15), self.events
        return self.events[0]

    async def type_until(self, line: bytes, expected: bytes) -> bool:
        """Type ``line`` every few seconds (the guest may still boot) until it answers."""
        deadline = time.monotonic() + BOOT_SECONDS
        while time.monotonic() < deadline:
            await self.socket.send(line)
            if await self.pump(lambda s: expected in s.output, 3):
                return True
        return False

    async def close(self) -> None:
        await self.socket.close()


async def open_session(server, user, team, vm, *, key=None, origin=None) -> Session:
    origin = origin or server.origin
    cookie = await sync_to_async(session_cookie)(user)
    key = key or (await sync_to_async(issue_ticket)(user, team, vm.pk, origin)).key
    url = f"ws{server.origin[4:]}/ws/vms/{vm.pk}/console/?ticket={key}"
    socket = await connect(url, origin=origin, additional_headers={"Cookie": f"sessionid={cookie}"})
    return Session(socket, key)


async def wait_for_session_end(count: int) -> None:
    """The server records a session's end just after the socket closed."""
    for _ in range(100):
        ended = await sync_to_async(AuditEvent.objects.filter(action="console.end").count)()
        if ended >= count:
            return
        await asyncio.sleep(0.1)


@pytest.fixture
def guest_vm(console_world, console_guest, relay_for):
    relay_for(console_world["host"].name)
    return running_vm(
        console_world["team"], console_world["host"], "dev", "shell-1", console_guest.uuid
    )


def test_developer_types_viewer_watches_and_a_ticket_works_once(
    console_world, guest_vm, asgi_server
):
    team, developer, viewer = (console_world[k] for k in ("team", "developer", "viewer"))

    async def scenario():
        typing = await open_session(asgi_server, developer, team, guest_vm)
        assert await typing.ready() == {"event": "ready", "can_type": True}
        assert await typing.type_until(b"echo $((6*7))x\n", b"42x")
        # A second session while the first is open: the console is busy.
        second = await open_session(asgi_server, developer, team, guest_vm)
        await second.pump(lambda s: False, 10)
        assert second.close_code == protocol.CLOSE_BUSY
        await typing.close()
        await wait_for_session_end(2)

        watching = await open_session(asgi_server, viewer, team, guest_vm)
        assert await watching.ready() == {"event": "ready", "can_type": False}
        await watching.socket.send(b"echo viewer-$((1+1))\n")
        await watching.pump(lambda s: False, 3)
        assert b"viewer" not in watching.output
        await watching.close()
        await wait_for_session_end(3)

        reused = await open_session(asgi_server, developer, team, guest_vm, key=typing.ticket_key)
        await reused.pump(lambda s: False, 5)
        assert reused.close_code == protocol.CLOSE_TICKET_REFUSED
        assert "already used" in reused.events[0]["reason"]

    asyncio.run(scenario())
    ends = AuditEvent.objects.filter(action="console.end").order_by("id")
    assert [e.actor for e in ends] == [developer, developer, viewer]
    assert ends[0].details["reason"] == "another console session is open on this VM"
    assert ends[1].details["reason"] == "the tab was closed"


def test_a_vm_that_stops_ends_the_session(console_world, guest_vm, console_guest, asgi_server):
    async def scenario():
        session = await open_session(
            asgi_server, console_world["developer"], console_world["team"], guest_vm
        )
        await session.ready()
        assert await session.type_until(b"echo up-$((1+2))\n", b"up-3")
        await asyncio.to_thread(console_guest.destroy)
        await session.pump(lambda s: False, 15)
        await wait_for_session_end(1)
        return session

    session = asyncio.run(scenario())
    assert session.close_code == protocol.CLOSE_VM_STOPPED
    assert "VM stopped" in session.events[-1]["reason"]
    end = AuditEvent.objects.get(action="console.end")
    assert "VM stopped" in end.details["reason"]


def test_huge_binary_input_does_not_break_the_relay(console_world, guest_vm, asgi_server):
    async def scenario():
        session = await open_session(
            asgi_server, console_world["developer"], console_world["team"], guest_vm
        )
        await session.ready()
        assert await session.type_until(b"echo ok-$((2+2))\n", b"ok-4")
        # 128 KiB of every byte value but ^C, ^D, ^Z and ^\, in one frame, read by
        # `head` with the terminal raw (no line discipline) and no echo; then the
        # shell answers again.
        junk = bytes(b for b in range(256) if b not in b"\x03\x04\x1a\x1c") * 520
        command = f"stty raw -echo; echo go-$((2+3)); head -c {len(junk)} >/dev/null; stty sane"
        await session.socket.send(command.encode() + b"; echo still-$((3+4))\n")
        assert await session.pump(lambda s: b"go-5" in s.output, 10)
        await session.socket.send(junk)
        assert await session.pump(lambda s: b"still-7" in s.output, 90), session.output[-300:]
        await session.close()

    asyncio.run(scenario())


def test_a_paste_a_paused_guest_cannot_take_ends_that_session_only(
    console_world, guest_vm, console_guest, asgi_server
):
    team, developer = console_world["team"], console_world["developer"]

    async def scenario():
        session = await open_session(asgi_server, developer, team, guest_vm)
        await session.ready()
        assert await session.type_until(b"echo ok-$((2+2))\n", b"ok-4")
        await asyncio.to_thread(console_guest.suspend)
        try:
            for _ in range(32):  # 16 MiB in 512 KiB frames
                await session.socket.send(b"y" * (512 * 1024))
        except ConnectionClosed:
            pass
        await session.pump(lambda s: False, 30)
        await asyncio.to_thread(console_guest.resume)
        assert session.close_code is not None
        await wait_for_session_end(1)
        again = await open_session(asgi_server, developer, team, guest_vm)
        await again.ready()
        assert await again.type_until(b"\x03echo back-$((4+4))\n", b"back-8")
        await again.close()
        return session

    session = asyncio.run(scenario())
    assert session.close_code == protocol.CLOSE_INPUT_OVERFLOW
    assert "faster than the console takes it" in session.events[-1]["reason"]


def test_an_idle_session_ends(console_world, guest_vm, asgi_server, settings):
    settings.STRATA_CONSOLE_IDLE_SECONDS = 2

    async def scenario():
        session = await open_session(
            asgi_server, console_world["developer"], console_world["team"], guest_vm
        )
        await session.ready()
        await session.pump(lambda s: False, 20)
        await wait_for_session_end(1)
        return session

    session = asyncio.run(scenario())
    assert session.close_code == protocol.CLOSE_IDLE
    assert AuditEvent.objects.get(action="console.end").details["reason"] == (
        "the console was idle too long"
    )


def test_a_relay_ends_sessions_whose_web_side_went_silent(console_world, console_guest, relay_for):
    """A web process that died sends no keepalive: the relay frees the console."""
    relay = relay_for(console_world["host"].name, silence_seconds=1)
    layer = RedisChannelLayer(hosts=settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"])

    async def scenario():
        reply_to = await layer.new_channel("console-test.")
        await layer.send(
            protocol.host_channel(console_world["host"].name),
            {
                "type": "console.open",
                "session": "77",
                "domain": console_guest.domain_name,
                "reply_to": reply_to,
            },
        )
        kinds = []
        while "console.ended" not in kinds:
            message = await asyncio.wait_for(layer.receive(reply_to), 15)
            kinds.append(message["type"])
        return kinds, message

    kinds, ended = asyncio.run(scenario())
    assert kinds[0] == "console.ready"
    assert ended["code"] == protocol.CLOSE_IDLE
    assert relay.relay.sessions == {}


def test_refusals_before_any_console_opens(console_world, monkeypatch, asgi_server):
    team, developer = console_world["team"], console_world["developer"]
    monkeypatch.setattr(consumer_module, "RELAY_ANSWER_SECONDS", 1)

    async def close_code(**options) -> int | None:
        session = await open_session(asgi_server, developer, team, options.pop("vm"), **options)
        await session.pump(lambda s: False, 5)
        return session.close_code

    async def scenario():
        vm = console_world["dev_vm"]  # on a host with no relay running
        assert await close_code(vm=vm) == protocol.CLOSE_RELAY_UNAVAILABLE
        assert await close_code(vm=vm, key="ct_made_up") == protocol.CLOSE_TICKET_REFUSED
        # This VM's ticket on another team's VM.
        other_vm = console_world["other_vm"]
        issued = await sync_to_async(issue_ticket)(developer, team, vm.pk, asgi_server.origin)
        key = issued.key
        assert await close_code(vm=other_vm, key=key) == protocol.CLOSE_NOT_FOUND
        anonymous = await connect(
            f"ws{asgi_server.origin[4:]}/ws/vms/{vm.pk}/console/?ticket=x",
            origin=asgi_server.origin,
        )
        session = Session(anonymous, "x")
        await session.pump(lambda s: False, 5)
        assert session.close_code == protocol.CLOSE_NOT_LOGGED_IN
        # A page of another origin does not get as far as the consumer.
        with pytest.raises(InvalidStatus):
            await open_session(asgi_server, developer, team, vm, origin="http://evil.example")

    asyncio.run(scenario())
