"""What Strata reads from its registry: a manifest, checked against its digest,
and the size of the image it describes (config plus layers)."""

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


def image_size(addr: str, repository: str, digest: str, bearer: str) -> int:
    """Bytes of the image ``repository@digest``: its config and layers (for an
    index, the sum of its manifests' declared sizes)."""
    url = f"http://{addr}/v2/{repository}/manifests/{digest}"
    try:
        answer = requests.get(
            url,
            headers={"Authorization": f"Bearer {bearer}", "Accept": ", ".join(MANIFEST_TYPES)},
            timeout=TIMEOUT_SECONDS,
        )
    except requests.RequestException as exc:
        raise RegistryDown(f"the registry at {addr} does not answer: {exc}") from exc
    if answer.status_code != 200:
        raise ManifestInvalid(f"{url} answered {answer.status_code}: {answer.text[:200]}")
    body = answer.content
    if len(body) > MAX_MANIFEST_BYTES or f"sha256:{hashlib.sha256(body).hexdigest()}" != digest:
        raise ManifestInvalid(f"{url} sent a manifest that does not match its digest")
    try:
        manifest = json.loads(body)
        if "manifests" in manifest:
            return sum(int(entry["size"]) for entry in manifest["manifests"])
        return int(manifest["config"]["size"]) + sum(
            int(layer["size"]) for layer in manifest["layers"]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestInvalid(f"{url} sent a manifest without sizes: {exc}") from exc
