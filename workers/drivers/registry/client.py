"""What Strata asks a registry: a manifest, checked against its digest (to
resolve a tag, or to size an image), and the deletion of one.

Strata's own registry is asked with a token Strata signs; a team's external
registry with the team's login, by the registry's own challenge (Basic, or
the Bearer token flow: the login buys a pull token for one repository at
the challenge's realm).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

from .health import CHALLENGE_PARAM, TIMEOUT_SECONDS, RegistryDown

IMAGE_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
INDEX_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES + INDEX_MANIFEST_TYPES
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class ManifestInvalid(Exception):
    """The registry sent a manifest that is not the one asked for, or not one at all."""


class ImageNotInRegistry(Exception):
    """The registry holds no such repository, tag or manifest; the message is the registry's."""


class LoginRefused(Exception):
    """An external registry refused the team's login; the message is the registry's."""


@dataclass(frozen=True)
class RegistryLogin:
    """A team's user name and password (or access token) at an external registry."""

    username: str
    password: str = field(repr=False)


# Docker Hub's references say docker.io; its registry API answers elsewhere.
API_HOSTS = {"docker.io": "registry-1.docker.io"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (no port) is this machine: ``localhost`` or 127.0.0.0/8, ::1."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def strata_url(addr: str) -> str:
    """Strata's own registry's base URL: plain HTTP, as its configuration serves it."""
    return f"http://{addr}"


def registry_url(addr: str) -> str:
    """An external registry's base URL: plain HTTP on loopback (as Docker's
    engine treats 127.0.0.0/8 and localhost), HTTPS anywhere else."""
    host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr
    return f"{'http' if is_loopback(host) else 'https'}://{API_HOSTS.get(addr, addr)}"


def _registry_message(answer: requests.Response) -> str:
    """The registry protocol's first error message, or the start of the body."""
    try:
        return "; ".join(error["message"] for error in answer.json()["errors"])
    except (ValueError, KeyError, TypeError):
        return answer.text[:200]


def _send(method: str, url: str, addr: str, **kwargs) -> requests.Response:
    try:
        return requests.request(method, url, timeout=TIMEOUT_SECONDS, **kwargs)
    except requests.RequestException as exc:
        raise RegistryDown(f"the registry at {addr} does not answer: {exc}") from exc


def _strata_refused(addr: str, answer: requests.Response) -> Exception:
    # Strata's own token refused: that registry does not trust this installation's key.
    return RegistryDown(
        f"the registry at {addr} refused Strata's token ({answer.status_code}): "
        "is it configured by this installation (manage.py registry_config)?"
    )


def _login_refused(addr: str, answer: requests.Response) -> Exception:
    return LoginRefused(
        f"the registry at {addr} refused the team's login ({answer.status_code}): "
        f"{_registry_message(answer)}"
    )


def _call(
    method: str,
    base: str,
    addr: str,
    repository: str,
    reference: str,
    authorization: Callable[[requests.Response | None], str],
    refused: Callable[[str, requests.Response], Exception],
):
    """``method`` on the manifest at the registry's ``base`` URL, with the
    Authorization header ``authorization`` makes (given the registry's 401
    answer, once it has sent one)."""
    url = f"{base}/v2/{repository}/manifests/{reference}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    first = authorization(None)
    answer = _send(
        method, url, addr, headers={**headers, "Authorization": first} if first else headers
    )
    if answer.status_code == 401 and not first:
        headers["Authorization"] = authorization(answer)
        answer = _send(method, url, addr, headers=headers)
    if answer.status_code == 404:
        separator = "@" if reference.startswith("sha256:") else ":"
        raise ImageNotInRegistry(f"{repository}{separator}{reference}: {_registry_message(answer)}")
    if answer.status_code in (401, 403):
        raise refused(addr, answer)
    if answer.status_code >= 500:
        raise RegistryDown(f"the registry at {addr} answered {answer.status_code}")
    return url, answer


def _bearer(token: str) -> Callable[[requests.Response | None], str]:
    return lambda _challenge: f"Bearer {token}"


def _answering_challenge(addr: str, repository: str, login: RegistryLogin):
    """An ``authorization`` for ``_call`` that answers the registry's challenge
    with ``login``: Basic as it is, Bearer by buying a pull token at the realm."""

    def authorization(challenged: requests.Response | None) -> str:
        if challenged is None:
            return ""  # ask first: the challenge says which scheme the registry wants
        challenge = challenged.headers.get("WWW-Authenticate", "")
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            pair = f"{login.username}:{login.password}".encode()
            return f"Basic {base64.b64encode(pair).decode()}"
        if scheme.lower() != "bearer":
            raise _login_refused(addr, challenged)
        return (
            f"Bearer {_pull_token(addr, repository, login, dict(CHALLENGE_PARAM.findall(params)))}"
        )

    return authorization


def _pull_token(addr: str, repository: str, login: RegistryLogin, challenge: dict) -> str:
    """The registry token flow: the realm trades the login for a token to pull ``repository``."""
    realm = challenge.get("realm", "")
    # The login goes to the realm: never in clear text over a network.
    if not (
        realm.startswith("https://")
        or realm.startswith("http://")
        and is_loopback(urlsplit(realm).hostname or "")
    ):
        raise LoginRefused(
            f"the registry at {addr} sends its login to {realm!r}, not an https:// token realm"
        )
    params = {"scope": f"repository:{repository}:pull"}
    if challenge.get("service"):
        params["service"] = challenge["service"]
    answer = _send("GET", realm, addr, params=params, auth=(login.username, login.password))
    if answer.status_code in (401, 403):
        raise _login_refused(addr, answer)
    if answer.status_code >= 500:
        raise RegistryDown(f"the token service at {realm} answered {answer.status_code}")
    try:
        body = answer.json()
        token = body.get("token") or body.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if answer.status_code != 200 or not isinstance(token, str) or not token:
        raise LoginRefused(
            f"the token service at {realm} answered {answer.status_code} without a token: "
            f"{_registry_message(answer)}"
        )
    return token


def _manifest(url: str, answer: requests.Response, reference: str) -> tuple[str, dict]:
    """(digest, manifest) of the answer: the digest is computed from the bytes
    received, never taken from a header."""
    if answer.status_code != 200:
        raise ManifestInvalid(f"{url} answered {answer.status_code}: {_registry_message(answer)}")
    body = answer.content
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    if len(body) > MAX_MANIFEST_BYTES or (reference.startswith("sha256:") and digest != reference):
        raise ManifestInvalid(f"{url} sent a manifest that does not match its digest")
    try:
        return digest, json.loads(body)
    except ValueError as exc:
        raise ManifestInvalid(f"{url} sent no manifest: {exc}") from exc


def fetch_manifest(addr: str, repository: str, reference: str, bearer: str) -> tuple[str, dict]:
    """(digest, manifest) of ``repository`` at ``reference`` (a tag or a digest)
    in Strata's registry, asked with Strata's token ``bearer``."""
    url, answer = _call(
        "GET", strata_url(addr), addr, repository, reference, _bearer(bearer), _strata_refused
    )
    return _manifest(url, answer, reference)


def fetch_manifest_with_login(
    addr: str, repository: str, reference: str, login: RegistryLogin
) -> tuple[str, dict]:
    """(digest, manifest) of ``repository`` at ``reference`` in an external
    registry, asked with the team's ``login``; LoginRefused when it is refused."""
    authorization = _answering_challenge(addr, repository, login)
    url, answer = _call(
        "GET", registry_url(addr), addr, repository, reference, authorization, _login_refused
    )
    return _manifest(url, answer, reference)


def image_size(addr: str, repository: str, digest: str, bearer: str) -> int:
    """Bytes of the image ``repository@digest``: its config and layers (for an
    index, the sum of its manifests' declared sizes)."""
    _, manifest = fetch_manifest(addr, repository, digest, bearer)
    try:
        if "manifests" in manifest:
            return sum(int(entry["size"]) for entry in manifest["manifests"])
        return int(manifest["config"]["size"]) + sum(
            int(layer["size"]) for layer in manifest["layers"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestInvalid(f"{repository}@{digest} has a manifest without sizes: {exc}") from exc


def delete_manifest(addr: str, repository: str, digest: str, bearer: str) -> None:
    """Delete ``repository@digest`` and so every tag on it (the blobs stay until
    the registry's garbage collection); an absent one is already deleted."""
    try:
        url, answer = _call(
            "DELETE", strata_url(addr), addr, repository, digest, _bearer(bearer), _strata_refused
        )
    except ImageNotInRegistry:
        return
    if answer.status_code != 202:
        raise ManifestInvalid(
            f"DELETE {url} answered {answer.status_code}: {_registry_message(answer)}"
        )
