"""Find the Debian mirror that the host's own apt uses, so a build fetches from
the same (possibly local or snapshot-pinned) mirror rather than a hard-coded one."""

from pathlib import Path

from .errors import ImageBuildError

DEFAULT_SOURCES_LIST = Path("/etc/apt/sources.list")
DEFAULT_SOURCES_DIR = Path("/etc/apt/sources.list.d")


class MirrorNotFound(ImageBuildError):
    pass


def _one_line_entries(text: str):
    """(uri, suites) from one-line-style `deb [options] URI SUITE COMPONENTS...`."""
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields or fields[0] != "deb":
            continue
        fields = fields[1:]
        if fields and fields[0].startswith("["):
            # Options in brackets may contain spaces: skip to the closing bracket.
            while fields and not fields[0].endswith("]"):
                fields = fields[1:]
            fields = fields[1:]
        if len(fields) >= 2:
            yield fields[0], [fields[1]]


def _deb822_entries(text: str):
    """(uri, suites) for each `Types: deb` stanza of a deb822 .sources file."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        last_key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and last_key:
                fields[last_key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            last_key = key.strip().lower()
            fields[last_key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        suites = fields.get("suites", "").split()
        for uri in fields.get("uris", "").split():
            yield uri, suites


def find_debian_mirror(
    release: str,
    sources_list: Path = DEFAULT_SOURCES_LIST,
    sources_dir: Path = DEFAULT_SOURCES_DIR,
) -> str:
    """The URI of the first apt source that serves `release` (e.g. "bookworm")."""
    texts: list[tuple[str, str]] = []
    if sources_list.is_file():
        texts.append(("list", sources_list.read_text()))
    if sources_dir.is_dir():
        for path in sorted(sources_dir.iterdir()):
            if path.suffix == ".sources":
                texts.append(("sources", path.read_text()))
            elif path.suffix == ".list":
                texts.append(("list", path.read_text()))
    for kind, text in texts:
        entries = _deb822_entries(text) if kind == "sources" else _one_line_entries(text)
        for uri, suites in entries:
            if release in suites:
                return uri.rstrip("/")
    raise MirrorNotFound(f"no apt source for {release!r} in {sources_list} or {sources_dir}")
