"""What Strata asks its registry: a manifest, checked against its digest (to
resolve a tag, or to size an image), and the deletion of one."""

from __future__ import annotations

import hashlib
import json

import requests

from .health import TIMEOUT_SECONDS, RegistryDown

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


def _registry_message(answer: requests.Response) -> str:
    """The registry protocol's first error message, or the start of the body."""
    try:
        return "; ".join(error["message"] for error in answer.json()["errors"])
    except (ValueError, KeyError, TypeError):
        return answer.text[:200]


def _call(method: str, addr: str, repository: str, reference: str, bearer: str):
    url = f"http://{addr}/v2/{repository}/manifests/{reference}"
    try:
        answer = requests.request(
            method,
            url,
            headers={"Authorization": f"Bearer {bearer}", "Accept": ", ".join(MANIFEST_TYPES)},
            timeout=TIMEOUT_SECONDS,
        )
    except requests.RequestException as exc:
        raise RegistryDown(f"the registry at {addr} does not answer: {exc}") from exc
    if answer.status_code == 404:
        separator = "@" if reference.startswith("sha256:") else ":"
        raise ImageNotInRegistry(f"{repository}{separator}{reference}: {_registry_message(answer)}")
    if answer.status_code in (401, 403):
        # Strata's own token refused: that registry does not trust this installation's key.
        raise RegistryDown(
            f"the registry at {addr} refused Strata's token ({answer.status_code}): "
            "is it configured by this installation (manage.py registry_config)?"
        )
    if answer.status_code >= 500:
        raise RegistryDown(f"the registry at {addr} answered {answer.status_code}")
    return url, answer


def fetch_manifest(addr: str, repository: str, reference: str, bearer: str) -> tuple[str, dict]:
    """(digest, manifest) of ``repository`` at ``reference`` (a tag or a digest):
    the digest is computed from the bytes received, never taken from a header."""
    url, answer = _call("GET", addr, repository, reference, bearer)
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
        url, answer = _call("DELETE", addr, repository, digest, bearer)
    except ImageNotInRegistry:
        return
    if answer.status_code != 202:
        raise ManifestInvalid(
            f"DELETE {url} answered {answer.status_code}: {_registry_message(answer)}"
        )
