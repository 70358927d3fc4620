"""Is the registry up, and is it the one Strata configured?

``GET /v2/`` of a registry with token auth answers 401 with a Bearer
challenge naming its realm and service: that proves the process answers
and runs with Strata's auth configuration (not, say, the Debian package's
default htpasswd one on the same port).
"""

from __future__ import annotations

import re

import requests

TIMEOUT_SECONDS = 5
CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryDown(Exception):
    """The registry did not answer, or answered as some other registry."""

    transient = True  # a job waiting on it retries with backoff


def check_health(addr: str, realm: str, service: str) -> None:
    """Raise RegistryDown saying why, unless the registry at ``addr`` is Strata's."""
    url = f"http://{addr}/v2/"
    try:
        answer = requests.get(url, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise RegistryDown(f"the registry at {addr} does not answer: {exc}") from exc
    challenge = answer.headers.get("WWW-Authenticate", "")
    if answer.status_code != 401 or not challenge.startswith("Bearer "):
        raise RegistryDown(
            f"{url} answered {answer.status_code} without a Bearer challenge: "
            "not a registry with Strata's token auth"
        )
    params = dict(CHALLENGE_PARAM.findall(challenge))
    if params.get("realm") != realm or params.get("service") != service:
        raise RegistryDown(
            f"the registry at {addr} sends clients to realm {params.get('realm')!r} for "
            f"service {params.get('service')!r}, not {realm!r} for {service!r}"
        )
