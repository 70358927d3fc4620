"""The console in headless Chromium: the VM page's xterm.js terminal against
uvicorn, the relay and a real guest's serial console."""

import json

import pytest
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.test import Client

from cloud.asgi import application
from tests.portal.test_browser import CHROMIUM, Browser

from .conftest import AsgiServer, running_vm

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (make test installs it)"),
    pytest.mark.libvirt,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
]

SCREEN = "document.querySelector('[data-console-screen] .xterm-rows').textContent"
STATUS = "document.querySelector('[data-console-status]').textContent"


def with_static_files():
    """cloud.asgi, with the static files served as the test's WSGI server does."""
    pages = ASGIStaticFilesHandler(get_asgi_application())

    async def app(scope, receive, send):
        handler = pages if scope["type"] == "http" else application
        await handler(scope, receive, send)

    return app


@pytest.fixture
def portal(settings, console_world, console_guest, relay_for):
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    relay_for(console_world["host"].name)
    vm = running_vm(
        console_world["team"], console_world["host"], "dev", "shell-1", console_guest.uuid
    )
    server = AsgiServer(with_static_files()).start()
    yield server, vm
    server.stop()


def open_vm_page(browser, server, user, vm):
    client = Client()
    client.force_login(user)
    cookie = {
        "name": settings.SESSION_COOKIE_NAME,
        "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
        "domain": "127.0.0.1",
        "path": "/",
    }
    browser.open(f"{server.origin}/t/alpha/vms/{vm.pk}/", [cookie])
    browser.wait_for("!!(window.Terminal && document.querySelector('[data-console-open]'))")
    browser.evaluate("document.querySelector('[data-console-open]').click()")


def type_line(browser, text):
    browser.send("Input.insertText", browser.session, text=text)
    browser.send(
        "Input.dispatchKeyEvent",
        browser.session,
        type="keyDown",
        key="Enter",
        code="Enter",
        windowsVirtualKeyCode=13,
        text="\r",
    )


@pytest.fixture
def browser(tmp_path):
    chromium = Browser(tmp_path / "chromium-profile")
    yield chromium
    chromium.close()


def test_type_a_command_watch_read_only_and_a_ticket_works_once(portal, console_world, browser):
    server, vm = portal
    open_vm_page(browser, server, console_world["developer"], vm)
    browser.wait_for(f"{STATUS}.startsWith('Connected: type')")
    browser.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
    for _ in range(20):  # the guest may still be booting
        type_line(browser, "echo $((6*7))x")
        try:
            browser.wait_for(f"{SCREEN}.includes('42x')", timeout=3)
            break
        except AssertionError:
            continue
    assert browser.evaluate(f"{SCREEN}.includes('42x')")

    # A ticket used twice from the page's own script: the second socket is refused.
    refused = browser.send(
        "Runtime.evaluate",
        browser.session,
        awaitPromise=True,
        returnByValue=True,
        expression="""(async () => {
          const panel = document.getElementById('console-live');
          const csrf = panel.querySelector('input[name=csrfmiddlewaretoken]').value;
          const answer = await fetch(
            panel.dataset.ticketUrl, {method: 'POST', headers: {'X-CSRFToken': csrf}});
          const body = await answer.json();
          const url = 'ws://' + location.host + body.websocket_path + '?ticket=' + body.ticket;
          const closed = (socket) => new Promise((done) => {
            const events = [];
            socket.onmessage = (m) => {
              if (typeof m.data === 'string') events.push(JSON.parse(m.data));
            };
            socket.onclose = (c) => done({code: c.code, events});
          });
          const first = closed(new WebSocket(url));
          await first;
          return await closed(new WebSocket(url));
        })()""",
    )["result"]["value"]
    assert refused["code"] == 4403, json.dumps(refused)
    assert "already used" in refused["events"][-1]["reason"]


def test_a_viewer_watches_but_cannot_type(portal, console_world, browser):
    server, vm = portal
    open_vm_page(browser, server, console_world["viewer"], vm)
    browser.wait_for(f"{STATUS}.startsWith('Connected read-only')")
    browser.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
    type_line(browser, "echo viewer-$((1+1))")
    with pytest.raises(AssertionError):
        browser.wait_for(f"{SCREEN}.includes('viewer')", timeout=3)
