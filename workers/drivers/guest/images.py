"""Getting an image into a target's engine: registry pull, or registry-less push.

Registry-less push streams ``docker save`` from the manager's engine into the
target's ``images/load``, replacing every layer tarball whose chain ID the
target already has with an empty placeholder.  moby's tarexport ``Load``
looks each layer up by chain ID first and reads the layer file only when the
layer is missing, so a placeholder is never read.  Nothing is buffered whole:
the tar is rewritten member by member.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import docker
from docker.utils import parse_repository_tag

from .errors import ImageShipFailed

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TAR_BLOCK = 512


@dataclass(frozen=True)
class PushResult:
    image_id: str
    bytes_sent: int
    layers_total: int
    layers_skipped: int


@dataclass(frozen=True)
class RegistryAuth:
    username: str
    password: str
    server: str | None = None

    def __repr__(self) -> str:  # never show the password in logs or errors
        return f"RegistryAuth(username={self.username!r}, server={self.server!r})"

    def as_auth_config(self) -> dict:
        config = {"username": self.username, "password": self.password}
        if self.server:
            config["serveraddress"] = self.server
        return config


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of every layer prefix (OCI image spec, "ChainID")."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            digest = hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest()
            chains.append(f"sha256:{digest}")
    return chains


def pull_image(
    engine: docker.DockerClient, repository: str, tag: str, auth: RegistryAuth | None = None
) -> str:
    """Pull ``repository:tag`` into the engine; returns the image ID."""
    try:
        progress = engine.api.pull(
            repository,
            tag=tag,
            stream=True,
            decode=True,
            auth_config=auth.as_auth_config() if auth else None,
        )
        for message in progress:
            if "error" in message:
                raise ImageShipFailed(f"pull {repository}:{tag}: {message['error']}")
        return engine.api.inspect_image(f"{repository}:{tag}")["Id"]
    except docker.errors.APIError as exc:
        raise ImageShipFailed(f"pull {repository}:{tag}: {exc.explanation}") from None


def pull_by_digest(
    engine: docker.DockerClient, repository: str, digest: str, auth_config: dict
) -> str:
    """Pull ``repository@digest`` into the engine; returns the image ID.
    ``auth_config`` is sent with this one pull and never stored by the engine:
    for Strata's registry a token it sends as it is (moby's ``registrytoken``),
    for an external one the team's login."""
    reference = f"{repository}@{digest}"
    try:
        progress = engine.api.pull(
            repository, tag=digest, stream=True, decode=True, auth_config=auth_config
        )
        for message in progress:
            if "error" in message:
                raise ImageShipFailed(f"pull {reference}: {message['error']}")
        return engine.api.inspect_image(reference)["Id"]
    except docker.errors.APIError as exc:
        raise ImageShipFailed(f"pull {reference}: {exc.explanation}") from None


def remote_chain_ids(engine: docker.DockerClient) -> set[str]:
    """Chain IDs of every layer held by an image in the engine."""
    held: set[str] = set()
    for summary in engine.api.images(all=True):
        try:
            layers = engine.api.inspect_image(summary["Id"])["RootFS"].get("Layers") or []
        except docker.errors.ImageNotFound:
            continue  # removed meanwhile
        held.update(chain_ids(layers))
    return held


class _LayerPathCache:
    """Maps an image ID to the tar paths of its layers in ``docker save`` output.

    ``docker save`` names layer files after v1 IDs (20.10) or blob digests
    (25+) and writes manifest.json last, so the mapping needs one full pass
    over the local save; it depends only on the image ID, so it is kept.
    """

    def __init__(self, limit: int = 256):
        self._paths: dict[str, list[str]] = {}
        self._limit = limit
        self._lock = threading.Lock()
        # One reader per image: parallel pushes to many targets wait for it.
        self._reading: dict[str, threading.Lock] = {}

    def get(self, local: docker.DockerClient, image_id: str) -> list[str]:
        with self._lock:
            reading = self._reading.setdefault(image_id, threading.Lock())
        with reading:
            with self._lock:
                if image_id in self._paths:
                    return self._paths[image_id]
            paths = _read_layer_paths(local, image_id)
            with self._lock:
                if len(self._paths) >= self._limit:
                    evicted = next(iter(self._paths))
                    self._paths.pop(evicted)
                    self._reading.pop(evicted, None)
                self._paths[image_id] = paths
            return paths


_layer_paths = _LayerPathCache()


def _read_layer_paths(local: docker.DockerClient, image_id: str) -> list[str]:
    with tarfile.open(fileobj=_IterReader(local.api.get_image(image_id)), mode="r|") as tar:
        for member in tar:
            if member.name == "manifest.json":
                manifest = json.load(tar.extractfile(member))
                return list(manifest[0]["Layers"])
    raise ImageShipFailed(f"docker save of {image_id} has no manifest.json")


def push_image(local: docker.DockerClient, remote: docker.DockerClient, image: str) -> PushResult:
    """Send ``image`` (a tag known to ``local``) to ``remote``, skipping held layers.

    Returns the bytes of the tar stream sent (0 when the remote already had
    the image).  Raises ImageShipFailed.
    """
    try:
        local_image = local.api.inspect_image(image)
    except docker.errors.ImageNotFound:
        raise ImageShipFailed(f"image {image!r} is not in the manager's engine") from None
    image_id = local_image["Id"]
    diff_ids = local_image["RootFS"].get("Layers") or []
    if _has_image(remote, image_id):
        if image != image_id and image not in _remote_tags(remote, image_id):
            repository, tag = parse_repository_tag(image)
            remote.api.tag(image_id, repository, tag or "latest")
        return PushResult(image_id, 0, len(diff_ids), len(diff_ids))

    held = remote_chain_ids(remote)
    layer_paths = _layer_paths.get(local, image_id)
    if len(layer_paths) != len(diff_ids):
        raise ImageShipFailed(
            f"{image}: manifest lists {len(layer_paths)} layers, config {len(diff_ids)}"
        )
    skip = {
        path for path, chain in zip(layer_paths, chain_ids(diff_ids), strict=True) if chain in held
    }
    sent = _ByteCounter(_without_layers(local.api.get_image(image), skip))
    try:
        for message in remote.api.load_image(sent, quiet=True):
            if "error" in message:
                raise ImageShipFailed(f"load {image}: {message['error']}")
    except docker.errors.APIError as exc:
        raise ImageShipFailed(f"load {image}: {exc.explanation}") from None
    if not _has_image(remote, image_id):
        raise ImageShipFailed(f"load {image}: the target does not hold {image_id} afterwards")
    logger.info(
        "pushed %s: %d bytes, %d of %d layers skipped", image, sent.count, len(skip), len(diff_ids)
    )
    return PushResult(image_id, sent.count, len(diff_ids), len(skip))


def _has_image(engine: docker.DockerClient, image_id: str) -> bool:
    try:
        engine.api.inspect_image(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


def _remote_tags(engine: docker.DockerClient, image_id: str) -> list[str]:
    return engine.api.inspect_image(image_id).get("RepoTags") or []


def _without_layers(saved: Iterable[bytes], skip: set[str]) -> Iterator[bytes]:
    """The ``docker save`` tar ``saved`` with the files in ``skip`` emptied."""
    with tarfile.open(fileobj=_IterReader(saved), mode="r|") as tar:
        for member in tar:
            if member.isfile() and member.name in skip:
                placeholder = tarfile.TarInfo(member.name)
                placeholder.mode = member.mode
                placeholder.mtime = member.mtime
                yield placeholder.tobuf(format=tarfile.PAX_FORMAT)
                continue
            yield member.tobuf(format=tarfile.PAX_FORMAT)
            if member.isfile():
                source = tar.extractfile(member)
                while chunk := source.read(_CHUNK):
                    yield chunk
                remainder = member.size % _TAR_BLOCK
                if remainder:
                    yield b"\0" * (_TAR_BLOCK - remainder)
    yield b"\0" * (2 * _TAR_BLOCK)  # end-of-archive marker


class _ByteCounter:
    """Passes chunks through, counting their bytes."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = chunks
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.count += len(chunk)
            yield chunk


class _IterReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size
