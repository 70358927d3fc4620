"""Templates: a booted guest saved with its memory state, restored as new VMs.

libvirt's restore refuses an XML whose name or uuid differs from the saved
domain's (its ABI check, measured on libvirt 9.0: "Target domain uuid ... does
not match source"), so ``virDomainRestoreFlags`` with a dxml can only move
disks. A new VM needs its own name and uuid, so before each restore the state
file's header (libvirt's ``virQEMUSaveHeader`` followed by the domain XML and
a cookie, padded) is rewritten from the pristine copy kept beside it; the
memory state after it is never written. Restores of one template take turns
under a lock (a restore reads the header first, and on two cores two restores
at once are each twice as slow anyway).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import libvirt

from .config import DomainConfig, restored_domain_xml
from .errors import HypervisorError, InvalidState, libvirt_errors
from .guest import UNDEFINE_FLAGS, DomainState, Guests
from .host import Host
from .spec import DomainSpec
from .storage import Storage, wait_for_flock
from .validation import require_domain_name

SAVE_MAGIC = b"LibvirtQemudSave"
# magic, then version, data_len, was_running, compressed, cookieOffset, unused[14]
SAVE_HEADER = struct.Struct("=16s5I56s")
STATE_SUFFIX = ".state"
HEADER_SUFFIX = ".state.header"
RESTORE_LOCK_SECONDS = 300.0


class StateFileInvalid(HypervisorError):
    """A template's state file is missing, cut short or not libvirt's."""


@dataclass(frozen=True)
class SavedHeader:
    """The parts of a state file before QEMU's migration stream."""

    version: int
    data_len: int
    was_running: int
    compressed: int
    xml: str
    cookie: bytes

    @classmethod
    def parse(cls, raw: bytes) -> SavedHeader:
        if len(raw) < SAVE_HEADER.size:
            raise StateFileInvalid("state file shorter than its header")
        magic, version, data_len, was_running, compressed, cookie_at, _ = SAVE_HEADER.unpack(
            raw[: SAVE_HEADER.size]
        )
        data = raw[SAVE_HEADER.size : SAVE_HEADER.size + data_len]
        if magic != SAVE_MAGIC or version != 2 or len(data) != data_len or not cookie_at:
            raise StateFileInvalid("not a complete libvirt save image (version 2)")
        xml = data[:cookie_at].split(b"\0", 1)[0].decode()
        cookie = data[cookie_at:].split(b"\0", 1)[0]
        return cls(version, data_len, was_running, compressed, xml, cookie)

    def with_xml(self, xml: str) -> bytes:
        """Header and data region carrying ``xml`` instead, the same length as before."""
        body = xml.encode() + b"\0"
        data = body + self.cookie + b"\0"
        if len(data) > self.data_len:
            raise StateFileInvalid("the new domain XML does not fit in the saved header")
        head = SAVE_HEADER.pack(
            SAVE_MAGIC,
            self.version,
            self.data_len,
            self.was_running,
            self.compressed,
            len(body),
            b"\0" * 56,
        )
        return head + data.ljust(self.data_len, b"\0")


class Templates:
    """Saved templates on ``host``: their state files live in the storage's
    ``templates_dir`` on the machine running this driver (the host itself)."""

    def __init__(self, host: Host, storage: Storage, guests: Guests) -> None:
        self._host = host
        self._storage = storage
        self._guests = guests

    def state_path(self, template_name: str) -> str:
        require_domain_name("template_name", template_name)
        return os.path.join(self._storage.templates_dir, template_name + STATE_SUFFIX)

    def _header_path(self, template_name: str) -> str:
        return os.path.join(self._storage.templates_dir, template_name + HEADER_SUFFIX)

    def save(self, template_name: str, uuid: str) -> int:
        """Save the running template domain's memory to its state file, then
        undefine the domain (its disk, now frozen, and seed stay). The bytes saved."""
        path = self.state_path(template_name)
        os.makedirs(self._storage.templates_dir, mode=0o755, exist_ok=True)
        domain = self._host.domain(uuid)
        with libvirt_errors():
            domain.save(path)
            domain.undefineFlags(UNDEFINE_FLAGS)
        with open(path, "rb") as state:
            raw = state.read(SAVE_HEADER.size)
            header_len = SAVE_HEADER.size + SAVE_HEADER.unpack(raw)[2]
            state.seek(0)
            pristine = state.read(header_len)
        SavedHeader.parse(pristine)
        with open(self._header_path(template_name), "wb") as copy:
            copy.write(pristine)
        return os.path.getsize(path)

    def state_size(self, template_name: str) -> int:
        try:
            return os.path.getsize(self.state_path(template_name))
        except OSError:
            return 0

    @contextlib.contextmanager
    def _restore_lock(self, template_name: str) -> Iterator[None]:
        path = self.state_path(template_name) + ".lock"
        with open(path, "a") as lock_file:
            wait_for_flock(lock_file, RESTORE_LOCK_SECONDS, f"another restore of {template_name}")
            yield

    def restore(self, template_name: str, spec: DomainSpec, installation_id: str | None) -> None:
        """Run the domain of ``spec`` (defined already, its disk an overlay over
        the template's) from the template's saved memory.

        Raises StateFileInvalid or HypervisorError when the state cannot be
        restored; the domain is then left defined and shut off.
        """
        config = DomainConfig(spec, installation_id)
        path = self.state_path(template_name)
        try:
            with open(self._header_path(template_name), "rb") as copy:
                pristine = SavedHeader.parse(copy.read())
            if os.path.getsize(path) <= pristine.data_len + SAVE_HEADER.size:
                raise StateFileInvalid(f"{path} holds no memory state")
        except OSError as error:
            raise StateFileInvalid(f"template {template_name}: {error}") from error
        header = pristine.with_xml(restored_domain_xml(pristine.xml, config))
        if self._guests.state(spec.uuid) is DomainState.RUNNING:
            raise InvalidState(f"domain {spec.name} is running already")
        with self._restore_lock(template_name):
            with open(path, "r+b") as state:
                state.write(header)
            try:
                with libvirt_errors():
                    self._host.connection.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
            finally:
                # Back to the template's own header, so the file on disk names no VM.
                with open(path, "r+b") as state:
                    state.write(pristine.with_xml(pristine.xml))

    def delete(self, template_name: str) -> None:
        """Remove the template's state, header copy, lock, disk and seed, where present."""
        path = self.state_path(template_name)
        for file_path in (path, self._header_path(template_name), path + ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file_path)
        self._storage.delete_template_volumes(template_name)
