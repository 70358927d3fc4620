"""The CLI's end of `strata ssh`, `exec` and `logs`: a websocket to the portal.

Standard input goes up in frames (raw, when it is a terminal and a pty was
asked for); output comes down to stdout and stderr as it arrives; the exit
status of the remote command becomes the CLI's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import termios
import threading
import tty
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

STDIN, STDOUT, STDERR = 0, 1, 2
READ_CHUNK = 32 * 1024


class SessionRefused(Exception):
    """The server refused or ended the session; the message says why."""


def websocket_url(base: str, path: str) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/{path.lstrip('/')}"


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return 80, 24


@contextlib.contextmanager
def _raw_stdin(enabled: bool):
    if not enabled:
        yield
        return
    saved = termios.tcgetattr(sys.stdin.fileno())
    tty.setraw(sys.stdin.fileno())
    try:
        yield
    finally:
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def _send_stdin(socket) -> None:
    """Standard input to the session, then EOF; ends quietly when the session does."""
    with contextlib.suppress(ConnectionClosed, OSError):
        while data := os.read(sys.stdin.fileno(), READ_CHUNK):
            socket.send(bytes([STDIN]) + data)
        socket.send(json.dumps({"eof": True}))


def run_session(
    base_url: str, token: str, path: str, request: dict, *, stdin: bool, tty_mode: bool
) -> int:
    """Open the session, pass bytes both ways, return the remote exit status."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base_url))
    if tty_mode:
        request["cols"], request["rows"] = _terminal_size()
    with connect(
        websocket_url(base_url, path),
        additional_headers={"Authorization": f"Bearer {token}"},
        origin=origin,
        max_size=None,
        open_timeout=30,
    ) as socket:
        socket.send(json.dumps(request))
        raw = tty_mode and sys.stdin.isatty()
        if tty_mode:
            signal.signal(
                signal.SIGWINCH,
                lambda *_: socket.send(json.dumps({"resize": list(_terminal_size())})),
            )
        with _raw_stdin(raw):
            return _relay_output(socket, stdin)


def _relay_output(socket, stdin: bool) -> int:
    outputs = {STDOUT: sys.stdout.buffer, STDERR: sys.stderr.buffer}
    try:
        for frame in socket:
            if isinstance(frame, bytes):
                out = outputs.get(frame[0], sys.stdout.buffer)
                out.write(frame[1:])
                out.flush()
                continue
            event = json.loads(frame)
            if event.get("event") == "ready" and stdin:
                threading.Thread(target=_send_stdin, args=(socket,), daemon=True).start()
            elif event.get("event") == "ready":
                socket.send(json.dumps({"eof": True}))  # without -i the command reads nothing
            elif event.get("event") == "exit":
                return int(event["status"])
            elif event.get("event") == "ended":
                raise SessionRefused(event["reason"])
    except ConnectionClosed as closed:
        reason = closed.rcvd.reason if closed.rcvd else "the connection was lost"
        raise SessionRefused(reason or "the server closed the session") from closed
    raise SessionRefused("the server closed the session")
