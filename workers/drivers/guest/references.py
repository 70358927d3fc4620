"""Image references, parsed by the distribution reference grammar, strictly.

    reference  := name [ ":" tag | "@" digest ]
    name       := [ host [ ":" port ] "/" ] path-component ( "/" path-component )*
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*

The first component is a registry host only when it holds a "." or ":" or is
"localhost" (Docker's rule).  A reference never holds "." or ".." segments,
so it cannot walk the engine API's URL space, and it never is an image id
(``sha256:<hex>``, 64 hex digits): an id names whatever image the engine
holds, not one a team was given.  No Django here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import InvalidSpec

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]{{1,5}})?"
_PATH_PATTERN = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_PATH = re.compile(_PATH_PATTERN, re.ASCII)
_REFERENCE = re.compile(
    rf"(?:(?P<host>{_HOST})/)?(?P<path>{_PATH_PATTERN})"
    r"(?::(?P<tag>\w[\w.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?",
    re.ASCII,
)
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{64}", re.ASCII)
MAX_NAME_LENGTH = 255
DEFAULT_REGISTRY = "docker.io"


@dataclass(frozen=True)
class ImageReference:
    host: str  # "" for the default registry
    path: str
    tag: str  # "" when pinned by digest
    digest: str  # "" when named by tag

    @property
    def repository(self) -> str:
        return f"{self.host}/{self.path}" if self.host else self.path

    def __str__(self) -> str:
        """The canonical form: explicit tag (``latest`` by default) or digest."""
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}"

    def matches(self, engine_name: str) -> bool:
        """Whether a name from an image's RepoTags or RepoDigests is this reference."""
        try:
            other = parse_reference(engine_name)
        except InvalidSpec:
            return False
        return _short(str(other)) == _short(str(self))


def _short(canonical: str) -> str:
    # Docker writes docker.io/library/busybox:1 as busybox:1 in RepoTags.
    for prefix in (f"{DEFAULT_REGISTRY}/library/", f"{DEFAULT_REGISTRY}/", "library/"):
        if canonical.startswith(prefix):
            return canonical[len(prefix) :]
    return canonical


def parse_reference(text: object) -> ImageReference:
    """The reference ``text`` names; InvalidSpec("image", ...) says what is wrong."""
    if not isinstance(text, str) or not text:
        raise InvalidSpec("image", "must be an image reference like team/app:1.2")
    found = _REFERENCE.fullmatch(text)
    host, path = (found["host"] or "", found["path"]) if found else ("", "")
    if host and not ("." in host or ":" in host or host == "localhost"):
        host, path = "", f"{host}/{path}"  # a first path component, not a registry
    first = path.split("/", 1)[0]
    is_host = "/" in path and ("." in first or ":" in first or first == "localhost")
    if found is None or is_host or not _PATH.fullmatch(path):
        raise InvalidSpec(
            "image",
            "must be [registry[:port]/]path[:tag] or path@sha256:<64 hex>, with lowercase "
            "path components and no '.' or '..' segments",
        )
    if (
        _IMAGE_ID.fullmatch(text)
        or path == "sha256"
        or any(_IMAGE_ID.fullmatch(part) for part in path.split("/"))
    ):
        raise InvalidSpec("image", "must name an image by repository and tag, not by image id")
    if len(f"{host}/{path}") > MAX_NAME_LENGTH:
        raise InvalidSpec("image", f"the name must be at most {MAX_NAME_LENGTH} characters")
    if found["digest"]:
        return ImageReference(host, path, "", found["digest"])
    return ImageReference(host, path, found["tag"] or "latest", "")


_REGISTRY_HOST = re.compile(
    rf"(?P<name>{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*)(?::[0-9]{{1,5}})?", re.ASCII
)


def is_registry_host(text: object) -> bool:
    """Whether ``text`` is a registry ``host[:port]`` an image reference can
    name: an IPv4 address, ``localhost``, or a DNS name whose last label (the
    top-level domain) is not all digits (RFC 3696)."""
    found = _REGISTRY_HOST.fullmatch(text) if isinstance(text, str) else None
    if found is None or len(text) > MAX_NAME_LENGTH:
        return False
    name = found["name"]
    try:
        ipaddress.IPv4Address(name)
        return True
    except ValueError:
        pass
    # A single label is a host only with a port (Docker's rule), as in myregistry:5000.
    several = "." in name or ":" in text
    return name == "localhost" or (several and not name.rsplit(".", 1)[-1].isdigit())
