"""Health checks written as one short string, for forms and the command line.

``http:/path:PORT``, ``tcp:PORT`` or ``cmd:ARG,ARG`` (empty: no check).  Pure
Python, so the ``strata`` command shares it without Django.  The whole string
must match, as typed: a trailing newline or a blank is an error, not trimmed.
"""

import re

HTTP = re.compile(r"http:(?P<path>/[\x21-\x7e]{0,200}):(?P<port>[0-9]{1,5})")
TCP = re.compile(r"tcp:(?P<port>[0-9]{1,5})")
# Printable arguments without control characters, separated by commas.
COMMAND = re.compile(r"cmd:(?P<args>[^\x00-\x1f\x7f,]+(?:,[^\x00-\x1f\x7f,]+)*)")
USAGE = "write http:/path:PORT, tcp:PORT or cmd:ARG,ARG"


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{USAGE} (a port is 1-65535)")
    return port


def parse_health(text: str | None) -> dict:
    """The service spec's healthcheck dict; ValueError says what is wrong."""
    if not text:
        return {}
    if match := HTTP.fullmatch(text):
        return {"type": "http", "path": match["path"], "port": _port(match["port"])}
    if match := TCP.fullmatch(text):
        return {"type": "tcp", "port": _port(match["port"])}
    if match := COMMAND.fullmatch(text):
        return {"type": "command", "command": match["args"].split(",")}
    raise ValueError(USAGE)
