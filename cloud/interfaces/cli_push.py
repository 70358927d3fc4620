"""``strata push IMAGE[:TAG]``: a local image into the team's namespace of Strata's registry.

The image is tagged ``<registry>/<team>/<name>:<tag>`` in the user's own
Docker engine (``DOCKER_HOST`` as the docker command reads it) and pushed by
that engine, logged in as ``token`` with the user's API token, exactly as
``docker login`` + ``docker push`` would: the registry is asked for each
layer first, so only the layers it lacks are sent.  One progress bar per
layer; the reference to deploy is printed at the end.

Not imported by name from ``cli`` (which imports this module): errors of its
own are printed here, with the exit status ``cli`` uses for them (2).
"""

from __future__ import annotations

import os
import sys

import docker

from workers.drivers.guest.errors import InvalidSpec
from workers.drivers.guest.references import parse_reference

BAR_WIDTH = 30
# What the engine says of a layer the registry already holds, or once it sent one.
ALREADY_THERE = ("Layer already exists", "Mounted from")
SENT = "Pushed"


def add_push_command(groups) -> None:
    push = groups.add_parser(
        "push", help="push a local image to the team's namespace in Strata's registry"
    )
    push.add_argument("image", help="an image of your Docker engine, e.g. web:1")
    push.add_argument(
        "--name",
        metavar="NAME[:TAG]",
        help="the repository in the team's namespace (default: the image's last part and tag)",
    )
    push.set_defaults(run=cmd_push)


class PushError(Exception):
    pass


def target_reference(image: str, registry: str, team: str, name: str | None) -> tuple[str, str]:
    """(repository, tag) in the team's namespace for the local ``image``: named
    ``name`` (with its tag, if it has one) or after the image's last part."""
    try:
        reference = parse_reference(image)
        wanted = parse_reference(f"{team}/{name or reference.path.rsplit('/', 1)[-1]}")
    except InvalidSpec as exc:
        raise PushError(f"image: {exc}") from exc
    if reference.digest or wanted.digest:
        raise PushError("image: push a tag (name:tag), not a digest")
    tag = wanted.tag if name and ":" in name else reference.tag
    return f"{registry}/{wanted.path}", tag


class LayerBars:
    """A progress bar per layer: redrawn in place on a terminal, else a line
    whenever a layer's state changes (so logs of CI runs stay short)."""

    def __init__(self, out):
        self.out = out
        self.interactive = out.isatty()
        self.layers: dict[str, tuple[str, int, int]] = {}
        self.drawn = 0

    def update(self, message: dict) -> None:
        layer, status = message.get("id"), message.get("status", "")
        if not layer:
            return  # the repository's and the digest's lines, not a layer's
        detail = message.get("progressDetail") or {}
        current, total = detail.get("current", 0), detail.get("total", 0)
        before = self.layers.get(layer)
        self.layers[layer] = (status, current, total)
        if self.interactive:
            self.redraw()
        elif before is None or before[0] != status:
            self.out.write(self.line(layer) + "\n")
            self.out.flush()

    def line(self, layer: str) -> str:
        status, current, total = self.layers[layer]
        if status == SENT or status.startswith(ALREADY_THERE):
            done = BAR_WIDTH
        else:
            # The engine counts the tar it sends, which can outgrow the size it announced.
            done = min(BAR_WIDTH, BAR_WIDTH * current // total) if total else 0
        bar = "#" * done + "-" * (BAR_WIDTH - done)
        size = f" {current}/{total} bytes" if total else ""
        return f"{layer} [{bar}] {status}{size}"

    def redraw(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")  # back to the first bar's line
        for layer in self.layers:
            self.out.write("\x1b[2K" + self.line(layer) + "\n")
        self.drawn = len(self.layers)
        self.out.flush()

    def counts(self) -> tuple[int, int]:
        """(layers sent, layers the registry already held)."""
        statuses = [status for status, _, _ in self.layers.values()]
        sent = sum(status == SENT for status in statuses)
        return sent, sum(status.startswith(ALREADY_THERE) for status in statuses)


def cmd_push(client, args, out=sys.stdout) -> int:
    try:
        return push(client, args, out)
    except PushError as exc:
        print(f"strata: {exc}", file=sys.stderr)
        return 2


def push(client, args, out) -> int:
    registry = client.request("GET", "registry/")["address"]
    repository, tag = target_reference(args.image, registry, client.team, args.name)
    try:
        engine = docker.from_env()
        engine.images.get(args.image).tag(repository, tag)
    except docker.errors.ImageNotFound as exc:
        raise PushError(f"image: no image {args.image!r} in your Docker engine") from exc
    except docker.errors.DockerException as exc:
        raise PushError(f"cannot reach your Docker engine: {exc}") from exc
    out.write(f"pushing {args.image} as {repository}:{tag}\n")
    bars = LayerBars(out)
    digest = ""
    try:
        progress = engine.api.push(
            repository,
            tag=tag,
            stream=True,
            decode=True,
            # The API token main() authenticates with: the registry's docker login takes it too.
            auth_config={"username": "token", "password": os.environ["STRATA_TOKEN"]},
        )
        for message in progress:
            if "error" in message:
                raise PushError(f"push {repository}:{tag}: {message['error']}")
            digest = (message.get("aux") or {}).get("Digest", digest)
            bars.update(message)
    except docker.errors.APIError as exc:
        raise PushError(f"push {repository}:{tag}: {exc.explanation}") from exc
    sent, held = bars.counts()
    out.write(f"{sent} layer(s) sent, {held} already in the registry\n")
    out.write(f"pushed {repository}:{tag} {digest}\n")
    out.write(f"deploy it: strata deploy ENV SERVICE {repository}:{tag}\n")
    return 0
