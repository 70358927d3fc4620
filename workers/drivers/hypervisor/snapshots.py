"""Internal snapshots of Strata's domains: create, list, revert, delete."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from .config import SnapshotConfig, disk_targets, snapshot_time_and_state
from .errors import libvirt_errors
from .host import Host
from .validation import LIBVIRT_OBJECT_NAME_PATTERN, require_match


@dataclass(frozen=True)
class Snapshot:
    name: str
    created_at: int
    state: str


def _find(domain: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot | None:
    try:
        return domain.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise


def _describe(snapshot: libvirt.virDomainSnapshot) -> Snapshot:
    created_at, state = snapshot_time_and_state(snapshot.getXMLDesc(0))
    return Snapshot(name=snapshot.getName(), created_at=created_at, state=state)


class Snapshots:
    """Snapshots of the domains on ``host``, by domain UUID and snapshot name."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def create(self, uuid: str, name: str) -> Snapshot:
        """An internal snapshot (disk and, when running, memory); reused if it exists."""
        require_match("snapshot", name, LIBVIRT_OBJECT_NAME_PATTERN, "a snapshot name")
        domain = self._host.domain(uuid)
        with libvirt_errors():
            existing = _find(domain, name)
            if existing is not None:
                return _describe(existing)
            config = SnapshotConfig(name, tuple(disk_targets(domain.XMLDesc(0))))
            return _describe(domain.snapshotCreateXML(config.to_xml(), 0))

    def list(self, uuid: str) -> list[Snapshot]:
        domain = self._host.domain(uuid)
        with libvirt_errors():
            snapshots = [_describe(snapshot) for snapshot in domain.listAllSnapshots(0)]
        return sorted(snapshots, key=lambda snapshot: (snapshot.created_at, snapshot.name))

    def revert(self, uuid: str, name: str) -> None:
        domain = self._host.domain(uuid)
        with libvirt_errors():
            domain.revertToSnapshot(domain.snapshotLookupByName(name, 0), 0)

    def delete(self, uuid: str, name: str) -> None:
        domain = self._host.domain(uuid)
        with libvirt_errors():
            snapshot = _find(domain, name)
            if snapshot is not None:
                snapshot.delete(0)
