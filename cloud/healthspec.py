"""Health checks written as one short string, for forms and the command line.

``http:/path:PORT``, ``tcp:PORT`` or ``cmd:ARG,ARG`` (empty: no check).  Pure
Python, so the ``strata`` command shares it without Django.
"""


def parse_health(text: str | None) -> dict:
    """The service spec's healthcheck dict; ValueError says what is wrong."""
    text = (text or "").strip()
    if not text:
        return {}
    kind, _, rest = text.partition(":")
    if kind == "http":
        path, _, port = rest.rpartition(":")
        if port.isdigit() and path.startswith("/"):
            return {"type": "http", "path": path, "port": int(port)}
    elif kind == "tcp" and rest.isdigit():
        return {"type": "tcp", "port": int(rest)}
    elif kind == "cmd" and rest:
        return {"type": "command", "command": rest.split(",")}
    raise ValueError("write http:/path:PORT, tcp:PORT or cmd:ARG,ARG")
