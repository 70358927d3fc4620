"""The libvirt driver: one host as Strata uses it, composed of one object per
concern, as Nova's libvirt driver is split (host, storage, guest, config).

Call sites name the concern: ``hv.storage.create_disk(...)``,
``hv.guests.start(uuid)``, ``hv.snapshots.create(uuid, name)``.
"""

from __future__ import annotations

from pathlib import Path

from .guest import Guests
from .host import Host
from .network import NetworkDriver
from .snapshots import Snapshots
from .storage import Storage
from .templates import Templates
from .validation import STRATA_ID_PATTERN, require_match


class Hypervisor:
    """A libvirt host: ``host`` (the connection, capacity, virtualisation),
    ``storage`` (pools and volumes under ``data_dir``), ``guests`` (domains),
    ``snapshots``, ``templates`` (saved booted guests) and ``networks``, all on one connection.

    ``installation_id`` marks the domains, VM volumes and networks this driver makes, so
    that another Strata on the same libvirtd can tell them from its own.
    """

    def __init__(
        self,
        uri: str,
        data_dir: str | Path,
        *,
        pool_name: str = "strata",
        virt_type: str = "qemu",
        installation_id: str | None = None,
    ) -> None:
        if installation_id is not None:
            require_match("installation_id", installation_id, STRATA_ID_PATTERN, "a Strata id")
        self.installation_id = installation_id
        self.host = Host(uri, virt_type)
        try:
            self.storage = Storage(self.host, data_dir, pool_name, installation_id)
        except BaseException:
            # A refused pool name or data dir leaves no connection open.
            self.host.close()
            raise
        self.guests = Guests(self.host, self.storage, installation_id)
        self.snapshots = Snapshots(self.host)
        self.templates = Templates(self.host, self.storage, self.guests)
        self.networks = NetworkDriver(self.host, installation_id)

    def close(self) -> None:
        self.host.close()

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()
