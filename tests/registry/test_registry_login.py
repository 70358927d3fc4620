"""The login flow against outside registries, with faults a real registry
will not produce on demand injected by a small HTTP server on loopback: a
token realm that would take the login in clear text over a network, an
unknown challenge, a token service that answers without a token or fails."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workers.drivers.registry import (
    LoginRefused,
    RegistryDown,
    RegistryLogin,
    fetch_manifest_with_login,
)
from workers.drivers.registry.client import registry_url

LOGIN = RegistryLogin("ci", "ci-password")


@pytest.fixture
def faulty_registry():
    """``faulty_registry(challenge, token_status, token_body)``: the address of a
    registry that challenges with ``challenge``; its token service (``/token``)
    answers ``token_status`` with ``token_body``.  ``.requests`` lists the paths asked."""
    servers = []

    def start(challenge: str, token_status: int = 200, token_body: object = None):
        asked = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server name
                asked.append(self.path)
                if self.path.startswith("/token"):
                    body = json.dumps(token_body or {}).encode()
                    self.send_response(token_status)
                else:
                    body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "login first"}]}'
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", challenge.format(port=server.port))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.port = server.server_address[1]
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        start.requests = asked
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_realm_in_clear_text_over_a_network_never_gets_the_login(faulty_registry):
    addr = faulty_registry('Bearer realm="http://auth.example.com/token",service="x"')
    with pytest.raises(LoginRefused, match="not an https:// token realm"):
        fetch_manifest_with_login(addr, "org/app", "1", LOGIN)
    assert faulty_registry.requests == ["/v2/org/app/manifests/1"]


def test_an_unknown_challenge_is_a_refused_login(faulty_registry):
    addr = faulty_registry('Negotiate realm="x"')
    with pytest.raises(LoginRefused, match=r"refused the team's login \(401\): login first"):
        fetch_manifest_with_login(addr, "org/app", "1", LOGIN)


@pytest.mark.parametrize(
    "status, body, error, message",
    [
        (200, {"expires_in": 60}, LoginRefused, "answered 200 without a token"),
        (401, {"errors": [{"message": "bad login"}]}, LoginRefused, "bad login"),
        (503, {}, RegistryDown, "answered 503"),
    ],
)
def test_a_token_service_without_a_token_is_named(faulty_registry, status, body, error, message):
    addr = faulty_registry(
        'Bearer realm="http://127.0.0.1:{port}/token",service="outside"', status, body
    )
    with pytest.raises(error, match=message):
        fetch_manifest_with_login(addr, "org/app", "1", LOGIN)
    assert faulty_registry.requests[1].startswith("/token?")
    assert "scope=repository%3Aorg%2Fapp%3Apull" in faulty_registry.requests[1]


@pytest.mark.parametrize(
    "addr, url",
    [
        ("127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("localhost:5000", "http://localhost:5000"),
        ("ghcr.io", "https://ghcr.io"),
        ("registry.example.com:5000", "https://registry.example.com:5000"),
        ("docker.io", "https://registry-1.docker.io"),
    ],
)
def test_loopback_is_plain_http_anything_else_https(addr, url):
    assert registry_url(addr) == url
