"""Spreading a service's replicas over targets (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import InvalidSpec


def spread_replicas(
    replicas: int,
    targets: Sequence[str],
    *,
    current: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """How many replicas each target runs: as even as possible.

    Counts differ by at most one.  Where the split is uneven the extra
    replicas go to targets that already run more (``current``), then in
    target order, so a re-run or a scale change moves as little as it can.
    ``max_per_target`` (1 for services with published ports) caps each target.
    """
    if not isinstance(replicas, int) or replicas < 0:
        raise InvalidSpec("replicas", "must be a non-negative integer")
    if len(set(targets)) != len(targets):
        raise InvalidSpec("targets", "must not repeat")
    if replicas and not targets:
        raise InvalidSpec("targets", "no target to place replicas on")
    if not targets:
        return {}
    current = current or {}
    base, extra = divmod(replicas, len(targets))
    # Stable sort: most current replicas first, ties in the given order.
    preferred = sorted(targets, key=lambda target: -current.get(target, 0))
    gets_extra = set(preferred[:extra])
    return {target: base + (target in gets_extra) for target in targets}
