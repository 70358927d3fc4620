"""The live parts in a real browser: headless Chromium, driven over the
DevTools protocol on a pipe (no extra packages), against a WSGI server on
loopback.  The job page must pick up progress by itself and stop polling once
the job has finished."""

import json
import os
import shutil
import subprocess
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from django.conf import settings
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections
from django.urls import reverse

from cloud.models import Job, JobStep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    # `make test` installs Chromium; only a hand-run suite outside CI may lack it.
    pytest.mark.skipif(
        CHROMIUM is None and os.environ.get("CI") != "true", reason="needs Chromium"
    ),
    pytest.mark.django_db(transaction=True),
]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def portal_server():
    """The portal on a loopback port, served from one thread (which closes its
    database connection when it stops, so the test database can be dropped)."""
    server = make_server(
        "127.0.0.1", 0, StaticFilesHandler(WSGIHandler()), WSGIServer, QuietHandler
    )

    def serve():
        try:
            server.serve_forever(poll_interval=0.1)
        finally:
            connections.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


class Browser:
    """Just enough of the DevTools protocol: commands in, answers out, one page."""

    def __init__(self, user_data_dir):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_pipe():  # Chromium reads commands on fd 3 and answers on fd 4
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--remote-debugging-pipe",
                f"--user-data-dir={user_data_dir}",
                "about:blank",
            ],
            preexec_fn=wire_pipe,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.session = None

    def send(self, method, session=None, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def _read(self):
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 65536)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url, cookies):
        self.send("Storage.setCookies", cookies=cookies)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.navigate", self.session, url=url)

    def evaluate(self, expression):
        result = self.send(
            "Runtime.evaluate", self.session, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    def wait_for(self, expression, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.2)
        raise AssertionError(f"still false after {timeout}s: {expression}")

    def close(self):
        try:
            self.send("Browser.close")
        except RuntimeError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path):
    chromium = Browser(tmp_path / "chromium-profile")
    yield chromium
    chromium.close()


def test_job_page_follows_the_job_until_it_finishes(world, client, portal_server, browser):
    job = next(iter(world["job"].children.all()))
    Job.objects.filter(pk=job.pk).update(state="running", progress=0, finished_at=None)
    JobStep.objects.filter(job=job).update(state="pending", finished_at=None)
    client.force_login(world["viewer"])
    cookie = {
        "name": settings.SESSION_COOKIE_NAME,
        "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
        "domain": "127.0.0.1",
        "path": "/",
    }
    browser.open(portal_server + reverse("portal:job", args=["alpha", job.pk]), [cookie])
    progress = "document.querySelector('#job-live progress')"
    browser.wait_for(f"window.htmx && {progress} && {progress}.value === 0")

    # A worker finishes the first step: the open page shows it without a reload.
    first = JobStep.objects.filter(job=job).order_by("index").first()
    JobStep.objects.filter(pk=first.pk).update(state="done", log="disk made\n")
    Job.objects.filter(pk=job.pk).update(progress=40)
    browser.wait_for(f"{progress}.value === 40")
    assert browser.evaluate("document.body.textContent.includes('disk made')")

    # The reader opens the finished step's log; the next refresh leaves it open.
    log = f"document.getElementById('log-{first.pk}-done')"
    browser.evaluate(f"{log}.open = true")
    Job.objects.filter(pk=job.pk).update(progress=70)
    browser.wait_for(f"{progress}.value === 70")
    assert browser.evaluate(f"{log}.open")

    Job.objects.filter(pk=job.pk).update(state="succeeded", progress=100)
    browser.wait_for(f"{progress}.value === 100")
    browser.wait_for("!document.querySelector('#job-live').hasAttribute('hx-get')")
